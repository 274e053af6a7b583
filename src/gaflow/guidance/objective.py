"""The objective guidance climbs: a weighted sum of terms, ``J(chunk) = Σ_i w_i·term_i(chunk)``.

One backward pass gives the gradient of ``J`` and, on the side, each term's weighted share ``w_i·∇term_i`` (every
term reads its own alias of the chunk, so autograd hands back each share while it accumulates the sum). The
critic term is also the only source of the ensemble statistics (:class:`CriticValue`): the gate, the fallback and
best-of-N never see another term. With the default objective (the critic alone, weight 1) ``J`` *is* ``Q_agg`` —
no multiply, no alias — so guided chunks are bit-identical to those of the critic-only code it replaced.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from gaflow.guidance.critic_term import Aggregate, CriticTerm, CriticValue
from gaflow.guidance.terms import CRITIC, ObjectiveTerm


@dataclass
class WeightedTerm:
    name: str
    weight: float
    term: ObjectiveTerm


@dataclass
class ObjectiveValue:
    total: torch.Tensor  # (B,) Σ w_i·term_i, detached
    terms: dict[str, torch.Tensor]  # name → (B,) the term's own (unweighted) value, detached
    critic: CriticValue | None  # ensemble statistics of the critic term; None when the objective has none
    term_grads: dict[str, torch.Tensor] = field(default_factory=dict)  # name → (B, H, d) w_i·∇term_i at the chunk


def leaf(x: torch.Tensor) -> torch.Tensor:
    """A fresh leaf that requires grad, with ``x``'s values. An inference tensor (the caller ran the policy under
    ``inference_mode``) is cloned — autograd may not save it; a normal one is only detached (no copy)."""
    return (x.clone() if x.is_inference() else x.detach()).requires_grad_(True)


class Objective:
    """``J(chunk)`` for a fixed batch; ``chunk`` is ``(B, H, action_dim)``."""

    def __init__(self, terms: list[WeightedTerm]) -> None:
        if not terms:
            raise ValueError("an objective needs at least one term")
        self.terms = terms
        self.trust: torch.Tensor | None = None  # (B,) the trust gate of this batch, when configured
        self.critic: CriticTerm | None = next((t.term for t in terms if t.name == CRITIC), None)  # type: ignore

    def _forward(self, chunk: torch.Tensor) -> tuple[torch.Tensor, ObjectiveValue, list[torch.Tensor]]:
        """``J`` still attached to the graph, the detached values, and the input each term read."""
        single = len(self.terms) == 1
        inputs = [chunk] if single else [chunk.clone() for _ in self.terms]  # clone: one alias per term
        total, values, critic = None, {}, None
        for wt, x in zip(self.terms, inputs, strict=True):
            if wt.name == CRITIC:
                v, critic = wt.term.evaluate(x)  # type: ignore[attr-defined]
                values[wt.name] = critic.aggregate  # already detached: no second detach
            else:
                v = wt.term.value(x)
                values[wt.name] = v.detach()
            part = v if wt.weight == 1.0 else wt.weight * v  # weight 1 multiplies nothing: bit-identical
            total = part if total is None else total + part
        detached = values[self.terms[0].name] if single and total is v else total.detach()
        return total, ObjectiveValue(detached, values, critic), inputs

    def value(self, chunk: torch.Tensor) -> ObjectiveValue:
        with torch.no_grad():
            return self._forward(chunk)[1]

    def value_and_grad(self, chunk: torch.Tensor, wrt: torch.Tensor | None = None
                       ) -> tuple[ObjectiveValue, torch.Tensor]:
        """Values and ``∇J`` — one forward and one backward for all terms.

        ``wrt=None``: the gradient w.r.t. ``chunk`` ``(B, H, d)`` (detached here). Otherwise w.r.t. ``wrt``, a
        tensor ``chunk`` was computed from inside the graph (``x_t`` for the Jacobian and BPTT estimators).
        Each term's share ``w_i·∇term_i`` w.r.t. the chunk it read lands in ``value.term_grads``.
        """
        if wrt is None:
            chunk = leaf(chunk)
        total, val, inputs = self._forward(chunk)
        target = chunk if wrt is None else wrt
        sources = inputs if len(inputs) == 1 and inputs[0] is target else [target, *inputs]
        grads = torch.autograd.grad(total.sum(), sources)
        val.term_grads = {wt.name: g for wt, g in zip(self.terms, grads[-len(inputs):], strict=True)}
        return val, grads[0]

    def score(self, chunk: torch.Tensor) -> torch.Tensor:
        """The critic term's aggregate ``(B,)`` alone (best-of-N ranks by it); no other term runs."""
        if self.critic is None:
            raise ValueError("best-of-N and candidate scores rank by the critic term; the objective has none")
        with torch.no_grad():
            return self.critic.evaluate(chunk)[1].aggregate


class CriticObjective(Objective):
    """The default objective: the critic term alone, weight 1 (today's ``Q_agg``)."""

    def __init__(self, critic, features: dict[str, torch.Tensor], aggregate: Aggregate = "mean", kappa: float = 1.0):
        super().__init__([WeightedTerm(CRITIC, 1.0, CriticTerm(critic, features, aggregate, kappa))])

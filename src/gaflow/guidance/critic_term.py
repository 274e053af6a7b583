"""The critic term: ``Q_agg(chunk)``, the ensemble aggregate of a learned critic for fixed features.

Aggregates over the ``K`` members: ``mean``, ``min``, or ``lcb`` (mean − κ·std, pessimistic). One batched critic
call per evaluation; the gradient is taken of the aggregate summed over the batch (samples are independent, so
this is each sample's own gradient). Its ensemble statistics (:class:`CriticValue`) are the only ones the gate,
the fallback and best-of-N read. Registered as ``"critic"`` (``GuidanceConfig.aggregate`` / ``kappa`` set it up).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import torch

from gaflow.critic.models import evaluate_critic
from gaflow.guidance.terms import CRITIC, TermInputs, register_term

Aggregate = Literal["mean", "min", "lcb"]


@dataclass
class CriticValue:
    members: torch.Tensor  # (K, B), detached
    aggregate: torch.Tensor  # (B,), detached

    @cached_property
    def mean(self) -> torch.Tensor:
        return self.members.mean(0)

    @cached_property
    def std(self) -> torch.Tensor:
        k = self.members.shape[0]
        return self.members.std(0, unbiased=False) if k > 1 else torch.zeros_like(self.aggregate)


class CriticTerm:
    """``Q_agg(chunk)`` for fixed features; ``chunk`` is ``(B, H, action_dim)``."""

    def __init__(self, critic, features: dict[str, torch.Tensor], aggregate: Aggregate = "mean", kappa: float = 1.0):
        if aggregate not in ("mean", "min", "lcb"):
            raise ValueError(f"aggregate must be 'mean', 'min' or 'lcb', got {aggregate!r}")
        self.critic, self.features, self.aggregate, self.kappa = critic, features, aggregate, kappa
        # Critics that can (EnsembleMLPCritic) precompute the feature part of their first layer once per chunk:
        # the features do not change over the flow steps. No gradient flows into the critic from guidance.
        self._prepared = None
        if hasattr(critic, "prepare") and getattr(critic, "use_chunk", True):
            with torch.no_grad():
                self._prepared = critic.prepare(features)

    def _members(self, chunk: torch.Tensor) -> torch.Tensor:
        if self._prepared is not None:
            return self.critic.forward_prepared(self._prepared, chunk)
        return evaluate_critic(self.critic, self.features, chunk)

    def _aggregate(self, q: torch.Tensor) -> torch.Tensor:
        if self.aggregate == "mean" or q.shape[0] == 1:
            return q.mean(0)
        if self.aggregate == "min":
            return q.min(0).values
        return q.mean(0) - self.kappa * q.std(0, unbiased=False)

    def evaluate(self, chunk: torch.Tensor) -> tuple[torch.Tensor, CriticValue]:
        """Aggregate ``(B,)`` still attached to the graph, plus the detached ensemble statistics."""
        q = self._members(chunk)
        agg = self._aggregate(q)
        return agg, CriticValue(q.detach(), agg.detach())

    def value(self, chunk: torch.Tensor) -> torch.Tensor:
        return self.evaluate(chunk)[0]


def _build(inputs: TermInputs) -> CriticTerm:
    return CriticTerm(inputs.critic, inputs.features, inputs.config.aggregate, inputs.config.kappa)


register_term(CRITIC, _build, needs_critic=True)

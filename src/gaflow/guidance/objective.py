"""The critic objective that guidance climbs: ensemble aggregation and its gradient w.r.t. the chunk.

Aggregates over the ``K`` members: ``mean``, ``min``, or ``lcb`` (mean − κ·std, pessimistic). One batched critic
call per evaluation; the gradient is taken of the aggregate summed over the batch (samples are independent, so
this is each sample's own gradient).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import torch

from gaflow.critic.models import evaluate_critic

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


class CriticObjective:
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

    def value(self, chunk: torch.Tensor) -> CriticValue:
        q = self._members(chunk)
        return CriticValue(q.detach(), self._aggregate(q).detach())

    def value_with_graph(self, chunk: torch.Tensor) -> tuple[torch.Tensor, CriticValue]:
        """Aggregate ``(B,)`` still attached to the graph, plus detached values."""
        q = self._members(chunk)
        agg = self._aggregate(q)
        return agg, CriticValue(q.detach(), agg.detach())

    def value_and_grad(self, chunk: torch.Tensor) -> tuple[CriticValue, torch.Tensor]:
        """Values and ``∇_chunk Q_agg`` ``(B, H, d)`` — one forward and one backward."""
        chunk = chunk.detach().requires_grad_(True)
        agg, val = self.value_with_graph(chunk)
        (grad,) = torch.autograd.grad(agg.sum(), chunk)
        return val, grad

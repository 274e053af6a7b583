"""Critic regression targets from a :class:`~gaflow.critic.data.ChunkTable`.

* ``success_to_go`` (GAF's recipe, MSE): ``γ^(steps from the chunk's start to the first success)``, 0 if the
  episode never succeeds.
* ``binary`` (BCE): eventual success of the episode, 1/0.
* ``iql``: chunked IQL. Reward ``r`` = 1 for the chunk during whose executed steps the first success happened;
  ``Q(s, A) ← r + γ^H·(1 − done)·V(s')`` with ``V`` fitted by expectile regression to ``Q`` (see ``train.py``).
"""

from __future__ import annotations

import torch

from gaflow.critic.data import ChunkTable

TARGETS = ("success_to_go", "binary", "iql")


def success_to_go(table: ChunkTable, gamma: float = 0.99) -> torch.Tensor:
    steps = table.steps_to_success.to(torch.float64)
    value = torch.where(table.success.bool() & (steps >= 0), gamma ** steps.clamp_min(0), torch.zeros_like(steps))
    return value.float()


def binary_success(table: ChunkTable) -> torch.Tensor:
    return table.success.float()


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """Asymmetric squared loss ``|τ − 1(diff < 0)|·diff²`` (IQL), with ``diff = target − prediction``."""
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return weight * diff**2

"""Uncertainty gating for critic ensembles (GAF: K=3, k=20, g_min=0.1).

``gate = clamp(exp(−k·std), g_min, 1)`` where ``std`` is the ensemble's per-sample standard deviation of Q; when
``fallback_std`` is set, samples whose std exceeds it get gate 0 (the unguided velocity) and are counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gaflow.guidance.checks import number, optional_number


@dataclass
class Gate:
    k: float = 0.0  # 0 disables the exponential gate
    g_min: float = 0.1
    fallback_std: float | None = None

    def __post_init__(self) -> None:
        number("gate_k", self.k, low=0)
        number("gate_min", self.g_min, low=0, high=1)
        optional_number("fallback_std", self.fallback_std, low=0)

    @property
    def inactive(self) -> bool:
        """True when the gate is identically 1 (no exponential gate, no fallback threshold)."""
        return self.k == 0 and self.fallback_std is None

    def __call__(self, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``std`` ``(B,)`` → ``(gate (B,), fell_back (B,) bool)``."""
        gate, fell_back = self.apply(std)
        return gate, torch.zeros_like(std, dtype=torch.bool) if fell_back is None else fell_back

    def apply(self, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """As :meth:`__call__`, but ``fell_back`` is ``None`` without a fallback threshold (the guided step's
        path: no tensor is made for a mask that cannot be set)."""
        gate = torch.ones_like(std) if self.k == 0 else torch.exp(-self.k * std).clamp(self.g_min, 1.0)
        if self.fallback_std is None:
            return gate, None
        fell_back = std > self.fallback_std
        return torch.where(fell_back, 0.0, gate), fell_back

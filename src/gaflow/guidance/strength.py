"""How strongly to follow ``g``: scale, per-sample clip, relative target, time schedule, trust region.

``scale`` **multiplies** the gradient: applied ``Δ = scale · clip(g)`` (GAF's β is a *denominator*: β = 1/scale).
``relative`` (ρ) replaces the scale by a target ratio: ``‖Δ‖ = ρ·‖v‖`` per sample and step (norms over the real
action dims), which makes strength portable across critics whose gradients differ by orders of magnitude.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from gaflow.guidance.checks import number, optional_number

EPS = 1e-12


def per_sample_norm(x: torch.Tensor) -> torch.Tensor:
    """L2 norm over everything but the batch dim: ``(B, ...) -> (B,)``."""
    return torch.linalg.vector_norm(x.flatten(1), dim=1)


@dataclass
class Strength:
    scale: float = 1.0
    relative: float | None = None  # ρ; when set, scale is ignored
    clip: float | None = None  # max per-sample ‖g‖ before scaling

    def __post_init__(self) -> None:
        number("scale", self.scale)  # any sign: a negative scale descends Q (a deliberate control)
        optional_number("clip", self.clip, low=0, low_open=True)
        optional_number("relative", self.relative, low=0, low_open=True)  # ρ = 0 would be a silent "off"

    @property
    def needs_g_norm(self) -> bool:
        """Whether :meth:`__call__` reads ‖g‖ (a relative target or a clip); a plain scale does not."""
        return self.relative is not None or self.clip is not None

    def __call__(self, g: torch.Tensor, v: torch.Tensor, g_norm: torch.Tensor | None = None,
                 v_norm: torch.Tensor | None = None) -> torch.Tensor:
        """``g``, ``v``: ``(B, H, d)`` real dims (their per-sample norms may be passed in to save recomputing).
        Returns ``Δ`` (ascent direction, before the convention sign); with scale 1 and nothing else that is ``g``
        itself (``1·g`` is ``g`` bit for bit, so no multiply is spent on it)."""
        if self.relative is not None:
            g_norm = per_sample_norm(g) if g_norm is None else g_norm
            v_norm = per_sample_norm(v) if v_norm is None else v_norm
            factor = self.relative * v_norm / g_norm.clamp_min(EPS)
            return g * factor.view(-1, 1, 1)
        if self.clip is not None:
            g_norm = per_sample_norm(g) if g_norm is None else g_norm
            g = g * (self.clip / g_norm.clamp_min(EPS)).clamp(max=1.0).view(-1, 1, 1)
        return g if self.scale == 1.0 else self.scale * g


@dataclass
class Schedule:
    """Weight of guidance at step ``k`` of ``n`` (``k = 0`` is the first step, from pure noise).

    ``all``: 1 everywhere. ``window``: 1 where ``start <= k/n < end``, else 0 (``start=0.5`` guides only the later,
    less noisy half). ``ramp``: ``(k+1)/n``, rising to 1 at the last step.
    """

    kind: Literal["all", "window", "ramp"] = "all"
    start: float = 0.0
    end: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("all", "window", "ramp"):
            raise ValueError(f"schedule must be 'all', 'window' or 'ramp', got {self.kind!r}")
        number("schedule_start", self.start, low=0, high=1)
        number("schedule_end", self.end, low=0, high=1)
        if not self.start < self.end:
            raise ValueError(f"schedule_start must be < schedule_end, got [{self.start}, {self.end})")

    def weight(self, k: int, n: int) -> float:
        if self.kind == "all":
            return 1.0
        if self.kind == "window":
            return 1.0 if self.start <= k / n < self.end else 0.0
        return (k + 1) / n


def project_trust_region(x: torch.Tensor, x_ref: torch.Tensor, radius: float, action_dim: int) -> torch.Tensor:
    """Pull each sample's real dims back within ``radius`` (L2) of ``x_ref``; returns a new tensor."""
    d = action_dim
    diff = x[..., :d] - x_ref[..., :d]
    n = per_sample_norm(diff)
    factor = (radius / n.clamp_min(EPS)).clamp(max=1.0).view(-1, 1, 1)
    out = x.clone()
    out[..., :d] = x_ref[..., :d] + diff * factor
    return out

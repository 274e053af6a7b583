"""Controls that make a guidance claim believable (GAF).

* ``zero`` — the critic forward/backward, clip and gate all run; nothing is applied. Output identical to unguided;
  isolates latency and code-path effects.
* ``random`` — a random direction with the real guidance's per-sample norm, drawn from its **own** generator so the
  policy's noise stream is untouched.
"""

from __future__ import annotations

from typing import Literal

import torch

from gaflow.guidance.strength import EPS, per_sample_norm

ControlName = Literal["none", "zero", "random"]


class Control:
    def __init__(self, name: ControlName = "none", seed: int = 0) -> None:
        if name not in ("none", "zero", "random"):
            raise ValueError(f"control must be 'none', 'zero' or 'random', got {name!r}")
        self.name = name
        self.generator = torch.Generator().manual_seed(seed) if name == "random" else None

    def __call__(self, delta: torch.Tensor) -> torch.Tensor | None:
        """The Δ to apply instead of ``delta`` (``None`` means: apply nothing)."""
        if self.name == "none":
            return delta
        if self.name == "zero":
            return None
        u = torch.randn(delta.shape, generator=self.generator, dtype=delta.dtype).to(delta.device)
        scale = per_sample_norm(delta) / per_sample_norm(u).clamp_min(EPS)
        return u * scale.view(-1, 1, 1)

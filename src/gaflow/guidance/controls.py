"""Controls that make a guidance claim believable (GAF).

* ``zero`` — the critic forward/backward, clip and gate all run; nothing is applied. Output identical to unguided;
  isolates latency and code-path effects.
* ``random`` — a random direction with the real guidance's per-sample norm, drawn from its **own** generator so the
  policy's noise stream is untouched. :meth:`Control.start_episode` reseeds that generator from
  ``(control seed, episode seed)``, so episodes get independent draws that are reproducible one by one (without
  it, a ``Guidance`` built per episode replays the same perturbation sequence in every episode).
"""

from __future__ import annotations

import hashlib
from typing import Literal

import torch

from gaflow.guidance.checks import integer
from gaflow.guidance.strength import EPS, per_sample_norm

ControlName = Literal["none", "zero", "random"]


class Control:
    def __init__(self, name: ControlName = "none", seed: int = 0) -> None:
        if name not in ("none", "zero", "random"):
            raise ValueError(f"control must be 'none', 'zero' or 'random', got {name!r}")
        self.name, self.seed = name, seed
        self.generator = torch.Generator().manual_seed(seed) if name == "random" else None

    def start_episode(self, episode_seed: int) -> None:
        """Reseed the random control's generator for one episode (a no-op for the other controls)."""
        integer("episode_seed", episode_seed)
        if self.generator is not None:
            self.generator.manual_seed(episode_control_seed(self.seed, episode_seed))

    def __call__(self, delta: torch.Tensor) -> torch.Tensor | None:
        """The Δ to apply instead of ``delta`` (``None`` means: apply nothing)."""
        if self.name == "none":
            return delta
        if self.name == "zero":
            return None
        u = torch.randn(delta.shape, generator=self.generator, dtype=delta.dtype).to(delta.device)
        scale = per_sample_norm(delta) / per_sample_norm(u).clamp_min(EPS)
        return u * scale.view(-1, 1, 1)


def episode_control_seed(control_seed: int, episode_seed: int) -> int:
    """Stable 63-bit seed of the random control in one episode (SHA-256, not Python's salted hash)."""
    digest = hashlib.sha256(f"gaflow/control-noise/{int(control_seed)}/{int(episode_seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1

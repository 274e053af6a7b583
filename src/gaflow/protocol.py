"""The bottom layer: the one protocol every base policy implements, and the two flow time conventions.

Torch only; every other gaflow module may import this one, and this one imports no other gaflow module.

A base policy is *frozen*: gaflow never changes its weights. It answers four things:

* ``spec`` — chunk length ``H``, real ``action_dim``, ``padded_dim`` (LeRobot pads to 32; only the first
  ``action_dim`` entries are real and only those are guided or shown to a critic), the time convention and its
  default number of flow steps;
* ``encode(obs)`` — called **once per chunk**; returns a context (a VLA's prefix / KV cache lives here);
* ``velocity(context, x_t, t)`` — cheap, called at every flow step; ``x_t`` is ``(B, H, padded_dim)``, ``t`` is
  ``(B,)``;
* ``critic_features(context)`` — a dict of ``(B, F)`` tensors a critic may use (``"observation"``, ``"task"``,
  ``"state"``, ... — each policy documents its keys);
* ``decode_actions(chunk)`` — maps a sampled chunk ``(B, H, padded_dim)`` in the policy's (normalised, padded)
  space to environment actions ``(B, H, action_dim)`` (unnormalise, drop padding). Guidance and critics work in the
  policy's space; only execution uses this.

Optional: ``normalize_actions(actions)`` — the inverse of ``decode_actions``: recorded environment actions
``(B, H, action_dim)`` → the chunk ``(B, H, action_dim)`` in the policy's normalised space that the policy was trained
to produce (real dims, no padding). ``gaflow import-rollouts`` needs it to turn recorded episodes into critic data;
sampling never calls it. A policy whose action transform depends on the observation (LeRobot's relative actions)
uses the last batch it encoded, so call it right after ``encode`` of the matching observations.

``expand_context(context, n)`` repeats a context for ``n`` candidate chunks per observation
(``repeat_interleave`` order: candidate ``j`` of observation ``i`` is row ``i * n + j``). A context that is a
tensor or a (nested) dict/list/tuple of tensors is expanded generically; a policy whose context is something else
implements ``expand_context(context, n)`` itself.

Time conventions (both are supported and the sign of guidance is decided in one place, :mod:`gaflow.convention`):

* ``LEROBOT`` (SmolVLA, π0, π0.5): ``x_t = t·ε + (1−t)·A``, integrate ``t: 1 → 0``.
* ``FORWARD`` (QGF and most papers): ``x_t = (1−t)·ε + t·A``, integrate ``t: 0 → 1``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch


class TimeConvention(enum.StrEnum):
    LEROBOT = "lerobot"
    FORWARD = "forward"


@dataclass(frozen=True)
class PolicySpec:
    chunk_len: int  # H
    action_dim: int  # real action dimensions (the critic sees only these)
    padded_dim: int  # dimension of the sampler state; >= action_dim
    convention: TimeConvention
    num_steps: int = 10  # the policy's own default number of flow steps

    def __post_init__(self) -> None:
        if self.chunk_len < 1 or self.action_dim < 1:
            raise ValueError(f"PolicySpec needs chunk_len >= 1 and action_dim >= 1, got {self}")
        if self.padded_dim < self.action_dim:
            raise ValueError(
                f"PolicySpec.padded_dim ({self.padded_dim}) must be >= action_dim ({self.action_dim})"
            )
        object.__setattr__(self, "convention", TimeConvention(self.convention))


@runtime_checkable
class FlowPolicy(Protocol):
    spec: PolicySpec

    def encode(self, obs: Any) -> Any:
        """Encode an observation batch once per chunk into a context."""

    def velocity(self, context: Any, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Velocity ``(B, H, padded_dim)`` at noisy chunk ``x_t`` and time ``t`` ``(B,)``."""

    def critic_features(self, context: Any) -> dict[str, torch.Tensor]:
        """Frozen features a critic may use, each ``(B, F)``."""

    def decode_actions(self, chunk: torch.Tensor) -> torch.Tensor:
        """Environment actions ``(B, H, action_dim)`` from a sampled chunk ``(B, H, padded_dim)``."""


def expand_context(context: Any, n: int, policy: Any = None) -> Any:
    """Repeat ``context`` for ``n`` candidates per observation (row ``i*n + j``)."""
    if n == 1:
        return context
    if policy is not None and hasattr(policy, "expand_context"):
        return policy.expand_context(context, n)
    if isinstance(context, torch.Tensor):
        return context.repeat_interleave(n, dim=0)
    if isinstance(context, dict):
        return {k: expand_context(v, n) for k, v in context.items()}
    if isinstance(context, (list, tuple)):
        return type(context)(expand_context(v, n) for v in context)
    if context is None or isinstance(context, (int, float, str, bool)):
        return context
    raise TypeError(
        f"cannot expand a context of type {type(context).__name__}; give the policy an "
        "expand_context(context, n) method"
    )

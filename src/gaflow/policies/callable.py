"""Adapters that turn plain callables into :class:`~gaflow.protocol.FlowPolicy` objects."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from gaflow.protocol import PolicySpec, TimeConvention, expand_context


class CallablePolicy:
    """A policy from a velocity callable ``fn(x_t, t, context) -> v``.

    ``encode`` is the identity unless ``encode_fn`` is given; ``features_fn(context)`` supplies critic features
    (default: ``context["features"]`` when the context is a dict holding them, else an empty dict).

    >>> import torch
    >>> p = CallablePolicy(lambda x, t, ctx: -x, PolicySpec(4, 2, 2, "forward"))
    >>> p.velocity(None, torch.ones(1, 4, 2), torch.zeros(1)).shape
    torch.Size([1, 4, 2])
    """

    def __init__(
        self,
        fn: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor],
        spec: PolicySpec,
        encode_fn: Callable[[Any], Any] | None = None,
        features_fn: Callable[[Any], dict[str, torch.Tensor]] | None = None,
    ) -> None:
        self.fn, self.spec, self.encode_fn, self.features_fn = fn, spec, encode_fn, features_fn

    def encode(self, obs: Any) -> Any:
        return self.encode_fn(obs) if self.encode_fn is not None else obs

    def velocity(self, context: Any, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.fn(x_t, t, context)

    def decode_actions(self, chunk: torch.Tensor) -> torch.Tensor:
        return chunk[..., : self.spec.action_dim]

    def critic_features(self, context: Any) -> dict[str, torch.Tensor]:
        if self.features_fn is not None:
            return self.features_fn(context)
        if isinstance(context, dict) and isinstance(context.get("features"), dict):
            return context["features"]
        return {}


class ConventionFlip:
    """The same flow expressed in the other time convention.

    With ``s = 1 − t``, a LeRobot path ``x = t·ε + (1−t)·A`` is the forward path at time ``s``, and
    ``dx/dt = −dx/ds``: so ``v_flipped(x, t) = −v(x, 1 − t)``. Sampling both from the same noise gives the same
    chunks (up to float rounding of the time grid).
    """

    def __init__(self, policy: Any) -> None:
        self.policy = policy
        s = policy.spec
        other = TimeConvention.FORWARD if s.convention is TimeConvention.LEROBOT else TimeConvention.LEROBOT
        self.spec = PolicySpec(s.chunk_len, s.action_dim, s.padded_dim, other, s.num_steps)

    def encode(self, obs: Any) -> Any:
        return self.policy.encode(obs)

    def velocity(self, context: Any, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return -self.policy.velocity(context, x_t, 1.0 - t)

    def critic_features(self, context: Any) -> dict[str, torch.Tensor]:
        return self.policy.critic_features(context)

    def decode_actions(self, chunk: torch.Tensor) -> torch.Tensor:
        return self.policy.decode_actions(chunk)

    def expand_context(self, context: Any, n: int) -> Any:
        return expand_context(context, n, self.policy)

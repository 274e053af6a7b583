"""The per-request objective context: what the runtime tells objective terms beyond the chunk, and how a term reads
it — the policy's action decode (to work in env units) and the env's action-to-path map.

Keys of ``objective_context`` (``sample_chunks(..., objective_context=...)``; ``(B, …)`` tensors, one row per
observation, expanded to the candidates by the sampler). :class:`gaflow.runtime.GuidedRuntime` and
:func:`gaflow.runtime.run_episode` fill them when the guidance has a term other than the critic:

* ``"executed_actions"`` ``(B, k, d)`` — the last ``k ≤`` :data:`HISTORY` actions executed before this chunk, oldest
  first, in the policy's normalised space (the rows of earlier chunks that were actually executed; ``k = 0`` at
  the start of an episode);
* ``"action_scale"``, ``"action_offset"`` ``(B, d)`` — the policy's decode as a per-dimension affine map,
  ``env_action = chunk · scale + offset`` (:func:`affine_decode` measures it from ``decode_actions``; a policy
  whose decode is not affine per dimension gets none, and terms that need env units say so);
* ``"ee_position"`` ``(B, P)`` — the current end-effector position in env units;
* ``"action_path"`` — the env's :class:`~gaflow.envs.base.ActionPath` (not a tensor: shared by all rows).

>>> import torch
>>> scale, offset = affine_decode(lambda c: 2 * c[..., :1] + 1, action_dim=1, padded_dim=2)
>>> scale.tolist(), offset.tolist()
([2.0], [1.0])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

EXECUTED_ACTIONS = "executed_actions"
ACTION_SCALE = "action_scale"
ACTION_OFFSET = "action_offset"
EE_POSITION = "ee_position"
ACTION_PATH = "action_path"
HISTORY = 3  # executed actions kept: a third difference (jerk) across the chunk boundary needs three


def affine_decode(decode: Callable[[torch.Tensor], torch.Tensor], action_dim: int, padded_dim: int,
                  atol: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(scale, offset)`` ``(action_dim,)`` with ``decode(chunk) = chunk[..., :d]·scale + offset``, measured at
    ``0``, ``+0.5`` and ``−0.25`` per dimension (inside any clamp to ``[−1, 1]``; two unequal steps, so an odd
    non-linearity such as ``tanh`` is caught); ``None`` when ``decode`` is not such a map there (dimensions mixed,
    or not affine). One call of ``decode`` on ``2d + 1`` one-step chunks."""
    d = action_dim
    probes = torch.zeros(2 * d + 1, 1, padded_dim)
    for i in range(d):
        probes[1 + i, 0, i], probes[1 + d + i, 0, i] = 0.5, -0.25
    with torch.no_grad():
        out = decode(probes).detach().to("cpu", torch.float32).reshape(2 * d + 1, -1)
    if out.shape[1] != d or not torch.isfinite(out).all():
        return None
    offset = out[0]
    plus, minus = out[1: d + 1] - offset, out[d + 1:] - offset  # (d, d): row i = response to probing dim i
    scale = plus.diagonal() / 0.5
    if not (torch.allclose(plus, torch.diag(0.5 * scale), atol=atol)
            and torch.allclose(minus, torch.diag(-0.25 * scale), atol=atol)) or (scale == 0).any():
        return None
    return scale, offset.clone()


def require(context: dict[str, Any] | None, key: str, term: str, why: str) -> Any:
    """``context[key]``, or a ``ValueError`` naming the term, the key and what provides it."""
    if context is None or context.get(key) is None:
        raise ValueError(f"objective term {term!r} needs {key!r} in the objective context ({why}); "
                         "gaflow.runtime.run_episode provides it in an env that states an action_path, for a "
                         "policy whose decode is affine per dimension — or pass it to "
                         "sample_chunks(objective_context=...)")
    return context[key]


def check_env_units(context: dict[str, Any] | None, term: str) -> None:
    """Fail now (naming ``term``) unless the context holds the policy's affine decode."""
    why = "its parameters are in env units"
    require(context, ACTION_SCALE, term, why)
    require(context, ACTION_OFFSET, term, why)


def env_actions(chunk: torch.Tensor, context: dict[str, Any] | None, term: str) -> torch.Tensor:
    """The chunk ``(B, H, d)`` in env units, through the policy's affine decode in the context."""
    why = "its parameters are in env units"
    scale = require(context, ACTION_SCALE, term, why)
    offset = require(context, ACTION_OFFSET, term, why)
    return chunk * scale.unsqueeze(1).to(chunk) + offset.unsqueeze(1).to(chunk)


def action_path(context: dict[str, Any] | None, term: str):
    """The env's :class:`~gaflow.envs.base.ActionPath` from the context (the term needs the env's map)."""
    return require(context, ACTION_PATH, term, "the env's action-to-path map: this env states none, or the "
                   "runtime was not given it")


def predicted_path(chunk: torch.Tensor, context: dict[str, Any] | None, term: str) -> torch.Tensor:
    """Predicted end-effector positions ``(B, H, P)`` in env units after each action of ``chunk`` ``(B, H, d)``."""
    path = action_path(context, term)
    start = require(context, EE_POSITION, term, "the current end-effector position")
    return path.predict(start.to(chunk), env_actions(chunk, context, term))


def episode_context(obs: dict[str, Any], path, executed: list[torch.Tensor]) -> dict[str, Any]:
    """The context of one observation in an episode (batch of 1): the executed actions ``executed`` (rows ``(d,)``
    in the policy's space, oldest first; the last :data:`HISTORY` are kept) and, when the env states an
    ``ActionPath`` ``path``, the end-effector position read from ``obs`` and the path itself."""
    ctx: dict[str, Any] = {EXECUTED_ACTIONS: torch.stack(executed[-HISTORY:]).unsqueeze(0) if executed else None}
    if path is not None:
        ctx[EE_POSITION] = torch.from_numpy(path.position(obs)).unsqueeze(0)  # (1, P) float64
        ctx[ACTION_PATH] = path
    return ctx

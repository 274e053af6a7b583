"""Motion objective terms: ``smoothness`` (jerk or acceleration, across the boundary with what was executed),
``effort`` (action magnitude) and ``speed`` (progress per step). Each is a value to raise (``-cost`` for the
penalties); the context keys they read are :mod:`gaflow.guidance.context`'s.

* ``smoothness`` — ``−mean_i ‖Δᵐ s_i‖²`` over the sequence ``s`` = the executed actions of the context
  (``"executed_actions"``, up to :data:`~gaflow.guidance.context.HISTORY`) followed by the chunk, keeping the
  ``m``-th differences whose stencil touches the chunk (so the jump from the last executed action into the new
  chunk is penalised — the receding-horizon seam, where most of a chunked policy's jerk is). ``order`` ``m``: 3 =
  jerk, 2 = acceleration, 1 = velocity of the action sequence. In the policy's normalised space (a difference
  does not depend on the normaliser's offset; each dimension is weighted by 1/scale² of its normaliser), so it
  needs no decode. ``dims``: action dims to smooth (default all real dims).
* ``effort`` — ``−mean_k Σ_dims a_k²`` of the chunk **in env units** (zero = no motion for delta actions), through
  the policy's decode; ``dims="position"`` (default) = the env's path dims (its ``ActionPath``), ``"all"``, or a
  list of action dims.
* ``speed`` — net progress per step of the predicted end-effector path, ``‖Σ_k step_k‖ / H`` in env units per
  step (the env's ``ActionPath`` steps of the decoded chunk): it lengthens the motion the chunk already makes,
  not its jitter.

>>> import torch
>>> from gaflow.guidance.terms import TermInputs
>>> term = smoothness(TermInputs(None, {}, {"executed_actions": torch.zeros(1, 2, 1)}, None), order=2)
>>> term.value(torch.tensor([[[1.0], [2.0]]]))  # sequence 0 0 1 2 → accelerations 1, 0
tensor([-0.5000])
"""

from __future__ import annotations

from typing import Any

import torch

from gaflow.guidance.context import EXECUTED_ACTIONS, action_path, check_env_units, env_actions
from gaflow.guidance.terms import TermInputs, register_term

SMOOTHNESS_ORDERS = (1, 2, 3)


def _check_dims(dims: Any, where: str, words: tuple[str, ...] = ()) -> None:
    if dims is None or (isinstance(dims, str) and dims in words):
        return
    ok = isinstance(dims, (list, tuple)) and dims and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                                          for i in dims)
    if not ok or len(set(dims)) != len(dims):
        allowed = " or ".join([*(repr(w) for w in words), "a non-empty list of distinct action dims (ints ≥ 0)"])
        raise ValueError(f"{where}: dims must be {allowed}, got {dims!r}")


def _select(x: torch.Tensor, dims: list[int] | None, term: str) -> torch.Tensor:
    if dims is None:
        return x
    if max(dims) >= x.shape[-1]:
        raise ValueError(f"objective term {term!r}: dims {dims} outside the {x.shape[-1]}-d action")
    return x[..., list(dims)]


def check_smoothness(order: int = 3, dims: list[int] | None = None, boundary: bool = True) -> None:
    if order not in SMOOTHNESS_ORDERS or isinstance(order, bool):
        raise ValueError(f"order must be one of {SMOOTHNESS_ORDERS} (velocity, acceleration, jerk), got {order!r}")
    _check_dims(dims, "smoothness")
    if not isinstance(boundary, bool):
        raise ValueError(f"boundary must be true or false, got {boundary!r}")


class Smoothness:
    """``−mean ‖Δᵐ [executed; chunk]‖²`` over the differences that touch the chunk; see the module docstring."""

    def __init__(self, order: int, dims: list[int] | None, executed: torch.Tensor | None) -> None:
        self.order, self.dims = order, dims
        self.executed = executed  # (B, k, d) or None

    def value(self, chunk: torch.Tensor) -> torch.Tensor:
        x = _select(chunk, self.dims, "smoothness")
        k = 0
        if self.executed is not None and self.executed.shape[1] > 0:
            past = _select(self.executed, self.dims, "smoothness").to(x)
            k = past.shape[1]
            x = torch.cat([past, x], dim=1)
        if x.shape[1] <= self.order:
            return chunk.sum((1, 2)) * 0.0  # no difference of this order fits: nothing to penalise
        diffs = torch.diff(x, n=self.order, dim=1)  # (B, k + H − m, d'); diff i spans x[i .. i + m]
        diffs = diffs[:, max(0, k - self.order):]  # keep those whose stencil reaches the chunk
        return -diffs.pow(2).sum(2).mean(1)


def smoothness(inputs: TermInputs, order: int = 3, dims: list[int] | None = None, boundary: bool = True
               ) -> Smoothness:
    executed = (inputs.context or {}).get(EXECUTED_ACTIONS) if boundary else None
    return Smoothness(order, None if dims is None else list(dims), executed)


def check_effort(dims: Any = "position") -> None:
    _check_dims(dims, "effort", ("position", "all"))


class Effort:
    """``−mean_k Σ_dims a_k²`` in env units."""

    def __init__(self, context: dict[str, Any] | None, dims: Any) -> None:
        self.context = context
        if dims == "position":
            dims = list(action_path(context, "effort").action_dims)
        self.dims = None if dims == "all" else list(dims)
        check_env_units(context, "effort")  # fail now, naming what is missing

    def value(self, chunk: torch.Tensor) -> torch.Tensor:
        a = _select(env_actions(chunk, self.context, "effort"), self.dims, "effort")
        return -a.pow(2).sum(2).mean(1)


def effort(inputs: TermInputs, dims: Any = "position") -> Effort:
    return Effort(inputs.context, dims)


class Speed:
    """``‖Σ_k step_k‖ / H`` of the predicted path, env units per step."""

    def __init__(self, context: dict[str, Any] | None) -> None:
        self.context = context
        self.path = action_path(context, "speed")
        check_env_units(context, "speed")

    def value(self, chunk: torch.Tensor) -> torch.Tensor:
        steps = self.path.steps(env_actions(chunk, self.context, "speed"))  # (B, H, P)
        net = steps.sum(1)
        # clamp: the norm's gradient is undefined at a chunk that goes nowhere; 1e-24 changes no value that matters
        return net.pow(2).sum(1).clamp_min(1e-24).sqrt() / chunk.shape[1]


def speed(inputs: TermInputs) -> Speed:
    return Speed(inputs.context)


register_term("smoothness", smoothness, check=check_smoothness)
register_term("effort", effort, check=check_effort)
register_term("speed", speed)

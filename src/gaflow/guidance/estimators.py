"""Where the guidance gradient ``g`` comes from (see shared notes, "Gradient estimators").

Each estimator is called once per flow step with a :class:`FlowStep` and returns the policy velocity at ``x_t``
(so estimators that need the velocity inside a graph compute it themselves — no step pays for two velocity calls),
the gradient ``g`` ``(B, H, action_dim)`` pointing up the objective (the weighted sum of its terms, the critic
alone by default), and the objective's values.

* ``noisy_point`` — ``∇_x Q(x_t)``; biased (the critic never saw noisy chunks); a control.
* ``clean_estimate`` — ``∇_Â Q(Â)`` at the one-step clean estimate with ``J = I`` (GAF, QGF): ``Â`` is built from
  detached ``x_t`` and ``v``; cost on top of unguided: exactly one critic forward+backward.
* ``clean_jacobian`` — ``(∂Â/∂x_t)ᵀ ∇_Â Q``: the velocity is evaluated inside the graph and one vector-Jacobian
  product goes through it.
* ``bptt`` — ``∇_{x_t} Q(ODE_{t→end}(x_t))`` through the remaining (unguided) Euler steps; a reference, costly.

Post-hoc ascent on the final chunk (PA-RL style) is :func:`posthoc_ascent`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from gaflow.convention import clean_estimate, step_size
from gaflow.guidance.objective import Objective, ObjectiveValue, leaf
from gaflow.protocol import TimeConvention

EstimatorName = Literal["noisy_point", "clean_estimate", "clean_jacobian", "bptt"]
ESTIMATORS: tuple[str, ...] = ("noisy_point", "clean_estimate", "clean_jacobian", "bptt")


@dataclass
class FlowStep:
    """One flow step as the estimators see it. ``x``, ``t`` and ``velocity`` may be inference tensors (a caller
    under ``inference_mode``): estimators only read them, and build their own leaf (:func:`leaf`, real dims only)
    where they differentiate — no copy of the padded state per step."""

    x: torch.Tensor  # (B, H, Dp) current sampler state, detached
    t: torch.Tensor  # (B,) current time
    step: int  # index in the time grid
    grid: torch.Tensor  # (num_steps + 1,) the whole time grid
    velocity_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, t) -> v
    convention: TimeConvention
    action_dim: int
    velocity: torch.Tensor | None = None  # precomputed detached velocity, if the caller has it


def real_dims(x: torch.Tensor, d: int) -> torch.Tensor:
    """``x[..., :d]`` — or ``x`` itself when it has no padded dims (no view made per step)."""
    return x if x.shape[-1] == d else x[..., :d]


def _saveable(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a tensor autograd may save (it multiplies graph tensors in the Jacobian and BPTT estimators)."""
    return t.clone() if t.is_inference() else t


def _velocity(step: FlowStep) -> torch.Tensor:
    if step.velocity is not None:
        return step.velocity
    with torch.no_grad():
        return step.velocity_fn(step.x, step.t)


def estimate(
    name: EstimatorName, step: FlowStep, objective: Objective
) -> tuple[torch.Tensor, torch.Tensor, ObjectiveValue]:
    """Return ``(velocity, g, objective value)`` for the estimator called ``name``."""
    d = step.action_dim
    if name == "noisy_point":
        v = _velocity(step)
        val, g = objective.value_and_grad(real_dims(step.x, d))
        return v, g, val
    if name == "clean_estimate":
        v = _velocity(step)
        a_hat = clean_estimate(real_dims(step.x, d), real_dims(v, d), step.t, step.convention)
        val, g = objective.value_and_grad(a_hat)
        return v, g, val
    if name == "clean_jacobian":
        x, t = leaf(step.x), _saveable(step.t)
        v = step.velocity_fn(x, t)
        a_hat = clean_estimate(x, v, t, step.convention)[..., :d]
        val, gx = objective.value_and_grad(a_hat, wrt=x)
        return v.detach(), gx[..., :d], val
    if name == "bptt":
        x0 = leaf(step.x)
        x, v_first = x0, None
        for k in range(step.step, len(step.grid) - 1):
            t = step.grid[k].to(x0).expand(x0.shape[0])
            dt = step_size(step.convention, len(step.grid) - 1)
            v = step.velocity_fn(x, t)
            v_first = v if v_first is None else v_first
            x = x + dt * v
        val, gx = objective.value_and_grad(x[..., :d], wrt=x0)
        return v_first.detach(), gx[..., :d], val
    raise ValueError(f"unknown estimator {name!r}; choose one of {', '.join(ESTIMATORS)}")


def posthoc_ascent(chunk: torch.Tensor, objective: Objective, steps: int, lr: float, action_dim: int):
    """``steps`` plain gradient-ascent steps ``A ← A + lr·∇J(A)`` on the real dims of a final chunk.

    Samples whose value or gradient is non-finite are left where they are. Returns the new chunk and the number
    of (sample, step) pairs skipped for non-finite values.
    """
    chunk = chunk.clone()
    skipped = 0
    for _ in range(steps):
        val, g = objective.value_and_grad(chunk[..., :action_dim])
        ok = torch.isfinite(val.total) & torch.isfinite(g).flatten(1).all(1)
        skipped += int((~ok).sum())
        g = torch.where(ok.view(-1, 1, 1), g, torch.zeros_like(g))
        chunk[..., :action_dim] += lr * g
    return chunk, skipped

"""Time-convention arithmetic, in one place: time grids, clean estimates and the sign of guidance.

LeRobot: ``x_t = t·ε + (1−t)·A`` (t: 1→0, dt < 0), clean estimate ``Â = x_t − t·v``.
Forward: ``x_t = (1−t)·ε + t·A`` (t: 0→1, dt > 0), clean estimate ``Â = x_t + (1−t)·v``.

Guidance adds ``ascent_sign(convention) · Δ`` to the velocity, where ``Δ`` points up the critic's gradient: the
Euler step is ``x ← x + dt·v``, so to move ``x`` along ``+Δ`` the velocity must change by ``sign(dt)·Δ``.
"""

from __future__ import annotations

import torch

from gaflow.protocol import TimeConvention


def time_grid(convention: TimeConvention, num_steps: int) -> torch.Tensor:
    """The ``num_steps + 1`` times visited by the sampler, noise first, data last."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    grid = torch.linspace(0.0, 1.0, num_steps + 1, dtype=torch.float64)
    if TimeConvention(convention) is TimeConvention.LEROBOT:
        # LeRobot (flow_matching.euler_integrate) computes t_k = 1.0 + k·dt with dt = -1/num_steps in Python
        # floats (float64) and only then casts to float32; doing the arithmetic in float32 differs in the last bit
        # for some k (e.g. num_steps=10, k=6, 8, 9), which changes the time embedding slightly.
        dt = -1.0 / num_steps
        times = [1.0 + k * dt for k in range(num_steps)] + [0.0]
        return torch.tensor(times, dtype=torch.float32)
    return grid.to(torch.float32)


def step_size(convention: TimeConvention, num_steps: int) -> float:
    """The Euler step ``dt`` as a Python float (LeRobot: ``−1/num_steps``), exactly as LeRobot's loop uses it."""
    return (-1.0 if TimeConvention(convention) is TimeConvention.LEROBOT else 1.0) / num_steps


def ascent_sign(convention: TimeConvention) -> float:
    """+1 if adding to the velocity moves samples along that direction (forward), −1 otherwise (LeRobot)."""
    return -1.0 if TimeConvention(convention) is TimeConvention.LEROBOT else 1.0


def clean_estimate(x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor, convention: TimeConvention):
    """One-step estimate of the clean chunk from ``x_t`` and its velocity; ``t`` broadcasts as ``(B,)``."""
    tb = t.reshape(-1, *([1] * (x_t.dim() - 1))).to(x_t.dtype)
    if TimeConvention(convention) is TimeConvention.LEROBOT:
        return x_t - tb * v
    return x_t + (1.0 - tb) * v


def interpolate(noise: torch.Tensor, chunk: torch.Tensor, t: torch.Tensor, convention: TimeConvention):
    """The training path ``x_t`` between noise and a clean chunk (used by training code and tests)."""
    tb = t.reshape(-1, *([1] * (chunk.dim() - 1))).to(chunk.dtype)
    if TimeConvention(convention) is TimeConvention.LEROBOT:
        return tb * noise + (1.0 - tb) * chunk
    return (1.0 - tb) * noise + tb * chunk


def target_velocity(noise: torch.Tensor, chunk: torch.Tensor, convention: TimeConvention) -> torch.Tensor:
    """The flow-matching regression target ``d x_t / d t`` along :func:`interpolate`."""
    if TimeConvention(convention) is TimeConvention.LEROBOT:
        return noise - chunk
    return chunk - noise

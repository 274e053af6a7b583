"""Space objective terms, in env units: ``keep_out`` (boxes or spheres the end effector must not enter) and
``bounds`` (per-dimension action limits); both can also be hard constraints (``"project": true``, see
:mod:`gaflow.guidance.constraints`).

* ``keep_out`` — ``−Σ_k Σ_zones relu(margin − sd_zone(p_k))²`` over the predicted end-effector path
  ``p_1..p_H`` of the chunk (the env's :class:`~gaflow.envs.base.ActionPath` applied to the decoded chunk, from
  the current position in the context). ``sd`` is the zone's signed distance (negative inside), so the term is
  zero while the path keeps ``margin`` away from every zone and its gradient pushes a penetrating point out the
  shortest way. Zones, in the path's coordinates and units (metres for MetaWorld/LIBERO)::

      {"type": "box", "low": [x0, y0, z0], "high": [x1, y1, z1]}
      {"type": "sphere", "center": [x, y, z], "radius": r}

* ``bounds`` — ``−Σ_k Σ_i (relu(a_ki − high_i)² + relu(low_i − a_ki)²)`` of the decoded chunk; ``low`` / ``high``
  list one limit per real action dim (``null`` = unbounded).

The weights of both are in 1/units² (a 1 cm penetration costs 1e-4 m²), so they are large next to the critic's.

>>> box = Box((0.0, 0.0), (1.0, 1.0))
>>> box.signed_distance(torch.tensor([[0.5, 0.25], [2.0, 0.5]])).tolist()
[-0.25, 1.0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gaflow.guidance.context import (
    EE_POSITION,
    action_path,
    check_env_units,
    env_actions,
    predicted_path,
    require,
)
from gaflow.guidance.terms import TermInputs, register_term

_TINY = 1e-24  # under the square root of a norm: keeps its gradient finite at 0 and changes no distance that matters


def _vector(v: Any, what: str, length: int | None = None) -> tuple[float, ...]:
    if not isinstance(v, (list, tuple)) or not v or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v):
        raise ValueError(f"{what} must be a non-empty list of finite numbers, got {v!r}")
    if length is not None and len(v) != length:
        raise ValueError(f"{what} must have {length} entries, got {len(v)}")
    return tuple(float(x) for x in v)


@dataclass(frozen=True)
class Box:
    """Axis-aligned box ``low ≤ p ≤ high``; its interior is forbidden (the boundary is allowed)."""

    low: tuple[float, ...]
    high: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.low) != len(self.high) or any(lo >= hi for lo, hi in zip(self.low, self.high, strict=True)):
            raise ValueError(f"a box needs low < high in every coordinate, got low={self.low}, high={self.high}")

    @property
    def dim(self) -> int:
        return len(self.low)

    def signed_distance(self, p: torch.Tensor) -> torch.Tensor:
        """``(..., P)`` → ``(...)``: distance to the box, negative inside (minus the depth to the nearest face)."""
        low, high = (torch.tensor(v, dtype=p.dtype, device=p.device) for v in (self.low, self.high))
        q = (p - (low + high) / 2).abs() - (high - low) / 2
        outside = q.clamp_min(0).pow(2).sum(-1).clamp_min(_TINY).sqrt()
        deepest = q.amax(-1)
        return torch.where(deepest > 0, outside, deepest)

    # -- hard constraint (float64 numpy; `m` inflates the box by the margin) ---------------------------------
    def inside(self, p: np.ndarray, m: float) -> bool:
        return bool(np.all(p > np.asarray(self.low) - m) and np.all(p < np.asarray(self.high) + m))

    def strictly_inside(self, points: np.ndarray) -> np.ndarray:
        """``(N, P)`` → ``(N,)`` bool: in the open box (no inflation)."""
        return np.all((points > np.asarray(self.low)) & (points < np.asarray(self.high)), axis=-1)

    def exits(self, p: np.ndarray, m: float) -> list[np.ndarray]:
        """Points just outside the inflated box nearest to an inside point ``p``: its projection on each face
        (``2P`` candidates; the caller takes the nearest that suits it)."""
        low, high = np.asarray(self.low) - m, np.asarray(self.high) + m
        out = []
        for i in range(len(p)):
            for face in (low[i], high[i]):
                c = p.copy()
                c[i] = face
                out.append(c)
        return out

    def entry(self, p0: np.ndarray, p1: np.ndarray, m: float) -> float:
        """Smallest ``λ ∈ [0, 1]`` at which the segment ``p0 → p1`` enters the open inflated box (``inf``: never)."""
        low, high = np.asarray(self.low) - m, np.asarray(self.high) + m
        d = p1 - p0
        t_in, t_out = -np.inf, np.inf
        for i in range(len(p0)):
            if d[i] == 0.0:
                if not low[i] < p0[i] < high[i]:
                    return math.inf
                continue
            a, b = (low[i] - p0[i]) / d[i], (high[i] - p0[i]) / d[i]
            t_in, t_out = max(t_in, min(a, b)), min(t_out, max(a, b))
        if t_in >= t_out or t_in >= 1.0 or t_out <= 0.0:
            return math.inf
        return max(t_in, 0.0)


@dataclass(frozen=True)
class Sphere:
    """Ball ``‖p − center‖ ≤ radius``; its interior is forbidden."""

    center: tuple[float, ...]
    radius: float

    def __post_init__(self) -> None:
        if not self.radius > 0:
            raise ValueError(f"a sphere needs radius > 0, got {self.radius}")

    @property
    def dim(self) -> int:
        return len(self.center)

    def signed_distance(self, p: torch.Tensor) -> torch.Tensor:
        c = torch.tensor(self.center, dtype=p.dtype, device=p.device)
        return (p - c).pow(2).sum(-1).clamp_min(_TINY).sqrt() - self.radius

    def inside(self, p: np.ndarray, m: float) -> bool:
        return bool(np.linalg.norm(p - np.asarray(self.center)) < self.radius + m)

    def strictly_inside(self, points: np.ndarray) -> np.ndarray:
        return np.linalg.norm(points - np.asarray(self.center), axis=-1) < self.radius

    def exits(self, p: np.ndarray, m: float) -> list[np.ndarray]:
        """The point of the inflated sphere nearest to ``p``: radially out (any direction from the centre)."""
        c = np.asarray(self.center)
        d = p - c
        n = np.linalg.norm(d)
        if n == 0.0:
            d, n = np.eye(len(p))[0], 1.0
        return [c + (self.radius + m) * d / n]

    def entry(self, p0: np.ndarray, p1: np.ndarray, m: float) -> float:
        c, r = np.asarray(self.center), self.radius + m
        d, f = p1 - p0, p0 - np.asarray(c)
        a, b, cc = float(d @ d), 2.0 * float(d @ f), float(f @ f) - r * r
        if a == 0.0:
            return 0.0 if cc < 0 else math.inf
        disc = b * b - 4 * a * cc
        if disc <= 0.0:
            return math.inf
        t1, t2 = (-b - math.sqrt(disc)) / (2 * a), (-b + math.sqrt(disc)) / (2 * a)
        if t1 >= 1.0 or t2 <= 0.0:
            return math.inf
        return max(t1, 0.0)


Zone = Box | Sphere


def parse_zone(spec: Any, where: str = "zone") -> Zone:
    """A zone from its JSON form (module docstring); errors name ``where``."""
    if not isinstance(spec, dict) or spec.get("type") not in ("box", "sphere"):
        raise ValueError(f"{where} must be {{'type': 'box', 'low', 'high'}} or {{'type': 'sphere', 'center', "
                         f"'radius'}}, got {spec!r}")
    keys = {"box": {"type", "low", "high"}, "sphere": {"type", "center", "radius"}}[spec["type"]]
    if set(spec) != keys:
        raise ValueError(f"{where}: a {spec['type']} has exactly the keys {sorted(keys)}, got {sorted(spec)}")
    try:
        if spec["type"] == "box":
            low = _vector(spec["low"], "low")
            return Box(low, _vector(spec["high"], "high", len(low)))
        r = spec["radius"]
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r):
            raise ValueError(f"radius must be a finite number, got {r!r}")
        return Sphere(_vector(spec["center"], "center"), float(r))
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from e


def parse_zones(zones: Any) -> list[Zone]:
    if not isinstance(zones, (list, tuple)) or not zones:
        raise ValueError(f"zones must be a non-empty list of boxes/spheres, got {zones!r}")
    parsed = [parse_zone(z, f"zones[{i}]") for i, z in enumerate(zones)]
    if len({z.dim for z in parsed}) != 1:
        raise ValueError(f"zones must all have the same number of coordinates, got {[z.dim for z in parsed]}")
    return parsed


def _check_flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")


def _check_margin(margin: Any) -> float:
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin) or margin < 0:
        raise ValueError(f"margin must be a finite number ≥ 0 (env units), got {margin!r}")
    return float(margin)


def check_keep_out(zones: Any, margin: float = 0.0, project: bool = False) -> None:
    parse_zones(zones)
    _check_margin(margin)
    _check_flag("project", project)


class KeepOut:
    """``−Σ_k Σ_z relu(margin − sd_z(p_k))²`` over the predicted path; see the module docstring."""

    def __init__(self, context: dict[str, Any] | None, zones: list[Zone], margin: float) -> None:
        self.context, self.zones, self.margin = context, zones, margin
        path = action_path(context, "keep_out")
        check_env_units(context, "keep_out")
        require(context, EE_POSITION, "keep_out", "the current end-effector position")
        if zones[0].dim != path.dim:
            raise ValueError(f"keep_out: zones have {zones[0].dim} coordinates, the env's path has {path.dim}")

    def value(self, chunk: torch.Tensor) -> torch.Tensor:
        p = predicted_path(chunk, self.context, "keep_out")  # (B, H, P)
        cost = sum((self.margin - z.signed_distance(p)).clamp_min(0).pow(2).sum(1) for z in self.zones)
        return -cost


def keep_out(inputs: TermInputs, zones: Any, margin: float = 0.0, project: bool = False) -> KeepOut:
    return KeepOut(inputs.context, parse_zones(zones), float(margin))


def parse_limits(low: Any, high: Any) -> tuple[list[float], list[float]]:
    """``low``/``high`` (one entry per real action dim, ``None`` = unbounded) as lists of floats with ±inf."""
    if not isinstance(low, (list, tuple)) or not isinstance(high, (list, tuple)) or not low or len(low) != len(high):
        raise ValueError(f"low and high must be lists of the same length (one per action dim), got {low!r}, {high!r}")
    out = []
    for name, vals, none in (("low", low, -math.inf), ("high", high, math.inf)):
        row = []
        for i, v in enumerate(vals):
            if v is None:
                row.append(none)
            elif isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name}[{i}] must be a finite number or null, got {v!r}")
            else:
                row.append(float(v))
        out.append(row)
    if any(lo > hi for lo, hi in zip(*out, strict=True)):
        raise ValueError(f"bounds need low ≤ high in every dim, got low={low}, high={high}")
    return out[0], out[1]


def check_bounds(low: Any, high: Any, project: bool = False) -> None:
    parse_limits(low, high)
    _check_flag("project", project)


class Bounds:
    """``−Σ_k Σ_i (relu(a − high)² + relu(low − a)²)`` of the decoded chunk."""

    def __init__(self, context: dict[str, Any] | None, low: list[float], high: list[float]) -> None:
        self.context, self.low, self.high = context, low, high
        check_env_units(context, "bounds")

    def value(self, chunk: torch.Tensor) -> torch.Tensor:
        a = env_actions(chunk, self.context, "bounds")
        if a.shape[-1] != len(self.low):
            raise ValueError(f"bounds: low/high have {len(self.low)} entries, the action has {a.shape[-1]} dims")
        low, high = (torch.tensor(v, dtype=a.dtype, device=a.device) for v in (self.low, self.high))
        over = (a - high).clamp_min(0).pow(2) + (low - a).clamp_min(0).pow(2)  # inf limits give 0
        return -over.sum((1, 2))


def bounds(inputs: TermInputs, low: Any, high: Any, project: bool = False) -> Bounds:
    return Bounds(inputs.context, *parse_limits(low, high))


register_term("keep_out", keep_out, check=check_keep_out)
register_term("bounds", bounds, check=check_bounds)

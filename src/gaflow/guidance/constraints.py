"""Hard constraints: project a final chunk onto the feasible set of the ``keep_out`` / ``bounds`` terms that say
``"project": true``, and count violations before and after.

The runtime (:class:`gaflow.runtime.GuidedRuntime`) calls :meth:`Constraints.apply` after sampling and before the
actions leave: the sampler is unchanged. Work is in env units (the policy's affine decode in the objective
context) along the env's :class:`~gaflow.envs.base.ActionPath`:

1. ``bounds``: clamp every action entry to ``[low, high]``.
2. ``keep_out``, step by step along the chunk: with ``p`` the (already feasible) position before step ``k`` and
   ``q = p + step_k`` the position after it — if ``q`` is inside a zone inflated by ``margin +`` :data:`SLACK`,
   move it to the nearest point just outside (its projection on a box face, radially out of a sphere: the path
   slides along the zone) among those that need an action within the limits (the env's clip range ∩ ``bounds``)
   and lie in no zone; if there is none, shorten the step to where the segment ``p → q`` first meets an inflated
   zone.

**Guarantee.** If the current position is outside every inflated zone, every predicted point of the projected
chunk is outside every zone (at least ``margin`` away, up to float rounding far below :data:`SLACK`): each step
either ends outside by construction or is shortened to the boundary of the inflated zone, and a shortened step
``λ·a`` (``0 ≤ λ ≤ 1``) stays within limits that contain 0 (``ActionPath`` requires it). A start inside a zone
cannot be repaired within one step; its violations are reported, not hidden. Only the entries that changed are
written back (``(a − offset) / scale``), so a chunk with no violation is returned bit for bit.

Counts per row (added to the runtime's diagnostics): ``keep_out_violations_{before,after}`` — predicted points
``p_1..p_H`` strictly inside a zone; ``bounds_violations_{before,after}`` — action entries outside ``[low, high]``
by more than :data:`BOUNDS_TOL`; ``projected_steps`` — chunk steps changed by the keep-out projection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gaflow.guidance.context import ACTION_OFFSET, ACTION_SCALE, EE_POSITION, action_path, require
from gaflow.guidance.terms_space import Zone, parse_limits, parse_zones

SLACK = 1e-4  # env units added to the inflation: room for the float32 decode's rounding (~1e-7 here)
BOUNDS_TOL = 1e-5  # an entry this close to a limit counts as inside (the decode's rounding)


@dataclass
class Constraints:
    """The projected ``keep_out`` zones and ``bounds`` limits of a guidance config."""

    zones: list[Zone]
    margin: float
    low: list[float] | None
    high: list[float] | None

    @classmethod
    def from_objectives(cls, entries: list[dict[str, Any]]) -> Constraints | None:
        """From ``GuidanceConfig.objectives_``: the ``keep_out`` / ``bounds`` entries with ``"project": true``
        (``None`` when there is none). Their weight does not matter here: weight 0 = a pure hard constraint."""
        zones, margin, low, high = [], 0.0, None, None
        for e in entries:
            if not e.get("project", False):
                continue
            if e["name"] == "keep_out":
                zones += parse_zones(e["zones"])
                margin = max(margin, float(e.get("margin", 0.0)))
            elif e["name"] == "bounds":
                low, high = parse_limits(e["low"], e["high"])
        if not zones and low is None:
            return None
        return cls(zones, margin, low, high)

    def apply(self, chunk: torch.Tensor, context: dict[str, Any] | None, decode) -> tuple[torch.Tensor, list[dict]]:
        """Project ``chunk`` ``(B, H, Dp)`` (the policy's space); returns the projected chunk and one count dict per
        row. ``decode``: the policy's ``decode_actions`` — the counts are of what it actually sends to the env."""
        scale = require(context, ACTION_SCALE, "hard constraints", "the projection works in env units")
        offset = require(context, ACTION_OFFSET, "hard constraints", "the projection works in env units")
        path = start = None
        if self.zones:
            path = action_path(context, "keep_out (project)")
            start = require(context, EE_POSITION, "keep_out (project)", "the current end-effector position")
            start = start.detach().to("cpu", torch.float64).numpy()
        d = scale.shape[-1]
        real = chunk[..., :d]
        s, o = scale.to(real).unsqueeze(1), offset.to(real).unsqueeze(1)
        before = decode(chunk).detach().to("cpu", torch.float64).numpy()
        actions = (real * s + o).detach().to("cpu", torch.float64).numpy()  # (B, H, d) what the map says
        new, moved = actions.copy(), np.zeros(actions.shape[:2], dtype=np.int64)
        if self.low is not None:
            if len(self.low) != d:
                raise ValueError(f"bounds: low/high have {len(self.low)} entries, the action has {d} dims")
            new = np.clip(new, self.low, self.high)
        if self.zones:
            for b in range(new.shape[0]):
                moved[b] = self._project_row(new[b], start[b], path)
        changed = torch.from_numpy(new != actions)
        out = chunk.clone()
        projected = ((torch.from_numpy(new).to(real) - o) / s)
        out[..., :d] = torch.where(changed.to(real.device), projected, real)
        after = decode(out).detach().to("cpu", torch.float64).numpy()
        reports = []
        for b in range(chunk.shape[0]):
            r = {"projected_steps": int(moved[b].sum())}
            if self.zones:
                r["keep_out_violations_before"] = self.violations(path, start[b], before[b])
                r["keep_out_violations_after"] = self.violations(path, start[b], after[b])
            if self.low is not None:
                r["bounds_violations_before"] = self._out_of_bounds(before[b])
                r["bounds_violations_after"] = self._out_of_bounds(after[b])
            reports.append(r)
        return out, reports

    def _project_row(self, a: np.ndarray, start: np.ndarray, path) -> np.ndarray:
        """Project one chunk's actions ``a`` ``(H, d)`` (env units, modified in place); returns which steps moved."""
        dims, scale = list(path.action_dims), np.asarray(path.step_scale)
        lo = np.full(len(dims), path.action_low, dtype=np.float64)
        hi = np.full(len(dims), path.action_high, dtype=np.float64)
        if self.low is not None:
            lo, hi = np.maximum(lo, np.asarray(self.low)[dims]), np.minimum(hi, np.asarray(self.high)[dims])
        m = self.margin + SLACK
        p, moved = start.astype(np.float64), np.zeros(a.shape[0], dtype=np.int64)
        for k in range(a.shape[0]):
            step = np.clip(a[k, dims], path.action_low, path.action_high)  # what the env will apply
            q = p + scale * step
            if not any(z.inside(q, m) for z in self.zones):
                p = q
                continue
            # slide: the nearest point just outside the zone(s) q is in that the limits allow and no zone holds
            exits = sorted((c for z in self.zones if z.inside(q, m) for c in z.exits(q, m + 1e-9)),
                           key=lambda c: float(np.linalg.norm(c - q)))
            for c in exits:
                new_step = (c - p) / scale
                if np.all(new_step >= lo) and np.all(new_step <= hi) and not any(z.inside(c, m) for z in self.zones):
                    break
            else:  # none: shorten the step to where the segment p → q first meets an inflated zone
                lam = min(z.entry(p, q, m) for z in self.zones)
                lam = 0.0 if not math.isfinite(lam) else lam
                new_step = lam * step  # step is within [lo, hi]: bounds were clamped above, the clip just now
                c = p + scale * new_step
            a[k, dims] = new_step
            p, moved[k] = c, 1
        return moved

    def violations(self, path, start: np.ndarray, actions: np.ndarray) -> int:
        """Predicted points ``p_1..p_H`` of ``actions`` ``(H, d)`` strictly inside a zone (no inflation)."""
        pts = path.predict(torch.from_numpy(start).unsqueeze(0), torch.from_numpy(actions).unsqueeze(0))[0].numpy()
        return int(np.any([z.strictly_inside(pts) for z in self.zones], axis=0).sum())

    def _out_of_bounds(self, actions: np.ndarray) -> int:
        low, high = np.asarray(self.low), np.asarray(self.high)
        return int(((actions < low - BOUNDS_TOL) | (actions > high + BOUNDS_TOL)).sum())

"""Named behaviour presets: objective lists that switch what guidance climbs, with no retraining.

A preset replaces the ``objectives`` of a guidance config and keeps everything else (estimator, strength,
schedule, gate), so ``preset_guidance("gentle", locked_config)`` is the locked critic guidance plus the preset's
extra terms. ``gaflow eval --arms unguided,guided,preset:gentle,preset:fast`` runs them as arms on the same
episodes (:func:`gaflow.evaluation.runner.standard_arms`).

* ``gentle`` — critic + ``smoothness`` (jerk across the chunk and its seam with the executed actions) + ``effort``
  (position actions, env units): the same task, calmer motion.
* ``fast`` — critic + ``speed`` (net progress per step of the predicted end-effector path).

The weights were chosen on MetaWorld validation seeds with the shipped policy (BENCHMARKS.md, "Objectives beside
the critic"); they are relative to a critic whose gradient norm is O(0.1–1) under a relative strength ρ, which
fixes the size of the whole step, so a weight sets a term's share of the direction, not the step length.

>>> preset_guidance("fast", {"relative": 0.3})["objectives"][0]
{'name': 'critic', 'weight': 1.0}
"""

from __future__ import annotations

import copy
from typing import Any

PRESETS: dict[str, list[dict[str, Any]]] = {
    # MetaWorld hand-insert, validation seeds 20100–20119, ρ = 0.3: smoothness 0.05 (order 2 = the hand path's
    # jerk for delta-position actions) takes ≈ 80 % of the step and cut action jerk 42 %; heavier effort (≥ 0.1)
    # slowed the hand enough to cost successes at the step cap, so effort stays light.
    "gentle": [
        {"name": "critic", "weight": 1.0},
        {"name": "smoothness", "weight": 0.05, "order": 2},
        {"name": "effort", "weight": 0.05},
    ],
    # speed 50: ≈ 70 % of the step, hand speed +37 %, episodes 25 % shorter (20 and 200 bracketed it).
    "fast": [
        {"name": "critic", "weight": 1.0},
        {"name": "speed", "weight": 50.0},
    ],
}


def preset_guidance(name: str, base: dict[str, Any] | None) -> dict[str, Any]:
    """The guidance config dict ``base`` with its objectives replaced by preset ``name``'s."""
    if name not in PRESETS:
        raise ValueError(f"unknown objective preset {name!r}; presets: {', '.join(sorted(PRESETS))}")
    if base is not None and not isinstance(base, dict):
        raise ValueError(f"a preset extends a guidance config dict, got {type(base).__name__}")
    return {**(base or {}), "objectives": copy.deepcopy(PRESETS[name])}

"""Scripted experts that generate demonstrations from privileged simulator state.

``libero_pick_place`` — single On/In pick-and-place goals of LIBERO (imported lazily: it pulls in robosuite).
"""

from __future__ import annotations

__all__ = ["PickPlaceConfig", "PickPlaceExpert", "UnsupportedTaskError", "run_expert_episode"]


def __getattr__(name: str):
    if name in __all__:
        from gaflow.experts import libero_pick_place

        return getattr(libero_pick_place, name)
    raise AttributeError(name)

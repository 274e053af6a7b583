"""Scripted experts that generate demonstrations from privileged simulator state (not part of the method: they
feed ``gaflow.demos``). Each is imported lazily: they pull in their simulator.

``metaworld`` — MetaWorld's own scripted policies (:class:`MetaWorldExpert`).
``libero_pick_place`` — single On/In pick-and-place goals of LIBERO.
"""

from __future__ import annotations

_EXPORTS = {
    "MetaWorldExpert": "metaworld",
    "PickPlaceConfig": "libero_pick_place",
    "PickPlaceExpert": "libero_pick_place",
    "UnsupportedTaskError": "libero_pick_place",
    "run_expert_episode": "libero_pick_place",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        from importlib import import_module

        return getattr(import_module(f"gaflow.experts.{_EXPORTS[name]}"), name)
    raise AttributeError(name)

"""Demonstration recording (a stage: scripted expert → noisy rollouts → one LeRobotDataset v3 through
:class:`gaflow.data.writer.DatasetWriter`).

``metaworld`` — MetaWorld's scripted policies (``gaflow demos``): :class:`DemoConfig`, :func:`write_demos`.
``libero`` — the LIBERO pick-and-place expert (``gaflow libero-demos``): :class:`LiberoDemoConfig`,
:func:`record_libero_demos`.

Each is imported lazily: they pull in their simulator.
"""

from __future__ import annotations

_EXPORTS = {
    "DemoConfig": "metaworld",
    "EpisodeRecord": "metaworld",
    "rollout_expert": "metaworld",
    "write_demos": "metaworld",
    "LiberoDemoConfig": "libero",
    "record_libero_demos": "libero",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        from importlib import import_module

        return getattr(import_module(f"gaflow.demos.{_EXPORTS[name]}"), name)
    raise AttributeError(name)

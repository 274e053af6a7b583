"""Experiments beside the library core: presets that reproduce README and BENCHMARKS.md results."""

from gaflow.experiments.presets import PRESETS, preset

__all__ = ["PRESETS", "preset"]

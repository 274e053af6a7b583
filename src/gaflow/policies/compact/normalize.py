"""The compact policy's normaliser is gaflow's one normaliser, :mod:`gaflow.normalize` (re-exported here)."""

from gaflow.normalize import MODES, Normalizer, compute_stats

__all__ = ["MODES", "Normalizer", "compute_stats"]

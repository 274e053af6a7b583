"""The project's one normaliser (re-exported here for policies, critics and data code alike)."""

from gaflow.policies.compact.normalize import Normalizer, compute_stats

__all__ = ["Normalizer", "compute_stats"]

"""Paired evaluation: seed splits, statistics, arms, sweeps and reports."""

from gaflow.evaluation.splits import DEFAULT_SPLITS, SeedSplit, SplitViolation
from gaflow.evaluation.stats import mcnemar_exact, paired_bootstrap_ci, wilson_interval

__all__ = ["DEFAULT_SPLITS", "SeedSplit", "SplitViolation", "mcnemar_exact", "paired_bootstrap_ci", "wilson_interval"]

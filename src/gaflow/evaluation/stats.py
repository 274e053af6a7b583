"""Statistics for paired success/failure outcomes (scipy.stats underneath)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (scipy's ``binomtest(...).proportion_ci``)."""
    if n == 0:
        return (float("nan"), float("nan"))
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n]; got {successes} of {n}")
    ci = stats.binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return (float(ci.low), float(ci.high))


@dataclass
class McNemarResult:
    fail_to_success: int  # episodes where the baseline failed and the arm succeeded
    success_to_fail: int
    p_value: float  # exact two-sided (binomial test on the discordant pairs)


def mcnemar_exact(baseline: np.ndarray, arm: np.ndarray) -> McNemarResult:
    """Exact McNemar test on paired boolean outcomes (same episodes in the same order)."""
    baseline, arm = np.asarray(baseline, dtype=bool), np.asarray(arm, dtype=bool)
    if baseline.shape != arm.shape:
        raise ValueError(f"paired outcomes must have the same shape: {baseline.shape} vs {arm.shape}")
    up = int((~baseline & arm).sum())
    down = int((baseline & ~arm).sum())
    p = 1.0 if up + down == 0 else float(stats.binomtest(up, up + down, 0.5).pvalue)
    return McNemarResult(up, down, p)


def paired_bootstrap_ci(baseline: np.ndarray, arm: np.ndarray, confidence: float = 0.95, n_resamples: int = 5000,
                        seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the paired difference in success rate (arm − baseline), resampling episodes."""
    diff = np.asarray(arm, dtype=float) - np.asarray(baseline, dtype=float)
    if diff.size == 0:
        return (float("nan"), float("nan"))
    if np.all(diff == diff[0]):
        return (float(diff[0]), float(diff[0]))
    res = stats.bootstrap((diff,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                          method="percentile", random_state=np.random.default_rng(seed))
    return (float(res.confidence_interval.low), float(res.confidence_interval.high))

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


# --------------------------------------------------------------------------------------------- clustered episodes
# Episodes that share an initial state are not independent (LIBERO's n = 105 per task is 15 init states × 7 noise
# repeats): Wilson CIs, the episode bootstrap and McNemar count every repeat as fresh evidence and overstate
# significance. The clustered versions below resample and sign-flip whole clusters instead.

CLUSTERED_METHOD = ("cluster bootstrap over initial states (percentile, 5000 resamples, seed 0) for the CIs; "
                    "sign-flip test on per-initial-state summed paired differences for p")
UNCLUSTERED_METHOD = "no initial state repeats: the unclustered Wilson CI, paired bootstrap and exact McNemar"


def _clusters(clusters, n: int) -> np.ndarray:
    """Cluster index per episode, numbered in order of first appearance (so singleton clusters keep the episode
    order, and the cluster bootstrap then draws the very resamples of the episode bootstrap)."""
    labels = np.asarray(clusters)
    if labels.shape != (n,):
        raise ValueError(f"clusters must give one label per episode ({n}); got shape {labels.shape}")
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inverse.reshape(-1)]


def cluster_bootstrap_ci(values: np.ndarray, clusters, confidence: float = 0.95, n_resamples: int = 5000,
                         seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the per-episode mean of ``values`` (success flags for a rate, arm − baseline for
    a paired lift), resampling **clusters** with replacement and keeping each drawn cluster's episodes together.

    With every cluster a single episode this is exactly :func:`paired_bootstrap_ci` (same resamples, same seed).
    """
    values = np.asarray(values, dtype=float)
    idx = _clusters(clusters, values.size)
    if values.size == 0:
        return (float("nan"), float("nan"))
    if np.all(values == values[0]):
        return (float(values[0]), float(values[0]))
    sums, sizes = np.bincount(idx, weights=values), np.bincount(idx).astype(float)

    def mean_of_drawn(drawn: np.ndarray, axis: int = -1) -> np.ndarray:  # drawn: cluster indices (..., k)
        drawn = drawn.astype(np.int64)
        return sums[drawn].sum(axis=axis) / sizes[drawn].sum(axis=axis)

    res = stats.bootstrap((np.arange(len(sums)),), mean_of_drawn, confidence_level=confidence,
                          n_resamples=n_resamples, method="percentile", random_state=np.random.default_rng(seed))
    return (float(res.confidence_interval.low), float(res.confidence_interval.high))


@dataclass
class SignFlipResult:
    clusters: int
    statistic: float  # sum over episodes of (arm − baseline) = n · lift
    p_value: float  # two-sided
    method: str  # "exact" or "monte-carlo (R resamples, seed s)"


def cluster_sign_flip_test(baseline: np.ndarray, arm: np.ndarray, clusters, n_resamples: int = 100_000,
                           seed: int = 0) -> SignFlipResult:
    """Paired test with clustered episodes: under "the arm does nothing", each cluster's summed difference
    ``S_c = Σ (arm − baseline)`` is as likely to be ``−S_c``; the two-sided p is ``P(|Σ ± S_c| ≥ |Σ S_c|)`` over
    the ``2^k`` sign patterns.

    Exact whenever the cluster sums are integers (success flags: always) — the null distribution of ``Σ ± S_c`` is
    built by convolution, for any number of clusters; with one episode per cluster it is the exact McNemar test.
    Otherwise ``scipy.stats.permutation_test`` over the sign patterns: exact when ``2^k ≤ n_resamples``,
    Monte-Carlo with the fixed ``seed`` beyond.
    """
    baseline, arm = np.asarray(baseline, dtype=float), np.asarray(arm, dtype=float)
    if baseline.shape != arm.shape:
        raise ValueError(f"paired outcomes must have the same shape: {baseline.shape} vs {arm.shape}")
    idx = _clusters(clusters, arm.size)
    k = int(idx.max()) + 1 if idx.size else 0
    sums = np.bincount(idx, weights=arm - baseline, minlength=k)
    observed = float(sums.sum())
    moving = sums[sums != 0]  # a cluster with S_c = 0 looks the same under either sign
    if moving.size == 0:
        return SignFlipResult(k, observed, 1.0, "exact")
    if np.allclose(moving, np.round(moving), rtol=0, atol=1e-9):
        steps = np.abs(np.round(moving)).astype(np.int64)
        total = int(steps.sum())
        null = np.zeros(2 * total + 1)  # P(Σ ± S_c = j − total)
        null[total] = 1.0
        for s in steps:  # support stays within ±total, so np.roll never wraps mass around
            null = 0.5 * (np.roll(null, s) + np.roll(null, -s))
        reach = np.abs(np.arange(-total, total + 1)) >= abs(round(observed))
        return SignFlipResult(k, observed, float(min(1.0, null[reach].sum())), "exact")
    res = stats.permutation_test((moving,), lambda d, axis=-1: d.sum(axis=axis), permutation_type="samples",
                                 n_resamples=n_resamples, alternative="two-sided",
                                 random_state=np.random.default_rng(seed))
    exact = 2 ** moving.size <= n_resamples
    return SignFlipResult(k, observed, float(res.pvalue),
                          "exact" if exact else f"monte-carlo ({n_resamples} resamples, seed {seed})")

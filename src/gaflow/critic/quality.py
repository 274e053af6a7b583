"""Critic quality on held-out episodes: ROC-AUC for eventual success, reliability table, ensemble disagreement.

Used by ``gaflow critic-report`` (with plots) and by tests.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats

from gaflow.critic.data import ChunkTable
from gaflow.critic.models import evaluate_critic


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC-AUC via the Mann–Whitney U statistic (ties count one half); NaN if only one class is present."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    u = stats.mannwhitneyu(pos, neg, alternative="two-sided").statistic
    return float(u / (len(pos) * len(neg)))


@torch.no_grad()
def critic_values(critic, table: ChunkTable, rows: torch.Tensor | None = None, batch: int = 4096) -> torch.Tensor:
    """Member values ``(K, N)`` of the table's recorded chunks."""
    rows = torch.arange(len(table)) if rows is None else rows
    keys = getattr(critic, "feature_keys", list(table.features))
    out = []
    for i in range(0, len(rows), batch):
        r = rows[i:i + batch]
        out.append(evaluate_critic(critic, {k: table.features[k][r].float() for k in keys}, table.chunk[r].float()))
    return torch.cat(out, dim=1)


def reliability_table(pred: np.ndarray, labels: np.ndarray, bins: int = 10) -> list[dict]:
    """Per bin of predicted value (clipped to [0, 1]): count, mean prediction, observed success rate."""
    pred = np.clip(np.asarray(pred, float), 0.0, 1.0)
    labels = np.asarray(labels, float)
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(pred, edges[1:-1]), 0, bins - 1)
    rows = []
    for b in range(bins):
        m = idx == b
        rows.append({"bin": f"[{edges[b]:.1f}, {edges[b + 1]:.1f})", "count": int(m.sum()),
                     "mean_pred": float(pred[m].mean()) if m.any() else float("nan"),
                     "success_rate": float(labels[m].mean()) if m.any() else float("nan")})
    return rows


def expected_calibration_error(table_rows: list[dict]) -> float:
    n = sum(r["count"] for r in table_rows)
    if n == 0:
        return float("nan")
    return float(sum(r["count"] * abs(r["mean_pred"] - r["success_rate"]) for r in table_rows if r["count"]) / n)


def progress_spearman(values: np.ndarray, steps_to_success: np.ndarray, success: np.ndarray) -> float:
    """Spearman correlation between the critic's value and **closeness to success** (minus the env steps left
    until the first success) over the chunks of successful episodes; NaN with fewer than three such chunks.

    AUC asks whether the critic can tell which episodes will succeed; this asks whether it tracks progress where
    success happens. They can disagree: on long, noisy tasks (LIBERO) outcome is unpredictable from most states
    (AUC ≈ 0.5) while the critic still ranks progress well — and progress is what its action gradient follows.
    """
    m = np.asarray(success, bool) & (np.asarray(steps_to_success) >= 0)
    if m.sum() < 3:
        return float("nan")
    return float(stats.spearmanr(np.asarray(values, float)[m], -np.asarray(steps_to_success, float)[m]).statistic)


def critic_quality(critic, table: ChunkTable, rows: torch.Tensor, target: str = "success_to_go") -> dict:
    """AUC (chunk level and first-chunk-of-episode level), progress ranking, calibration and disagreement on
    ``rows``."""
    q = critic_values(critic, table, rows)  # (K, N)
    mean = q.mean(0)
    pred = torch.sigmoid(mean) if target == "binary" else mean
    labels = table.success[rows].bool().numpy()
    std = q.std(0, unbiased=False) if q.shape[0] > 1 else torch.zeros_like(mean)
    first = torch.tensor([i for i, r in enumerate(rows.tolist()) if table.step[r] == 0], dtype=torch.long)
    rel = reliability_table(pred.numpy(), labels)
    return {
        "n_chunks": len(rows),
        "n_episodes": int(torch.unique(table.episode[rows]).numel()),
        "success_fraction": float(labels.mean()) if len(labels) else float("nan"),
        "auc": roc_auc(mean.numpy(), labels),
        "auc_first_chunk": roc_auc(mean[first].numpy(), labels[first.numpy()]) if len(first) else float("nan"),
        "progress_spearman": progress_spearman(mean.numpy(), table.steps_to_success[rows].numpy(), labels),
        "reliability": rel,
        "ece": expected_calibration_error(rel),
        "ensemble_std_mean": float(std.mean()),
        "ensemble_std_p90": float(std.quantile(0.9)) if len(std) else float("nan"),
    }


# Critic-data sizing: a critic is trusted for a sweep when its held-out AUC is clearly above chance and every task
# has enough successes and failures to learn from.
MIN_AUC_LOW = 0.6  # lower end of the 95 % bootstrap CI of the held-out AUC
MIN_OUTCOMES = 10  # successes and failures per task in the critic's data
TARGET_HALF_WIDTH = 0.1  # the AUC CI half-width a sizing suggestion aims at


def auc_interval(scores: np.ndarray, labels: np.ndarray, episodes: np.ndarray, n_resamples: int = 500,
                 seed: int = 0) -> tuple[float, float]:
    """95 % bootstrap CI of the ROC-AUC, resampling whole episodes (chunks of one episode are not independent)."""
    ids = np.unique(episodes)
    if len(ids) < 2:
        return (float("nan"), float("nan"))
    rows_of = [np.flatnonzero(episodes == e) for e in ids]
    rng = np.random.default_rng(seed)
    aucs = []
    for _ in range(n_resamples):
        rows = np.concatenate([rows_of[i] for i in rng.integers(0, len(ids), len(ids))])
        a = roc_auc(scores[rows], labels[rows])
        if np.isfinite(a):
            aucs.append(a)
    if not aucs:
        return (float("nan"), float("nan"))
    return (float(np.percentile(aucs, 2.5)), float(np.percentile(aucs, 97.5)))


def data_sufficiency(auc_ci: tuple[float, float], report_episodes: int, outcomes: dict[str, dict[str, int]],
                     episodes_per_task: int) -> dict:
    """Whether a critic has enough data to be trusted, and if not, about how many episodes per task would do.

    ``outcomes``: per task, ``{"successes": k, "failures": m}`` over the critic's whole data; ``episodes_per_task``:
    what it was trained from. The suggestion scales the episodes so the AUC CI half-width would reach
    :data:`TARGET_HALF_WIDTH` (CI width ∝ 1/√n) and every task would see :data:`MIN_OUTCOMES` of each outcome.
    """
    lo, hi = auc_ci
    reasons = []
    if not np.isfinite(lo) or lo < MIN_AUC_LOW:
        reasons.append(f"held-out AUC 95 % CI [{lo:.2f}, {hi:.2f}] reaches below {MIN_AUC_LOW}")
    factor = 1.0
    if np.isfinite(lo) and np.isfinite(hi) and report_episodes > 0:
        factor = max(factor, ((hi - lo) / 2 / TARGET_HALF_WIDTH) ** 2)
    for task, o in outcomes.items():
        rare = min(o["successes"], o["failures"])
        if rare < MIN_OUTCOMES:
            reasons.append(f"{task}: {o['successes']} successes / {o['failures']} failures (< {MIN_OUTCOMES})")
            factor = max(factor, MIN_OUTCOMES / max(rare, 1))
    enough = not reasons
    return {"enough": enough, "reasons": reasons, "auc_ci95": [lo, hi], "report_episodes": report_episodes,
            "outcomes": outcomes, "episodes_per_task": episodes_per_task,
            "suggested_episodes_per_task": episodes_per_task if enough else int(np.ceil(episodes_per_task * factor))}

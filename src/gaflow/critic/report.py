"""``gaflow critic-report``: check a critic before any robot sees it.

1. On episodes no training decision saw (the critic's ``report`` split and held-out-task episodes; critics trained
   before the report split fall back, labelled, to their validation episodes): ROC-AUC of the critic's value for
   eventual success, its rank correlation with progress (closeness to success within successful episodes), a
   reliability table, ensemble disagreement.
2. Optionally, guidance strength on *real sampler states* of the base policy — measured by the caller
   (:mod:`gaflow.evaluation.critic_check`, which needs a policy) and plotted and reported here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from gaflow.critic.data import ChunkTable
from gaflow.critic.quality import auc_interval, critic_quality, critic_values, data_sufficiency, roc_auc
from gaflow.io import atomic_write_json

NEGLIGIBLE_RATIO = 0.01  # median ‖Δv‖/‖v‖ below this: guidance cannot change the chunk
DOMINANT_RATIO = 1.0  # above this: guidance overrides the policy


QUALITY_SPLITS = {
    "new_data": "all episodes (data not used in training)",
    "report": "report/held-out-task episodes of the training data (seen by no training decision)",
    "validation_fallback": "validation/held-out-task episodes of the training data — VALIDATION CHOSE THE CHECKPOINT, "
                           "so these numbers are optimistic (critic has no report split)",
}


def quality_split(critic_dir: Path, same_data: bool) -> str:
    """Which episodes the quality numbers come from: a key of :data:`QUALITY_SPLITS`."""
    if not same_data:
        return "new_data"
    info = json.loads((critic_dir / "critic.json").read_text())
    # critics trained before the report split (or with report_fraction=0, or on too little data) have none
    return "report" if info["split"].get("report") else "validation_fallback"


def heldout_rows(table: ChunkTable, critic_dir: Path, same_data: bool) -> tuple[torch.Tensor, str]:
    """Rows no training decision saw: the critic's report + held-out-task episodes (for a critic without a report
    split, its validation + held-out-task episodes, labelled as such), or all rows of new data."""
    kind = quality_split(critic_dir, same_data)
    if kind == "new_data":
        return torch.arange(len(table)), QUALITY_SPLITS[kind]
    split = json.loads((critic_dir / "critic.json").read_text())["split"]
    eps = split["report" if kind == "report" else "validation"] + split["held_out"]
    rows = torch.nonzero(torch.isin(table.episode, torch.tensor(eps, dtype=torch.long))).flatten()
    return rows, f"{len(eps)} {QUALITY_SPLITS[kind]}"


def plot_report(out: Path, quality: dict, values: np.ndarray, labels: np.ndarray, strength: dict | None) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    fig, axes = plt.subplots(1, 3 if strength else 2, figsize=(13 if strength else 9, 3.6))
    # ROC curve
    order = np.argsort(-values)
    lab = labels[order].astype(float)
    tpr = np.concatenate([[0], np.cumsum(lab) / max(lab.sum(), 1)])
    fpr = np.concatenate([[0], np.cumsum(1 - lab) / max((1 - lab).sum(), 1)])
    axes[0].plot(fpr, tpr, label=f"AUC {quality['auc']:.3f}")
    axes[0].plot([0, 1], [0, 1], "k:", lw=0.8)
    axes[0].set(xlabel="false positive rate", ylabel="true positive rate", title="success ROC (held-out)")
    axes[0].legend(loc="lower right")
    rel = [r for r in quality["reliability"] if r["count"]]
    axes[1].plot([0, 1], [0, 1], "k:", lw=0.8)
    axes[1].plot([r["mean_pred"] for r in rel], [r["success_rate"] for r in rel], "o-")
    axes[1].set(xlabel="predicted value", ylabel="observed success rate", title=f"reliability (ECE {quality['ece']:.3f})")
    if strength:
        r = strength["ratio"]
        r = r[r > 0]
        if r.size:
            lr = np.log10(r)
            axes[2].hist(lr, bins=40, range=(lr.min() - 0.25, lr.max() + 0.25))  # constant under a relative target
        for x, c in ((NEGLIGIBLE_RATIO, "r"), (DOMINANT_RATIO, "r")):
            axes[2].axvline(np.log10(x), color=c, ls="--", lw=0.8)
        axes[2].set(xlabel="log10 ‖Δv‖/‖v‖", ylabel="(step, sample) count", title="guidance strength on real states")
    fig.tight_layout()
    path = out / "critic_report.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    files.append(path.name)
    return files


def critic_report(critic_dir: Path, collect_dir: Path, out: Path, measure_strength=None, guidance_cfg=None,
                  same_data: bool = True) -> dict:
    """Quality of the critic in ``critic_dir`` on the held-out episodes of ``collect_dir``, written to ``out``.

    ``measure_strength(critic, table, rows)`` (optional; :func:`gaflow.evaluation.critic_check.measure_strength`
    bound to a policy and ``guidance_cfg``) returns the guidance-strength arrays and verdict on those rows' recorded
    states — the part that needs a policy, kept out of this package. It gets the critic and the chunk table this
    function loaded, so neither is read twice.
    """
    from gaflow.critic.train import load_critic

    out.mkdir(parents=True, exist_ok=True)
    critic = load_critic(critic_dir)
    info = json.loads((critic_dir / "critic.json").read_text())
    table = ChunkTable.load(collect_dir / "chunks.safetensors")
    rows, rows_label = heldout_rows(table, critic_dir, same_data)
    if len(rows) == 0:
        raise ValueError("no held-out episodes to report on")
    quality = critic_quality(critic, table, rows, info["config"]["target"])
    q = critic_values(critic, table, rows).mean(0).numpy()
    labels = table.success[rows].bool().numpy()
    row_tasks = np.array(table.row_tasks())[rows.numpy()]
    # per task: for a critic trained with held_out_tasks, the AUC on the tasks it never saw
    auc_per_task = {t: roc_auc(q[row_tasks == t], labels[row_tasks == t]) for t in sorted(set(row_tasks.tolist()))}
    eps = table.episode[rows].numpy()
    auc_ci = auc_interval(q, labels, eps)
    outcomes: dict[str, dict[str, int]] = {}
    for ep in table.episodes:
        o = outcomes.setdefault(ep["task"], {"successes": 0, "failures": 0})
        o["successes" if ep["success"] else "failures"] += 1
    per_task_eps = max(sum(o.values()) for o in outcomes.values())
    sizing = data_sufficiency(auc_ci, len(np.unique(eps)), outcomes, per_task_eps)
    strength, verdict, warning = None, "not measured", None
    if measure_strength is not None:
        strength = measure_strength(critic, table, rows)
        verdict, warning = strength["verdict"], strength["warning"]
    report = {"critic": str(critic_dir), "data": str(collect_dir), "rows": rows_label,
              "quality_split": quality_split(critic_dir, same_data), **quality, "auc_per_task": auc_per_task,
              "auc_ci95": list(auc_ci), "sizing": sizing,
              "guidance_config": guidance_cfg.to_dict() if guidance_cfg is not None else None,
              "strength_verdict": verdict, "strength_warning": warning}
    if strength is not None:
        r = strength["ratio"]
        report["ratio_quantiles"] = {f"p{p}": float(np.percentile(r, p)) for p in (5, 25, 50, 75, 95)} if r.size else {}
        report["gate_mean"] = float(strength["gate"].mean()) if strength["gate"].size else float("nan")
        report["raw_grad_norm_median"] = float(np.median(strength["raw_grad_norm"])) if r.size else float("nan")
        raw = strength.get("raw_ratio", np.zeros(0))
        report["raw_ratio_quantiles"] = {f"p{p}": float(np.percentile(raw, p)) for p in (5, 25, 50, 75, 95)} \
            if raw.size else {}
    report["plots"] = plot_report(out, quality, q, labels, strength)
    atomic_write_json(out / "critic_report.json", report)
    return report

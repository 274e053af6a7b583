"""``gaflow critic-report``: check a critic before any robot sees it.

1. On episodes no training decision saw (the critic's ``report`` split and held-out-task episodes; critics trained
   before the report split fall back, labelled, to their validation episodes): ROC-AUC of the critic's value for
   eventual success, its rank correlation with progress (closeness to success within successful episodes), a
   reliability table, ensemble disagreement.
2. On *real sampler states* of the base policy (observations from the recorded episodes, re-encoded, sampled with
   the given guidance config): the distribution of ‖applied guidance‖/‖velocity‖ — with a warning when guidance
   would be negligible (the published method's critics were 8–400× too weak and nobody noticed) or would dominate.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from gaflow.critic.data import ChunkTable
from gaflow.critic.quality import critic_quality, critic_values, roc_auc
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


def observations_at(collect_dir: Path, table: ChunkTable, rows: torch.Tensor) -> list[dict]:
    """Rebuild the env observation each chunk was sampled from (recorded frames of the episode files)."""
    from gaflow.collect import episode_path, read_episode
    from gaflow.observations import ENV_STATE_KEY, IMAGE_KEY, STATE_KEY, TASK_KEY

    cache: dict[int, tuple[dict, dict]] = {}
    obs = []
    for r in rows.tolist():
        e = int(table.episode[r])
        if e not in cache:
            ep = table.episodes[e]
            cache[e] = read_episode(episode_path(collect_dir, ep["task"], ep["seed"]))
        meta, t = cache[e]
        i = int(table.step[r])
        if "frame.state" not in t or i >= t["frame.state"].shape[0]:
            continue
        o = {STATE_KEY: t["frame.state"][i].numpy(), ENV_STATE_KEY: t["frame.env_state"][i].numpy(),
             TASK_KEY: meta.get("task_description") or meta["task"]}
        if "frame.image" in t:
            o[IMAGE_KEY] = t["frame.image"][i].numpy()
        obs.append(o)
    return obs


def guidance_strength(policy, critic, guidance_cfg, observations: list[dict], batch: int = 16, seed: int = 0):
    """Per (step, sample) diagnostics of the guided sampler on real observations → flat arrays."""
    from gaflow.guidance import Guidance
    from gaflow.observations import stack_observations
    from gaflow.sampler import sample_chunks

    g = Guidance(critic, guidance_cfg)
    gen = torch.Generator().manual_seed(seed)
    ratios, gates, raw = [], [], []
    for i in range(0, len(observations), batch):
        with torch.no_grad():
            ctx = policy.encode(stack_observations(observations[i:i + batch]))
            out = sample_chunks(policy, context=ctx, guidance=g, generator=gen)
        d = out.diagnostics
        ok = torch.isfinite(d.ratio)
        ratios.append(d.ratio[ok].numpy())
        gates.append(d.gate[ok].numpy())
        raw.append(d.raw_grad_norm[ok].numpy())
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0)  # noqa: E731
    return {"ratio": cat(ratios), "gate": cat(gates), "raw_grad_norm": cat(raw)}


def strength_verdict(ratio: np.ndarray) -> tuple[str, str | None]:
    if ratio.size == 0:
        return "unknown", "no sampler states could be rebuilt from the data"
    med = float(np.median(ratio))
    if med < NEGLIGIBLE_RATIO:
        return "negligible", (f"median ‖Δv‖/‖v‖ = {med:.2g} < {NEGLIGIBLE_RATIO}: guidance this weak cannot change "
                              "the chunks — raise the scale or use a relative strength (--relative)")
    if med > DOMINANT_RATIO:
        return "dominant", (f"median ‖Δv‖/‖v‖ = {med:.2g} > {DOMINANT_RATIO}: guidance overrides the policy — "
                            "expect off-manifold chunks; lower the scale or clip")
    return "ok", None


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


def critic_report(critic_dir: Path, collect_dir: Path, out: Path, policy_spec: str | None = None,
                  guidance_cfg=None, max_states: int = 128, same_data: bool = True) -> dict:
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
    strength, verdict, warning = None, "not measured", None
    if policy_spec is not None and guidance_cfg is not None:
        from gaflow.policies.registry import load_policy

        policy = load_policy(policy_spec)
        pick = rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))[:max_states]]
        strength = guidance_strength(policy, critic, guidance_cfg, observations_at(collect_dir, table, pick))
        verdict, warning = strength_verdict(strength["ratio"])
    report = {"critic": str(critic_dir), "data": str(collect_dir), "rows": rows_label,
              "quality_split": quality_split(critic_dir, same_data), **quality, "auc_per_task": auc_per_task,
              "guidance_config": guidance_cfg.to_dict() if guidance_cfg is not None else None,
              "strength_verdict": verdict, "strength_warning": warning}
    if strength is not None:
        r = strength["ratio"]
        report["ratio_quantiles"] = {f"p{p}": float(np.percentile(r, p)) for p in (5, 25, 50, 75, 95)} if r.size else {}
        report["gate_mean"] = float(strength["gate"].mean()) if strength["gate"].size else float("nan")
        report["raw_grad_norm_median"] = float(np.median(strength["raw_grad_norm"])) if r.size else float("nan")
    report["plots"] = plot_report(out, quality, q, labels, strength)
    atomic_write_json(out / "critic_report.json", report)
    return report

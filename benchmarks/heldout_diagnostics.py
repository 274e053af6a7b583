"""What a held-out-task critic's trust signals look like on tasks it never saw (issue #19), before any guided episode.

For each critic folder given, and each task in the collect folder's chunk table: the critic's chunk-level AUC for
eventual success, the feature distance (RMS z-score, :func:`gaflow.critic.models.feature_distance`) relative to the
critic's own validation q95 — over all its feature keys and per key — and the ensemble's spread. Only rollouts of
the base policy are read (critic seeds); nothing here touches validation or test episodes.

    uv run python benchmarks/heldout_diagnostics.py --rollouts runs/heldout/rollouts \
        --critics runs/heldout/critic_A,runs/heldout/critic_B,runs/heldout/critic_C --out runs/heldout/diagnostics.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from gaflow.critic.data import ChunkTable
from gaflow.critic.models import feature_distance
from gaflow.critic.quality import critic_values, roc_auc
from gaflow.critic.train import load_critic
from gaflow.io import atomic_write_json


def chunk_table(collect_dir: Path) -> ChunkTable:
    return ChunkTable.load(collect_dir / "chunks.safetensors")


def diagnose(critic_dir: Path, table: ChunkTable) -> dict:
    critic = load_critic(critic_dir)
    info = json.loads((critic_dir / "critic.json").read_text())
    trained_without = set(info.get("held_out_tasks") or info.get("config", {}).get("held_out_tasks") or [])
    q95 = critic.trust_calibration["q95"]
    tasks = np.array(table.row_tasks())
    labels = table.success.numpy().astype(bool)
    with torch.no_grad():
        values = critic_values(critic, table)  # (K, N)
        feats = {k: table.features[k].float() for k in critic.feature_keys}
        d_all = feature_distance(critic, feats).numpy() / q95
        per_key = {k: critic.normalizer.normalize(k, feats[k]).pow(2).mean(-1).sqrt().numpy()
                   for k in critic.feature_keys}
    mean, std = values.mean(0).numpy(), values.std(0).numpy()
    out = {}
    for task in sorted(set(tasks)):
        m = tasks == task
        out[task] = {
            "seen": task not in trained_without,
            "rows": int(m.sum()),
            "auc": roc_auc(mean[m], labels[m]) if 0 < labels[m].sum() < m.sum() else float("nan"),
            "distance_over_q95": {"median": float(np.median(d_all[m])), "q95": float(np.quantile(d_all[m], 0.95))},
            "per_key_rms_z_median": {k: float(np.median(v[m])) for k, v in per_key.items()},
            "ensemble_std_median": float(np.median(std[m])),
        }
    return {"critic": str(critic_dir), "trained_without": sorted(trained_without), "q95": q95, "tasks": out}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rollouts", type=Path, required=True)
    p.add_argument("--critics", required=True, help="comma-separated critic folders")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    table = chunk_table(a.rollouts)
    results = [diagnose(Path(c), table) for c in a.critics.split(",")]
    atomic_write_json(a.out, results)
    for r in results:
        print(f"\n{r['critic']} (trained without {', '.join(r['trained_without']) or 'nothing'}; q95 {r['q95']:.2f})")
        print(f"{'task':<14}{'seen':>5}{'AUC':>7}{'d/q95 med':>10}{'d/q95 q95':>10}{'std med':>9}  per-key rms-z")
        for task, t in r["tasks"].items():
            keys = " ".join(f"{k}={v:.2f}" for k, v in t["per_key_rms_z_median"].items())
            print(f"{task:<14}{'yes' if t['seen'] else 'NO':>5}{t['auc']:>7.3f}{t['distance_over_q95']['median']:>10.2f}"
                  f"{t['distance_over_q95']['q95']:>10.2f}{t['ensemble_std_median']:>9.4f}  {keys}")


if __name__ == "__main__":
    main()

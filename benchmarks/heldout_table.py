"""The held-out-task table of benchmarks/heldout_gate.sh: per task and pooled over the folds, unguided vs the gated
lock vs the same config ungated, with the one-sided exact test for harm the issue asks for.

    uv run python benchmarks/heldout_table.py runs/heldout      # reads test_*/metrics.json and diagnostics.json

Pooled figures combine the folds' paired outcomes: every (task, seed) pair is one independent episode pair (no
initial state repeats on MetaWorld), so the pooled McNemar test sums discordant pairs and the pooled lift CI is a
paired bootstrap over the pairs rebuilt from each task's four outcome counts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import binomtest

from gaflow.evaluation.stats import mcnemar_exact, paired_bootstrap_ci

ARMS = ("guided", "ungated")


def pairs(u: dict, a: dict) -> tuple[np.ndarray, np.ndarray]:
    """(unguided, arm) success arrays with the counts of ``u`` and ``a`` (order does not matter for the tests)."""
    sf, fs = a["success_to_fail"], a["fail_to_success"]
    ss = u["successes"] - sf
    ff = u["n"] - ss - sf - fs
    base = np.array([1] * ss + [1] * sf + [0] * fs + [0] * ff, bool)
    arm = np.array([1] * ss + [0] * sf + [1] * fs + [0] * ff, bool)
    return base, arm


def harm_p(up: int, down: int) -> float:
    """One-sided exact McNemar p for 'the arm is worse': P(≥ down of up+down discordant pairs go down | no effect)."""
    return float(binomtest(down, up + down, 0.5, alternative="greater").pvalue) if up + down else 1.0


def cell(base: np.ndarray, arm: np.ndarray) -> dict:
    up, down = int((~base & arm).sum()), int((base & ~arm).sum())
    lo, hi = paired_bootstrap_ci(base.astype(float), arm.astype(float))
    return {"rate": float(arm.mean()), "lift": float(arm.mean() - base.mean()), "ci": (lo, hi), "up": up,
            "down": down, "p": mcnemar_exact(base, arm).p_value, "harm_p": harm_p(up, down)}


def main(run: str) -> None:
    run = Path(run)
    diag = {}
    if (run / "diagnostics.json").exists():
        for d in json.loads((run / "diagnostics.json").read_text()):
            for task, t in d["tasks"].items():
                if not t["seen"]:
                    diag[task] = t
    rows, pooled = [], {a: ([], []) for a in ARMS}
    for metrics in sorted(run.glob("test_*/metrics.json")):
        m = json.loads(metrics.read_text())
        for task, block in m["per_task"].items():
            u = block["unguided"]
            row = {"task": task, "fold": metrics.parent.name.removeprefix("test_"), "n": u["n"],
                   "unguided": u["rate"], "gate_mean": block["guided"].get("guidance", {}).get("gate_mean")}
            for a in ARMS:
                base, arm = pairs(u, block[a])
                row[a] = cell(base, arm)
                pooled[a][0].append(base)
                pooled[a][1].append(arm)
            rows.append(row)
    if not rows:
        raise SystemExit(f"no test_*/metrics.json under {run}")
    head = ("| fold | task | n | AUC unseen | d/q95 (median) | unguided | gated lift [95 % CI] | ↑/↓ | p | harm p | "
            "gate mean | ungated lift [95 % CI] | ↑/↓ | p | harm p |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))

    def fmt(c: dict) -> str:
        return (f"{100 * c['lift']:+.1f} [{100 * c['ci'][0]:+.0f}, {100 * c['ci'][1]:+.0f}] | {c['up']} / {c['down']} | "
                f"{c['p']:.2g} | {c['harm_p']:.2g}")

    for r in rows:
        d = diag.get(r["task"], {})
        auc = f"{d['auc']:.2f}" if d else "—"
        dist = f"{d['distance_over_q95']['median']:.2f}" if d else "—"
        gm = f"{r['gate_mean']:.2f}" if r["gate_mean"] is not None else "—"
        print(f"| {r['fold']} | {r['task']} | {r['n']} | {auc} | {dist} | {100 * r['unguided']:.0f} % | "
              f"{fmt(r['guided'])} | {gm} | {fmt(r['ungated'])} |")
    tot = {a: cell(np.concatenate(pooled[a][0]), np.concatenate(pooled[a][1])) for a in ARMS}
    n = sum(r["n"] for r in rows)
    base_rate = np.concatenate(pooled["guided"][0]).mean()
    print(f"| **pooled** | {len(rows)} tasks | {n} | | | {100 * base_rate:.0f} % | {fmt(tot['guided'])} | | "
          f"{fmt(tot['ungated'])} |")
    harmed = {a: [r["task"] for r in rows if r[a]["harm_p"] < 0.05] for a in ARMS}
    print(f"\ntasks significantly harmed (one-sided exact McNemar p < 0.05): gated {harmed['guided'] or 'none'}, "
          f"ungated {harmed['ungated'] or 'none'}")


if __name__ == "__main__":
    main(sys.argv[1])

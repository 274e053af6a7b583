"""Print a locked-test run's metrics.json as the compact per-task table used in BENCHMARKS.md.

    uv run python benchmarks/study_table.py runs/study_v4/test/metrics.json
"""

from __future__ import annotations

import json
import sys


def pct(x: float) -> str:
    return f"{100 * x:.0f} %"


def main(path: str) -> None:
    m = json.loads(open(path).read())
    arms = m["arms"]
    controls = [a for a in arms if a not in ("unguided", "guided")]
    head = ["task", "n", "unguided [95 % CI]", "guided [95 % CI]", "lift [paired 95 % CI]", "fail→succ / succ→fail",
            "McNemar p"] + [f"{a} lift" for a in controls]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for task, block in list(m["per_task"].items()) + [("**pooled**", m["pooled"])]:
        u, g = block["unguided"], block["guided"]
        row = [task, str(u["n"]), f"{pct(u['rate'])} [{pct(u['ci95'][0])}, {pct(u['ci95'][1])}]",
               f"{pct(g['rate'])} [{pct(g['ci95'][0])}, {pct(g['ci95'][1])}]",
               f"{100 * g['lift']:+.1f} [{100 * g['lift_ci95'][0]:+.0f}, {100 * g['lift_ci95'][1]:+.0f}]",
               f"{g['fail_to_success']} / {g['success_to_fail']}", f"{g['mcnemar_p']:.2g}"]
        row += [f"{100 * block[a]['lift']:+.1f} (p {block[a]['mcnemar_p']:.2g})" for a in controls]
        print("| " + " | ".join(row) + " |")
    gd = m["pooled"]["guided"].get("guidance", {})
    print(f"\nguided arm: ‖Δv‖/‖v‖ median {gd.get('ratio_median', float('nan')):.3g}, gate mean "
          f"{gd.get('gate_mean', float('nan')):.3g}, non-finite {gd.get('nonfinite')}, fallback {gd.get('fallback')}; "
          f"latency ms/chunk: " + ", ".join(f"{a} {m['pooled'][a]['chunk_latency_ms']:.1f}" for a in arms))
    if m.get("locked"):
        lk = m["locked"]
        print(f"locked config {lk['hash']} ({lk['locked_at']}, split {lk['split']}); test runs {lk['test_runs']}, "
              f"re-locked after test: {lk['relocked_after_test']}")


if __name__ == "__main__":
    main(sys.argv[1])

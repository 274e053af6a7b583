"""Validation-only tuning of guidance strength (and schedule/gate) with a declared selection rule, and the lock
file that ``gaflow eval --split test`` runs.

Rule ``max-validation-success``: the config with the highest pooled validation success rate; ties go to the
*weaker* config (smaller strength), which is the less risky one to deploy. The chosen config is written with its
hash and the UTC time it was locked; every later test evaluation of a config from this sweep appends to
``test_history.jsonl`` beside it, so re-tuning after looking at test results is visible in the report.
"""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from pathlib import Path

from gaflow.evaluation.runner import Arm, EvalConfig, run_eval, summarize
from gaflow.guidance import GuidanceConfig
from gaflow.io import atomic_write_json, atomic_write_text
from gaflow.runtime.executor import Executor

RULE = "max-validation-success (ties: weaker strength)"


def grid_configs(base: dict, grid: dict[str, list]) -> list[dict]:
    """All combinations of ``grid`` values over ``base`` (validated as GuidanceConfig)."""
    keys = list(grid)
    out = []
    for values in itertools.product(*(grid[k] for k in keys)):
        cfg = {**base, **dict(zip(keys, values, strict=True))}
        out.append(GuidanceConfig.from_dict(cfg).to_dict())
    return out


def strength_of(cfg: dict) -> float:
    return cfg["relative"] if cfg.get("relative") is not None else cfg["scale"]


def run_sweep(base_eval: EvalConfig, configs: list[dict], out: Path, workers: int = 2, progress: bool = True,
              executor: Executor | None = None) -> dict:
    if base_eval.split == "test":
        from gaflow.evaluation.splits import SplitViolation

        raise SplitViolation("gaflow sweep selects hyperparameters: it may not run on the test split")
    configs = [GuidanceConfig.from_dict(c).to_dict() for c in configs]  # validate and fill defaults
    arms = [Arm("unguided")] + [Arm(f"cfg{i}", c) for i, c in enumerate(configs)]
    ev = EvalConfig(**{**base_eval.__dict__, "arms": arms})
    records = run_eval(ev, out, workers=workers, progress=progress, executor=executor)
    names = [a.name for a in arms]
    metrics = summarize(records, names)
    rows = []
    for i, c in enumerate(configs):
        s = metrics["pooled"][f"cfg{i}"]
        rows.append({"arm": f"cfg{i}", "config": c, "strength": strength_of(c), "rate": s["rate"], "ci95": s["ci95"],
                     "lift": s["lift"], "mcnemar_p": s["mcnemar_p"], "baseline_rate": metrics["pooled"]["unguided"]["rate"],
                     "ratio_median": s.get("guidance", {}).get("ratio_median")})
    best = max(rows, key=lambda r: (r["rate"], -r["strength"]))
    cfg = GuidanceConfig.from_dict(best["config"])
    locked = {"guidance": cfg.to_dict(), "hash": cfg.config_hash(), "locked_at": datetime.now(UTC).isoformat(),
              "rule": RULE, "split": base_eval.split, "seeds": base_eval.seeds, "tasks": base_eval.tasks,
              "policy": base_eval.policy, "critic": base_eval.critic, "env": base_eval.env, "candidates": rows}
    atomic_write_json(out / "locked.json", locked)
    return {"metrics": metrics, "rows": rows, "locked": locked}


def load_locked(path: Path) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"locked config {path} not found: run `gaflow sweep` on validation seeds first")
    try:
        locked = json.loads(path.read_text())
        cfg = GuidanceConfig.from_dict(locked["guidance"])
    except (json.JSONDecodeError, KeyError, ValueError, TypeError) as e:
        raise ValueError(f"{path} is not a gaflow lock file: {e}") from e
    if cfg.config_hash() != locked.get("hash"):
        raise ValueError(f"{path}: the guidance config was edited after it was locked (hash mismatch)")
    if locked.get("split") == "test":
        raise ValueError(f"{path} was tuned on the test split; refusing to use it")
    return locked


def record_test_use(lock_path: Path, locked: dict, run_dir: Path) -> dict:
    """Append this test evaluation to the sweep's history; report whether configs changed between test runs."""
    hist = lock_path.parent / "test_history.jsonl"
    entries = [json.loads(x) for x in hist.read_text().splitlines()] if hist.exists() else []
    entries.append({"hash": locked["hash"], "locked_at": locked["locked_at"], "run": str(run_dir),
                    "evaluated_at": datetime.now(UTC).isoformat()})
    atomic_write_text(hist, "".join(json.dumps(e) + "\n" for e in entries))
    hashes = sorted({e["hash"] for e in entries})
    return {"hash": locked["hash"], "locked_at": locked["locked_at"], "rule": locked["rule"], "split": locked["split"],
            "test_runs": len(entries), "test_history_hashes": hashes, "relocked_after_test": len(hashes) > 1}

"""Validation-only tuning of guidance strength (and schedule/gate) with a declared selection rule, and the lock
file that ``gaflow eval --split test`` runs.

Rule ``max-validation-success``: the config with the highest pooled validation success rate; ties go to the
*weaker* config (smaller strength), which is the less risky one to deploy. The chosen config is written to ``locked.json`` with
its hash, the UTC time, and everything it binds (policy and critic hashes, env, tasks, sampler settings, episode cap,
noise seed), sealed by a digest over the lock and the validation records beside it: ``gaflow eval`` refuses a lock
that was edited, hand-written, copied away from its sweep, or used for a different experiment. Test reads are
recorded in the test ledger (:mod:`gaflow.evaluation.ledger`), not beside the lock, so copying a lock cannot hide
its history.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from datetime import UTC, datetime
from pathlib import Path

from gaflow.evaluation.ledger import critic_identity, policy_identity
from gaflow.evaluation.runner import Arm, EvalConfig, result_path, run_eval, summarize
from gaflow.guidance import GuidanceConfig
from gaflow.io import atomic_write_json

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


def lock_binding(ev: EvalConfig) -> dict:
    """Everything a locked config is bound to besides the guidance config: a test run must match all of it."""
    return {"policy": ev.policy, "policy_id": policy_identity(ev.policy), "critic_id": critic_identity(ev.critic),
            "env": ev.env, "tasks": list(ev.tasks), "num_steps": ev.num_steps, "n_action_steps": ev.n_action_steps,
            "max_steps": ev.max_steps, "noise_seed": ev.noise_seed, "image_size": ev.image_size}


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _validation_digest(folder: Path, tasks: list[str], seeds: list[int]) -> str:
    """A digest of the sweep's validation records (the episode files beside the lock)."""
    h = hashlib.sha256()
    for t in tasks:
        for s in seeds:
            path = result_path(folder, t, s)
            if not path.exists():
                raise ValueError(f"{folder}: validation record {path.relative_to(folder)} is missing — a lock is "
                                 "valid only beside the sweep that wrote it")
            h.update(path.read_bytes())
    return h.hexdigest()


def _lock_digest(locked: dict) -> str:
    return _digest({k: v for k, v in locked.items() if k != "digest"})


def run_sweep(base_eval: EvalConfig, configs: list[dict], out: Path, workers: int = 2, progress: bool = True) -> dict:
    from gaflow.evaluation.splits import SplitViolation, split_for_env

    split = split_for_env(base_eval.env)
    wrong = sorted({split.which(s) or "no split" for s in base_eval.seeds} - {"validation"})
    if base_eval.split != "validation" or wrong:
        raise SplitViolation(
            "gaflow sweep selects hyperparameters: it runs on validation seeds only; "
            + (f"these seeds fall in {', '.join(wrong)}" if wrong else f"split {base_eval.split!r} was asked for"))
    configs = [GuidanceConfig.from_dict(c).to_dict() for c in configs]  # validate and fill defaults
    arms = [Arm("unguided")] + [Arm(f"cfg{i}", c) for i, c in enumerate(configs)]
    ev = EvalConfig(**{**base_eval.__dict__, "arms": arms})
    records = run_eval(ev, out, workers=workers, progress=progress)
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
    out = Path(out)
    critic_rel = os.path.relpath(base_eval.critic, out) if base_eval.critic else None
    locked = {"guidance": cfg.to_dict(), "hash": cfg.config_hash(), "locked_at": datetime.now(UTC).isoformat(),
              "rule": RULE, "split": "validation", "seeds": list(base_eval.seeds), "tasks": list(base_eval.tasks),
              "policy": base_eval.policy, "critic": critic_rel, "env": base_eval.env, "candidates": rows,
              "binding": lock_binding(base_eval),
              "validation_digest": _validation_digest(out, list(base_eval.tasks), list(base_eval.seeds))}
    locked["digest"] = _lock_digest(locked)
    atomic_write_json(out / "locked.json", locked)
    return {"metrics": metrics, "rows": rows, "locked": locked}


def load_locked(path: Path) -> dict:
    """Read a lock written by ``gaflow sweep`` and verify it: guidance hash, lock digest, and the validation
    records beside it. A hand-written, edited or copied-away lock is refused."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"locked config {path} not found: run `gaflow sweep` on validation seeds first")
    try:
        locked = json.loads(path.read_text())
        cfg = GuidanceConfig.from_dict(locked["guidance"])
        binding, digest = locked["binding"], locked["digest"]
    except (json.JSONDecodeError, KeyError, ValueError, TypeError) as e:
        raise ValueError(f"{path} is not a lock written by `gaflow sweep` (missing or bad field: {e}); locks from "
                         "older gaflow versions or written by hand are refused — re-run the sweep") from e
    if cfg.config_hash() != locked.get("hash"):
        raise ValueError(f"{path}: the guidance config was edited after it was locked (hash mismatch)")
    if locked.get("split") != "validation":
        raise ValueError(f"{path} was not tuned on the validation split; refusing to use it")
    if _lock_digest(locked) != digest:
        raise ValueError(f"{path}: the lock was edited after `gaflow sweep` wrote it (digest mismatch)")
    if _validation_digest(path.parent, binding["tasks"], locked["seeds"]) != locked["validation_digest"]:
        raise ValueError(f"{path}: the validation records beside the lock do not match the ones it was chosen on")
    return locked


def lock_critic(locked: dict, lock_path: Path) -> str | None:
    """The critic folder a lock was tuned with (stored relative to the lock's folder, so run folders can move)."""
    if locked.get("critic") is None:
        return None
    return str(Path(lock_path).parent / locked["critic"])


def check_lock_binds(locked: dict, ev: EvalConfig) -> None:
    """Refuse an evaluation that differs from what the lock was tuned with (policy, critic, env, tasks, sampler
    settings, episode cap, noise seed), naming every field that differs."""
    want, got = locked["binding"], lock_binding(ev)
    diffs = [k for k in want if k not in ("tasks", "policy") and want[k] != got[k]]
    extra = sorted(set(ev.tasks) - set(want["tasks"]))
    if extra:
        diffs.append(f"tasks (not tuned on {extra})")
    if diffs:
        detail = "; ".join(f"{k}: locked {want[k]!r}, asked {got[k]!r}" if k in want else k for k in diffs)
        raise ValueError(f"the locked config does not bind this evaluation — {detail}. A lock holds for the exact "
                         "experiment it was tuned on; run `gaflow sweep` for this one")


def lock_summary(locked: dict) -> dict:
    return {k: locked[k] for k in ("hash", "digest", "locked_at", "rule", "split")}

"""Validation-only tuning of guidance strength (and schedule/gate) with a declared selection rule, and the lock
file that ``gaflow eval --split test`` runs.

Rule ``paired-lcb`` (:data:`RULE`): a config is chosen only where validation shows it helps beyond noise. For
each config, its paired lift over unguided on the validation episodes, the one-sided p of the clustered sign-flip
test and a one-sided 95 % lower confidence bound (cluster bootstrap) — clusters are initial states, so repeats of
one initial state count once. Among configs whose lift is significant (p < 0.05), the largest bound wins (ties: the
weaker strength); if none is, **unguided** — "no config helps" is a legitimate lock, and test runs then report
unguided. The choice is made per task where the task's own validation episodes support a config, and pooled
otherwise. (The earlier rule, max-validation-success, chose coin flips: 13 vs 12
successes locked a strength that did not replicate on fresh seeds.) ``rule="fixed"`` locks the one given config
whatever its bound (used to bind a strength chosen elsewhere to another critic). The choice is written to ``locked.json`` with
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
from gaflow.runtime.executor import Executor

RULE = ("paired-lcb: among configs whose paired validation lift is significant (one-sided clustered sign-flip "
        "p < 0.05), the largest one-sided 95 % lower confidence bound (cluster bootstrap over initial states); "
        "none: unguided; per task where the task's own validation is significant, else pooled — unless the task's "
        "own validation shows significant harm from the pooled choice (one-sided p < 0.05): unguided there")
UNGUIDED = "unguided"  # the hash of a lock that chose no config
FIXED_RULE = "fixed: the one given config, bound to this critic and these tasks (not chosen on these episodes)"
LCB_CONFIDENCE = 0.90  # a two-sided 90 % interval's lower end is a one-sided 95 % bound
ALPHA = 0.05  # one-sided significance a config's validation lift needs


def paired_evidence(records: list[dict], arm: str, baseline: str = "unguided") -> dict:
    """Paired validation evidence for ``arm`` over ``baseline``: ``lift``; ``lcb``, a one-sided 95 % lower
    confidence bound (cluster bootstrap); ``p``, the one-sided p of the clustered sign-flip test (exact). Clusters
    are initial states (task, initial-state hash): repeats of one initial state count once."""
    import numpy as np

    from gaflow.evaluation.stats import cluster_bootstrap_ci, cluster_sign_flip_test

    if not records:
        return {"lift": float("nan"), "lcb": float("nan"), "p": 1.0, "p_harm": 1.0}
    base = np.array([float(r["arms"][baseline]["success"]) for r in records])
    got = np.array([float(r["arms"][arm]["success"]) for r in records])
    clusters = [f"{r['task']}/{r['arms'][baseline].get('init_state_sha', r['seed'])}" for r in records]
    if len(set(clusters)) < 2:  # one initial state: no estimate of the spread, no lower bound
        lo = float("-inf")
    else:
        lo, _ = cluster_bootstrap_ci(got - base, clusters, confidence=LCB_CONFIDENCE)
    test = cluster_sign_flip_test(base, got, clusters)
    lift = float((got - base).mean())
    p = test.p_value / 2 if lift > 0 else 1.0 - test.p_value / 2  # the null is symmetric under sign flips
    p_harm = test.p_value / 2 if lift < 0 else 1.0 - test.p_value / 2  # one-sided, for "the config hurts"
    return {"lift": lift, "lcb": float(lo), "p": float(min(1.0, p)), "p_harm": float(min(1.0, p_harm))}


def supported(evidence: dict, alpha: float = ALPHA) -> bool:
    """Validation supports a config when its lift is positive and significant (one-sided, clustered)."""
    return evidence["lift"] > 0 and evidence["p"] < alpha


def harmful(evidence: dict, alpha: float = ALPHA) -> bool:
    """Validation shows significant harm: a negative lift with one-sided clustered sign-flip p < ``alpha``."""
    return evidence["lift"] < 0 and evidence.get("p_harm", 1.0) < alpha


def choose_per_task(rows: list[dict], tasks: list[str]) -> tuple[dict | None, dict[str, dict | None]]:
    """The paired-lcb rule: the pooled choice (:func:`choose`), and per task the task's own supported choice, else
    the pooled one — unless the task's own validation shows that the pooled choice harms it (:func:`harmful`),
    then unguided there: a config that helps the other tasks is not forced on a task it measurably hurts."""
    pooled = choose(rows)
    per_task = {}
    for t in tasks:
        own = choose([{**r, "task_evidence": r["per_task"][t]} for r in rows], key="task_evidence")
        pick = own or pooled
        if pick is not None and own is None and harmful(pick["per_task"][t]):
            pick = None
        per_task[t] = pick["config"] if pick is not None else None
    return pooled, per_task


def choose(rows: list[dict], key: str | None = None) -> dict | None:
    """Among rows whose evidence (``row[key]``, or the row itself) is :func:`supported`, the one with the largest
    lower bound (ties: weaker strength); None (unguided) when none is."""
    ev = (lambda r: r[key]) if key else (lambda r: r)  # noqa: E731
    ok = [r for r in rows if supported(ev(r))]
    return max(ok, key=lambda r: (ev(r)["lcb"], -r["strength"])) if ok else None


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


def run_sweep(base_eval: EvalConfig, configs: list[dict], out: Path, workers: int = 2, progress: bool = True,
              rule: str = "paired-lcb", executor: Executor | None = None) -> dict:
    """Run every config and unguided on the validation episodes (paired), choose by ``rule`` and write the lock."""
    if rule not in ("paired-lcb", "fixed"):
        raise ValueError(f"rule must be 'paired-lcb' or 'fixed', got {rule!r}")
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
    records = run_eval(ev, out, workers=workers, progress=progress, executor=executor)
    names = [a.name for a in arms]
    metrics = summarize(records, names)
    rows = []
    for i, c in enumerate(configs):
        s = metrics["pooled"][f"cfg{i}"]
        ev = paired_evidence(records, f"cfg{i}")
        per_task = {t: paired_evidence([r for r in records if r["task"] == t], f"cfg{i}") for t in base_eval.tasks}
        rows.append({"arm": f"cfg{i}", "config": c, "strength": strength_of(c), "rate": s["rate"], "ci95": s["ci95"],
                     **ev, "per_task": per_task, "mcnemar_p": s["mcnemar_p"],
                     "baseline_rate": metrics["pooled"]["unguided"]["rate"],
                     "ratio_median": s.get("guidance", {}).get("ratio_median")})
    if rule == "fixed":
        if len(rows) != 1:
            raise ValueError("rule='fixed' locks exactly one given config")
        pooled, per_task_choice = rows[0], {t: rows[0]["config"] for t in base_eval.tasks}
    else:
        pooled, per_task_choice = choose_per_task(rows, list(base_eval.tasks))
    cfg = GuidanceConfig.from_dict(pooled["config"]) if pooled is not None else None
    out = Path(out)
    critic_rel = os.path.relpath(base_eval.critic, out) if base_eval.critic else None
    locked = {"guidance": cfg.to_dict() if cfg else None, "hash": cfg.config_hash() if cfg else UNGUIDED,
              "per_task": per_task_choice, "locked_at": datetime.now(UTC).isoformat(),
              "rule": FIXED_RULE if rule == "fixed" else RULE, "split": "validation", "seeds": list(base_eval.seeds), "tasks": list(base_eval.tasks),
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
        cfg = GuidanceConfig.from_dict(locked["guidance"]) if locked["guidance"] is not None else None
        for c in locked["per_task"].values():
            if c is not None:
                GuidanceConfig.from_dict(c)
        binding, digest = locked["binding"], locked["digest"]
    except (json.JSONDecodeError, KeyError, ValueError, TypeError) as e:
        raise ValueError(f"{path} is not a lock written by `gaflow sweep` (missing or bad field: {e}); locks from "
                         "older gaflow versions or written by hand are refused — re-run the sweep") from e
    if (cfg.config_hash() if cfg else UNGUIDED) != locked.get("hash"):
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
    return {k: locked[k] for k in ("hash", "digest", "locked_at", "rule", "split", "guidance", "per_task")}


def describe_lock(locked: dict) -> str:
    """One line: what the lock runs on each task (a strength, or unguided where no config helped)."""
    def short(cfg: dict | None) -> str:
        if cfg is None:
            return "unguided"
        return f"ρ={cfg['relative']}" if cfg.get("relative") is not None else f"scale={cfg['scale']}"

    per_task = locked.get("per_task") or {}
    choices = {short(c) for c in per_task.values()}
    if len(choices) <= 1:
        what = short(locked["guidance"]) if not per_task else choices.pop()
        return f"{what} on every task" + (" (no config's validation lift was significant)" if what == "unguided"
                                          else "")
    return ", ".join(f"{t}: {short(c)}" for t, c in per_task.items())

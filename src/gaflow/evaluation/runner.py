"""Paired evaluation: every arm runs the same ``(task, seed)`` episodes — identical initial state (the env's
deterministic seed map) and identical initial flow noise per chunk (the rollout's per-episode noise stream) where
the arm draws the same amount of noise (single-candidate arms).

Per episode, one worker runs all arms back to back (one :class:`~gaflow.runtime.GuidedRuntime` per arm over the
same loaded policy and critic) and returns the record; the driver writes one JSON file atomically
(``<run>/episodes/<task>/<seed>.json``); re-running the same command resumes. Each arm's record keeps the
environment state it started from, so pairing can be checked after the fact.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gaflow.evaluation.ledger import finish_read, record_read, test_seeds_of
from gaflow.evaluation.stats import (
    CLUSTERED_METHOD,
    UNCLUSTERED_METHOD,
    cluster_bootstrap_ci,
    cluster_sign_flip_test,
    mcnemar_exact,
    paired_bootstrap_ci,
    wilson_interval,
)
from gaflow.guidance.presets import preset_guidance
from gaflow.io import atomic_write_json, job_folder
from gaflow.runtime import RuntimeSpec, needs_critic
from gaflow.runtime.batched import run_episodes_batched
from gaflow.runtime.build import release, runtime_and_env
from gaflow.runtime.executor import Executor, chunked, make_executor, run_jobs, torch_threads


@dataclass
class Arm:
    name: str
    guidance: dict | None = None  # GuidanceConfig as a dict; None = the unguided base policy
    num_candidates: int = 1
    select: str = "first"  # first | best (best-of-N by the critic)
    per_task: dict[str, dict | None] | None = None  # a lock's per-task choice; overrides `guidance` for its tasks

    def guidance_for(self, task: str) -> dict | None:
        """The guidance config this arm runs on ``task`` (None: unguided there)."""
        if self.per_task is not None and task in self.per_task:
            return self.per_task[task]
        return self.guidance


def standard_arms(guided: dict | None, names: list[str], per_task: dict[str, dict | None] | None = None,
                  from_lock: bool = False) -> list[Arm]:
    """Arms by name: unguided, guided, zero, random, ungated, best-of-N, guided+best-of-N, and ``preset:<name>`` —
    the guided config with its objectives replaced by a named preset (:mod:`gaflow.guidance.presets`: ``gentle``,
    ``fast``), so behaviour presets run on the same episodes as the critic alone. ``ungated`` is the guided config
    with every gate off (trust gate, ensemble gate, fallback): what the gates bought, on the same episodes.

    ``per_task`` (from a lock): the config each task runs in the guided arms, ``None`` where the lock chose
    unguided for that task; ``from_lock``: a lock may choose unguided everywhere (``guided`` None) — the guided
    arms then run unguided, which the report says."""
    def control(cfg: dict | None, name: str) -> dict | None:
        return None if cfg is None else {**cfg, "control": name, "control_seed": 12345}

    def ungate(cfg: dict | None) -> dict | None:
        return None if cfg is None else {**cfg, "trust_scale": None, "gate_k": 0.0, "fallback_std": None}

    arms = []
    for name in names:
        if name == "unguided":
            arms.append(Arm("unguided"))
            continue
        if guided is None and not from_lock:
            raise ValueError(f"arm {name!r} needs a guidance config (--locked or --guidance)")
        tasks = {t: (dict(c) if c is not None else None) for t, c in per_task.items()} if per_task else None
        if name == "guided":
            arms.append(Arm("guided", dict(guided) if guided else None, per_task=tasks))
        elif name in ("zero", "random"):
            arms.append(Arm(name, control(guided, name),
                            per_task={t: control(c, name) for t, c in tasks.items()} if tasks else None))
        elif name == "ungated":
            arms.append(Arm(name, ungate(guided), per_task={t: ungate(c) for t, c in tasks.items()} if tasks else None))
        elif name.startswith("best-of-"):
            arms.append(Arm(name, {"estimator": "none"}, int(name.rsplit("-", 1)[1]), "best"))
        elif name.startswith("guided+best-of-"):
            arms.append(Arm(name, dict(guided) if guided else None, int(name.rsplit("-", 1)[1]), "best",
                            per_task=tasks))
        elif name.startswith("preset:"):
            if guided is None:
                raise ValueError(f"arm {name!r} needs a guidance config to build its preset on")
            arms.append(Arm(name, preset_guidance(name.removeprefix("preset:"), guided)))
        else:
            raise ValueError(f"unknown arm {name!r}: unguided, guided, zero, random, ungated, best-of-N, "
                             "guided+best-of-N, preset:<name>")
    if not arms or arms[0].name != "unguided":
        raise ValueError("the first arm must be 'unguided' (the paired baseline)")
    return arms


@dataclass
class EvalConfig:
    policy: str
    env: str
    tasks: list[str]
    seeds: list[int]
    split: str  # the named seed split these seeds come from (recorded with every result)
    arms: list[Arm] = field(default_factory=lambda: [Arm("unguided")])
    critic: str | None = None
    n_action_steps: int | None = None
    num_steps: int | None = None
    noise_seed: int = 0
    image_size: int | None = None
    max_steps: int | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> EvalConfig:
        d = dict(d)
        d["arms"] = [Arm(**a) for a in d["arms"]]
        return cls(**d)


def result_path(out: Path, task: str, seed: int) -> Path:
    return out / "episodes" / str(task) / f"{int(seed)}.json"


def runtime_spec(cfg: EvalConfig) -> RuntimeSpec:
    """The unguided base runtime of an evaluation; each arm is this runtime under the arm's guidance."""
    configs = [(g, a.select) for a in cfg.arms for g in [a.guidance, *(a.per_task or {}).values()]]
    if any(needs_critic(g, select) for g, select in configs) and cfg.critic is None:
        raise ValueError("guided arms need a critic (--critic)")
    return RuntimeSpec(policy=cfg.policy, critic=cfg.critic, num_steps=cfg.num_steps, noise_seed=cfg.noise_seed,
                       n_action_steps=cfg.n_action_steps)


def evaluate_episodes(cfg_dict: dict, jobs: list[tuple[str, int]]) -> list[dict]:
    """Worker: run every arm on each ``(task, seed)`` episode back to back and *return* the records."""
    cfg = EvalConfig.from_dict(cfg_dict)
    spec = runtime_spec(cfg)
    results = []
    with torch_threads(1):
        for task, seed in jobs:
            base, env = runtime_and_env(spec, cfg.env, task, image_size=cfg.image_size, max_steps=cfg.max_steps,
                                        record_images=False)
            record = {"task": task, "seed": seed, "split": cfg.split, "arms": {}}
            for arm in cfg.arms:
                runtime = base.with_guidance(arm.guidance_for(task), num_candidates=arm.num_candidates,
                                             select=arm.select)
                t0 = time.perf_counter()
                (rec,) = run_episodes_batched([env], runtime, [seed])  # renders once per chunk, not per step
                init = env.frames[0]["env_state"] if env.frames else np.zeros(0, np.float32)
                diag = [c.guidance for c in rec.chunks if c.guidance is not None]
                record["arms"][arm.name] = {
                    "success": rec.success, "length": rec.length, "first_success_step": rec.first_success_step,
                    "chunk_latency_ms": 1e3 * rec.mean_latency_s, "wall_s": time.perf_counter() - t0,
                    "init_state": [float(x) for x in init],
                    "init_state_sha": hashlib.sha256(np.asarray(init, np.float32).tobytes()).hexdigest()[:16],
                    "guidance": _mean_diag(diag) if diag else None,
                }
            results.append(record)
    return results


def _finite_mean(values) -> float:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def _mean_diag(diags: list[dict]) -> dict:
    out = {}
    for key in ("ratio_mean", "ratio_median", "gate_mean", "raw_grad_norm_mean", "q_std_mean", "cosine_mean"):
        out[key] = _finite_mean([d.get(key) for d in diags])
    for key in ("ratio_by_step", "gate_by_step"):
        arr = np.array([d[key] for d in diags if key in d], dtype=float)
        out[key] = [_finite_mean(col) for col in arr.T] if arr.size and np.isfinite(arr).any() else []
    extra = sorted({k for d in diags for k in d if k.startswith(("term_", "keep_out_violations_"))})
    for key in extra:  # per objective term (value, gradient norm, share) and projection reports, when present
        out[key] = _finite_mean([d.get(key) for d in diags])
    out["nonfinite"] = int(sum(d.get("nonfinite", 0) for d in diags))
    out["fallback"] = int(sum(d.get("fallback", 0) for d in diags))
    return out


def run_eval(cfg: EvalConfig, out: str | os.PathLike, workers: int = 2, progress: bool = True,
             executor: Executor | None = None, *, force_reread: bool = False, lock_hash: str | None = None,
             command: str = "eval") -> list[dict]:
    """Run (or resume) a paired evaluation; returns per-episode records in (task, seed) order.

    Test seeds among ``cfg.seeds`` (checked by value against the env's split) are recorded in the test ledger
    before anything runs; a second read of test episodes another run already read is refused unless
    ``force_reread`` (:mod:`gaflow.evaluation.ledger`). The read's header is left in ``<out>/test_read_header.json``.
    """
    if not cfg.tasks or not cfg.seeds:
        raise ValueError("eval needs at least one task and one seed")
    runtime_spec(cfg)  # fail before any work on a config that cannot run
    out = job_folder(out, cfg.to_dict(), "eval_config.json", paths=("policy", "critic"))
    header = record_read(out, command=command, policy=cfg.policy, env=cfg.env,
                         seeds_by_task={t: list(cfg.seeds) for t in cfg.tasks}, lock_hash=lock_hash,
                         critic=cfg.critic, force=force_reread)
    todo = [(t, s) for t in cfg.tasks for s in cfg.seeds if not result_path(out, t, s).exists()]
    total = len(cfg.tasks) * len(cfg.seeds)
    wins = {a.name: 0 for a in cfg.arms}

    def write(records: list[dict]) -> str:
        for r in records:
            atomic_write_json(result_path(out, r["task"], r["seed"]), r)
            for name, a in r["arms"].items():
                wins[name] += int(a["success"])
        return " ".join(f"{k} {v}" for k, v in wins.items())

    jobs = [(cfg.to_dict(), b) for b in chunked(todo, 2)]
    try:
        run_jobs(executor or make_executor(workers), evaluate_episodes, jobs, label=f"eval [{cfg.split}]",
                 total=total, completed=total - len(todo), progress=progress, on_result=write)
    finally:
        release()
    records = [json.loads(result_path(out, t, s).read_text()) for t in cfg.tasks for s in cfg.seeds]
    if header is not None and todo:  # results of the test episodes, for later reads to quote
        test = set(test_seeds_of(cfg.env, cfg.seeds))
        finish_read(header, {t: [r for r in records if r["task"] == t and r["seed"] in test] for t in cfg.tasks})
    return records


def _arm_stats(records: list[dict], arm: str, baseline: str) -> dict:
    succ = np.array([r["arms"][arm]["success"] for r in records], bool)
    base = np.array([r["arms"][baseline]["success"] for r in records], bool)
    n, k = len(succ), int(succ.sum())
    lo, hi = wilson_interval(k, n)
    out = {"n": n, "successes": k, "rate": k / n if n else float("nan"), "ci95": [lo, hi],
           "mean_length": float(np.mean([r["arms"][arm]["length"] for r in records])),
           "chunk_latency_ms": float(np.nanmean([r["arms"][arm]["chunk_latency_ms"] for r in records]))}
    if arm != baseline:
        m = mcnemar_exact(base, succ)
        out.update({"lift": out["rate"] - base.mean(), "lift_ci95": list(paired_bootstrap_ci(base, succ)),
                    "fail_to_success": m.fail_to_success, "success_to_fail": m.success_to_fail,
                    "mcnemar_p": m.p_value})
    # Repeated initial states (LIBERO: 15 init states × 7 noise repeats) make episodes dependent; the clustered
    # numbers are the ones to read then. With every initial state seen once they are the unclustered ones.
    # A cluster: one task, one initial state (the baseline's; unpaired episodes are flagged by summarize).
    clusters = [f"{r['task']}/{r['arms'][baseline]['init_state_sha']}" for r in records]
    n_clusters = len(set(clusters))
    if n_clusters == n:
        clustered = {"clusters": n_clusters, "ci95": out["ci95"], "method": UNCLUSTERED_METHOD}
        if arm != baseline:
            clustered.update({"lift_ci95": out["lift_ci95"], "p_value": out["mcnemar_p"]})
        out["leads_with"] = "unclustered"
    else:
        clustered = {"clusters": n_clusters, "ci95": list(cluster_bootstrap_ci(succ, clusters))}
        if arm != baseline:
            test = cluster_sign_flip_test(base, succ, clusters)
            clustered.update({"lift_ci95": list(cluster_bootstrap_ci(succ.astype(float) - base, clusters)),
                              "p_value": test.p_value})
            clustered["method"] = f"{CLUSTERED_METHOD} ({test.method})"
        else:
            clustered["method"] = CLUSTERED_METHOD
        out["leads_with"] = "clustered"
    out["clustered"] = clustered
    g = [r["arms"][arm]["guidance"] for r in records if r["arms"][arm].get("guidance")]
    if g:
        out["guidance"] = {k: _finite_mean([x[k] for x in g]) for k in ("ratio_mean", "ratio_median", "gate_mean")}
        steps = [x["ratio_by_step"] for x in g if x.get("ratio_by_step")]
        gates = [x["gate_by_step"] for x in g if x.get("gate_by_step")]
        out["guidance"]["ratio_by_step"] = [_finite_mean(c) for c in np.array(steps, float).T] if steps else []
        out["guidance"]["gate_by_step"] = [_finite_mean(c) for c in np.array(gates, float).T] if gates else []
        out["guidance"]["nonfinite"] = int(sum(x["nonfinite"] for x in g))
        out["guidance"]["fallback"] = int(sum(x["fallback"] for x in g))
    return out


def summarize(records: list[dict], arms: list[str], baseline: str = "unguided") -> dict:
    """Per task and pooled: rates with Wilson CIs; paired lift, flips and exact McNemar vs the baseline; and the
    same clustered by initial state (``"clustered"``; ``"leads_with"`` says which of the two to read)."""
    tasks = sorted({r["task"] for r in records}, key=lambda t: [r["task"] for r in records].index(t))
    per_task = {t: {a: _arm_stats([r for r in records if r["task"] == t], a, baseline) for a in arms} for t in tasks}
    pooled = {a: _arm_stats(records, a, baseline) for a in arms}
    mismatched = [(r["task"], r["seed"]) for r in records
                  if len({r["arms"][a]["init_state_sha"] for a in arms}) != 1]
    return {"per_task": per_task, "pooled": pooled, "baseline": baseline, "arms": arms,
            "unpaired_episodes": mismatched}

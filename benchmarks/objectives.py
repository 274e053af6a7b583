"""Objectives beside the critic on MetaWorld (issue #17): paired arms, executed-motion metrics, per-term latency.

    # paired episodes: every arm runs the same (task, seed) episodes with the same initial flow noise
    python benchmarks/objectives.py episodes --critic CRITIC --task hand-insert --seeds 20000-20029 \\
        --zone '{"type": "sphere", "center": [0.0, 0.68, 0.15], "radius": 0.05}' --out runs/obj_val.json
    # the locked test split: the critic-only config of a `gaflow sweep` lock, the presets as shipped, and the read
    # recorded in the test ledger (test seeds are refused without --locked)
    python benchmarks/objectives.py episodes --locked SWEEP/locked.json --seeds 30100-30139 --zone '...' --out ...
    python benchmarks/objectives.py table runs/obj_val.json          # markdown tables with paired statistics
    python benchmarks/objectives.py latency --critic CRITIC --task hand-insert --zone '...'   # ms per chunk

Arms (``--arms``, comma-separated, unguided first): ``unguided``; ``critic`` (relative strength ρ, the critic
alone); ``gentle`` / ``fast`` (the named presets on the same ρ); ``keep_out`` (critic + soft keep-out term),
``keep_out+project`` (the same, with the hard projection) and ``project`` (unguided sampling, projection only).
``--weights`` overrides preset / keep-out weights for tuning on validation seeds (refused with ``--locked``), e.g.
``'{"smoothness": 2.0, "effort": 0.5, "keep_out": 3000}'``.

Per episode and arm (env units, what the env executed): success, length, mean ‖Δ³a‖ (jerk of the executed action
sequence, all 4 dims, after the env's clip), mean ‖Δ²a‖, mean hand speed (m per step), and the number of env steps
whose hand position is strictly inside the keep-out zone; per chunk, the projection's predicted-path violation
counts before/after.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from gaflow.evaluation.ledger import finish_read, record_read, test_seeds_of
from gaflow.evaluation.splits import resolve_seeds
from gaflow.evaluation.stats import mcnemar_exact, wilson_interval
from gaflow.evaluation.sweep import load_locked, lock_critic
from gaflow.guidance import preset_guidance
from gaflow.guidance.terms_space import parse_zone
from gaflow.io import atomic_write_json
from gaflow.runtime import RuntimeSpec, run_episode
from gaflow.runtime.build import runtime_and_env
from gaflow.runtime.executor import make_executor, run_jobs, torch_threads

RHO = 0.3  # the relative strength validation-tuned for hand-insert in BENCHMARKS.md §7 (critic-only arm)
ARMS = ("unguided", "critic", "gentle", "fast", "keep_out", "keep_out+project", "project")


def arm_configs(names: list[str], zone: dict | None, base: dict, weights: dict) -> dict[str, dict | None]:
    """Each arm's guidance config; ``base`` is the critic-only config (a lock's, or ``{"relative": ρ}``)."""
    out: dict[str, dict | None] = {}
    for name in names:
        if name == "unguided":
            out[name] = None
        elif name == "critic":
            out[name] = dict(base)
        elif name in ("gentle", "fast"):
            cfg = preset_guidance(name, base)
            for e in cfg["objectives"]:
                e["weight"] = float(weights.get(e["name"], e["weight"]))
                e.update(weights.get(f"{e['name']}_params", {}))
            out[name] = cfg
        elif name in ("keep_out", "keep_out+project", "project"):
            if zone is None:
                raise SystemExit(f"arm {name!r} needs --zone")
            # weight 3000 and a 1 cm margin: chosen on validation seeds 20100–20119 (30000 did no better: under a
            # relative strength the step's size is fixed, and the term already takes all of it near the zone)
            term = {"name": "keep_out", "weight": float(weights.get("keep_out", 3000.0)), "zones": [zone],
                    "margin": float(weights.get("margin", 0.01)), "project": name != "keep_out"}
            if name == "project":
                out[name] = {"estimator": "none", "objectives": [{**term, "weight": 0.0}]}
            else:
                out[name] = {**base, "objectives": [{"name": "critic", "weight": 1.0}, term]}
        else:
            raise SystemExit(f"unknown arm {name!r}; choose from {', '.join(ARMS)}")
    return out


class Tape:
    """Wraps an env; keeps each executed action (after the env's clip) and the hand position after it."""

    def __init__(self, env):
        self.env, self.task = env, getattr(env, "task", "")
        self.action_path = getattr(env, "action_path", None)
        self.actions: list[np.ndarray] = []
        self.positions: list[np.ndarray] = []

    def reset(self, seed):
        self.actions, self.positions = [], []
        obs = self.env.reset(seed)
        self.start = self.action_path.position(obs)
        return obs

    def step(self, action):
        obs, success, done, info = self.env.step(action)
        self.actions.append(np.clip(np.asarray(action, np.float64), -1.0, 1.0))
        self.positions.append(self.action_path.position(obs))
        return obs, success, done, info


def motion_metrics(actions: np.ndarray, positions: np.ndarray, start: np.ndarray, zone) -> dict:
    def mean_norm(x):
        return float(np.linalg.norm(x, axis=-1).mean()) if len(x) else float("nan")

    out = {"jerk": mean_norm(np.diff(actions, 3, axis=0)), "accel": mean_norm(np.diff(actions, 2, axis=0)),
           "jerk_xyz": mean_norm(np.diff(actions[:, :3], 3, axis=0)),
           "hand_speed": mean_norm(np.diff(np.vstack([start, positions]), axis=0))}
    if zone is not None:
        sd = zone.signed_distance(torch.from_numpy(positions))
        out["violations"] = int((sd < 0).sum())
        out["min_distance"] = float(sd.min())
    return out


def run_seeds(spec_dict: dict, arms: dict, task: str, seeds: list[int], zone_spec: dict | None) -> list[dict]:
    """Worker: every arm on each seed, back to back (one loaded policy and critic)."""
    zone = parse_zone(zone_spec) if zone_spec is not None else None
    results = []
    with torch_threads(1):
        for seed in seeds:
            base, env = runtime_and_env(RuntimeSpec(**spec_dict), "metaworld", task, record_images=False)
            tape = Tape(env.env)
            rec = {"task": task, "seed": seed, "arms": {}}
            for name, guidance in arms.items():
                runtime = base.with_guidance(guidance)
                t0 = time.perf_counter()
                ep = run_episode(tape, runtime, seed=seed)
                m = motion_metrics(np.array(tape.actions), np.array(tape.positions), tape.start, zone)
                diags = [c.guidance or {} for c in ep.chunks]
                m.update(success=ep.success, length=ep.length, wall_s=time.perf_counter() - t0,
                         chunk_latency_ms=1e3 * ep.mean_latency_s,
                         path=np.round(np.array(tape.positions)[::4], 4).tolist())
                for key in ("keep_out_violations_before", "keep_out_violations_after", "projected_steps"):
                    if any(key in d for d in diags):
                        m[f"predicted_{key}"] = int(sum(d.get(key, 0) for d in diags))
                for key in sorted({k for d in diags for k in d if k.startswith("term_")}):
                    m[key] = float(np.nanmean([d.get(key, np.nan) for d in diags]))
                rec["arms"][name] = m
            results.append(rec)
    return results


def cmd_episodes(a) -> None:
    out = Path(a.out)
    lock, base, critic = None, {"relative": a.rho}, a.critic
    if a.locked:  # test seeds: the lock's critic-only config, and a read recorded in the test ledger
        lock = load_locked(Path(a.locked))
        base, critic = dict(lock["guidance"]), critic or lock_critic(lock, Path(a.locked))
        if lock["binding"]["policy"] != a.policy or a.task not in lock["binding"]["tasks"]:
            raise SystemExit(f"{a.locked} was tuned for {lock['binding']['policy']} on {lock['binding']['tasks']}")
    if critic is None:
        raise SystemExit("--critic is needed (or --locked, whose critic is used)")
    seeds, split = resolve_seeds(a.seeds, purpose="evaluate" if lock else "tune")  # test seeds only with a lock
    zone = json.loads(a.zone) if a.zone else None
    if zone is not None:
        parse_zone(zone)
    arms = arm_configs(a.arms.split(","), zone, base, json.loads(a.weights))
    if lock is not None and a.weights != "{}":
        raise SystemExit("--weights is for tuning on validation seeds; a locked run uses the presets as shipped")
    spec = RuntimeSpec(policy=a.policy, critic=critic, noise_seed=a.noise_seed).to_dict()
    header = record_read(Path(f"{out}.read"), command="benchmarks/objectives.py", policy=a.policy, env="metaworld",
                         seeds_by_task={a.task: seeds}, lock_hash=lock["hash"] if lock else None, critic=critic,
                         force=a.force_reread)
    done = json.loads(out.read_text()) if out.exists() else {"records": []}
    if done.get("arms", arms) != arms or done.get("task", a.task) != a.task:
        raise SystemExit(f"{out} holds another experiment (arms or task differ); choose another --out")
    have = {r["seed"] for r in done["records"]}
    todo = [s for s in seeds if s not in have]
    state = {"task": a.task, "split": split, "base": base, "lock": lock["hash"] if lock else None, "zone": zone,
             "arms": arms, "policy": a.policy, "critic": critic, "test_read": header, "records": done["records"]}

    def write(records):
        state["records"] = sorted(state["records"] + records, key=lambda r: r["seed"])
        atomic_write_json(out, state)
        return ""

    jobs = [(spec, arms, a.task, [s], zone) for s in todo]
    run_jobs(make_executor(a.workers), run_seeds, jobs, label=f"objectives [{split}]", total=len(seeds),
             completed=len(seeds) - len(todo), on_result=write)
    if header is not None and todo:
        finish_read(header, {a.task: [r for r in state["records"] if r["seed"] in set(test_seeds_of("metaworld",
                                                                                                      seeds))]})
    print(f"{len(state['records'])} episodes → {out}")


def _ratio_ci(base: np.ndarray, arm: np.ndarray, n: int = 5000, seed: int = 0) -> tuple[float, float, float]:
    """mean(arm)/mean(base) − 1 with a paired bootstrap 95 % CI (episodes resampled together)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(base), (n, len(base)))
    boots = arm[idx].mean(1) / base[idx].mean(1) - 1
    return float(arm.mean() / base.mean() - 1), *np.percentile(boots, [2.5, 97.5]).tolist()


def cmd_table(a) -> None:
    state = json.loads(Path(a.results).read_text())
    recs = state["records"]
    names = list(state["arms"])
    n = len(recs)
    col = lambda arm, k: np.array([r["arms"][arm].get(k, np.nan) for r in recs], float)  # noqa: E731
    print(f"task {state['task']}, split {state['split']}, seeds {recs[0]['seed']}–{recs[-1]['seed']}, n = {n} "
          f"per arm, critic-only config {json.dumps(state['base'])} (lock {state['lock']}), "
          f"zone {json.dumps(state['zone'])}\n")
    print("| arm | success [95 % Wilson] | vs unguided f→s / s→f, p | vs critic f→s / s→f, p | jerk ‖Δ³a‖ "
          "| Δ jerk vs unguided [95 % CI] | ‖Δ²a‖ | hand speed mm/step | zone steps (episodes) | Δ violations "
          "vs unguided | predicted before → after | ms/chunk |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    base_s, base_j = col("unguided", "success").astype(bool), col("unguided", "jerk")
    base_v = col("unguided", "violations")
    for arm in names:
        s = col(arm, "success").astype(bool)
        k = int(s.sum())
        lo, hi = wilson_interval(k, n)
        vs = []
        for ref in ("unguided", "critic"):
            if arm == ref or ref not in names:
                vs.append("—")
                continue
            m = mcnemar_exact(col(ref, "success").astype(bool), s)
            vs.append(f"{m.fail_to_success} / {m.success_to_fail}, {m.p_value:.2g}")
        j = col(arm, "jerk")
        dj = "—" if arm == "unguided" else "{:+.0%} [{:+.0%}, {:+.0%}]".format(*_ratio_ci(base_j, j))
        v = col(arm, "violations")
        viol = "—" if np.isnan(v).all() else f"{int(np.nansum(v))} ({int((v > 0).sum())})"
        dv = "—" if arm == "unguided" or np.isnan(v).all() or base_v.sum() == 0 else \
            f"{np.nansum(v) / np.nansum(base_v) - 1:+.0%}"
        pb, pa = col(arm, "predicted_keep_out_violations_before"), col(arm, "predicted_keep_out_violations_after")
        pred = "—" if np.isnan(pb).all() else f"{int(np.nansum(pb))} → {int(np.nansum(pa))}"
        print(f"| {arm} | {k}/{n} = {k / n:.0%} [{lo:.0%}, {hi:.0%}] | {vs[0]} | {vs[1]} | {np.mean(j):.3f} | {dj} "
              f"| {np.mean(col(arm, 'accel')):.3f} | {1e3 * np.mean(col(arm, 'hand_speed')):.2f} | {viol} | {dv} "
              f"| {pred} | {np.median(col(arm, 'chunk_latency_ms')):.1f} |")
    shares = {arm: {k: round(float(np.nanmean(col(arm, k))), 3) for k in recs[0]["arms"][arm]
                    if k.startswith("term_") and k.endswith("_share_mean")} for arm in names}
    print("\nper-term share of the applied guidance (mean over chunks and episodes):",
          json.dumps({k: v for k, v in shares.items() if v}))
    del base_s


def cmd_latency(a) -> None:
    """Median ms per chunk of each single term (weight 1, ρ fixed) beside the critic's, on real observations."""
    torch.set_num_threads(a.threads)
    zone = json.loads(a.zone)
    spec = RuntimeSpec(policy=a.policy, critic=a.critic)
    base, env = runtime_and_env(spec, "metaworld", a.task, record_images=False)
    obs = env.reset(20000)
    path = env.action_path
    from gaflow.guidance.context import episode_context

    executed = [torch.zeros(base.policy.spec.action_dim)] * 3
    ctx = episode_context(obs, path, executed)
    terms = {
        "unguided": None,
        "critic": {"relative": RHO},
        "smoothness": {"relative": RHO, "objectives": [{"name": "smoothness"}]},
        "effort": {"relative": RHO, "objectives": [{"name": "effort"}]},
        "speed": {"relative": RHO, "objectives": [{"name": "speed"}]},
        "keep_out": {"relative": RHO, "objectives": [{"name": "keep_out", "zones": [zone]}]},
        "bounds": {"relative": RHO, "objectives": [{"name": "bounds", "low": [-0.5] * 4, "high": [0.5] * 4}]},
        "critic+smoothness+effort (gentle)": preset_guidance("gentle", {"relative": RHO}),
        "projection only (keep_out)": {"estimator": "none", "objectives": [
            {"name": "keep_out", "weight": 0.0, "zones": [zone], "project": True}]},
        "critic + keep_out + projection": {"relative": RHO, "objectives": [
            {"name": "critic"}, {"name": "keep_out", "weight": 3000.0, "zones": [zone], "project": True}]},
    }
    runtimes = {k: base.with_guidance(v) for k, v in terms.items()}
    times: dict[str, list[float]] = {k: [] for k in terms}
    for _ in range(a.reps):  # round-robin so load changes hit every arm alike
        for k, rt in runtimes.items():
            rt.start_episode(0)
            kw = {"objective_context": ctx} if rt.wants_objective_context else {}
            t0 = time.perf_counter()
            rt.infer(obs, with_features=False, **kw)
            times[k].append(1e3 * (time.perf_counter() - t0))
    unguided = statistics.median(times["unguided"])
    print(f"| objective (ρ = {RHO}, {a.reps} reps, {a.threads} thread) | ms / chunk (median) | × unguided |")
    print("|---|---|---|")
    for k, v in times.items():
        print(f"| {k} | {statistics.median(v):.1f} | {statistics.median(v) / unguided:.2f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("episodes")
    e.add_argument("--policy", default="compact:builtin")
    e.add_argument("--critic", default=None, help="critic folder (default: the lock's)")
    e.add_argument("--locked", default=None, help="locked.json of `gaflow sweep`: required for test seeds")
    e.add_argument("--force-reread", action="store_true", help="read test episodes an earlier run already read")
    e.add_argument("--task", default="hand-insert")
    e.add_argument("--seeds", default="validation:30")
    e.add_argument("--arms", default=",".join(ARMS))
    e.add_argument("--zone", default=None, help="a keep-out zone as JSON (env units)")
    e.add_argument("--weights", default="{}", help="JSON overrides of term weights (tuning on validation seeds)")
    e.add_argument("--rho", type=float, default=RHO)
    e.add_argument("--noise-seed", type=int, default=0)
    e.add_argument("--workers", type=int, default=2)
    e.add_argument("--out", required=True)
    t = sub.add_parser("table")
    t.add_argument("results")
    la = sub.add_parser("latency")
    la.add_argument("--policy", default="compact:builtin")
    la.add_argument("--critic", required=True)
    la.add_argument("--task", default="hand-insert")
    la.add_argument("--zone", required=True)
    la.add_argument("--reps", type=int, default=30)
    la.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(1)
    {"episodes": cmd_episodes, "table": cmd_table, "latency": cmd_latency}[a.cmd](a)


if __name__ == "__main__":
    main()

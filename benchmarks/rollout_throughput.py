"""Rollout throughput: the rollout harness vs a bare env loop, paired evaluation on the local pool vs Ray, and
episodes/s vs Ray workers — every ratio measured in one run (BENCHMARKS §15).

    uv run python benchmarks/rollout_throughput.py [--task push --harness-seeds 8 --eval-seeds 6 --rounds 3]

1. **Harness vs bare loop, per core** (one process, one torch thread; MetaWorld at the policy's 84 px, fast
   rendering, ``compact:builtin`` unguided). Round-robin, ``--rounds`` times: a bare env loop with random actions
   rendering every step (:func:`gaflow.envs.metaworld.measure_speed`, as many steps as the harness took), the
   rollout loop as it was (``run_episode``: the env renders every step), lockstep groups of one (renders only the
   observations the policy reads; must give the same chunks bit for bit) and of ``--batch`` (one batched policy
   call per round: counted, how many episodes come out identical to their alone run). Then the same with guidance
   (ρ = 0.4, the critic of 2.).
2. **Paired evaluation on 2 cores** (the locked test's four arms: unguided, guided, zero, random; a critic with the
   study's shape — 3 members, 256×256, observation/task/state features — randomly initialised, since only its
   cost matters here). The same episodes: on the process pool with the worker as it was (rendering every step),
   on the process pool now, on a local 2-CPU Ray instance now. All three must write the same records.
3. **Scaling**: the unguided arm on Ray with 1, 2, … workers, and the per-job overhead of Ray's scheduling (a
   no-op job's round trip, and ``(Ray 1 worker − in-process) / episodes`` on real episodes).

Writes ``--out`` (JSON) and prints the tables. The load average is recorded beside every measurement: on a shared
machine, read the ratios (taken within one run), not the absolute rates.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from gaflow.evaluation import runner as _runner

_EVALUATE_EPISODES = _runner.evaluate_episodes  # the library's eval worker, before timed_eval swaps one in


def load() -> float:
    return round(os.getloadavg()[0], 2)


# ---------------------------------------------------------------------------------------------------- 1. harness
def harness(task: str, seeds: list[int], batch: int, rounds: int, max_steps: int, critic: Path | None = None
            ) -> dict:
    from gaflow.critic.train import load_critic
    from gaflow.envs.metaworld import MetaWorldEnv, measure_speed
    from gaflow.policies.registry import load_policy
    from gaflow.runtime import GuidedRuntime, RecordingEnv, run_episode
    from gaflow.runtime.batched import run_episodes_batched

    policy = load_policy("compact:builtin")
    runtime = GuidedRuntime(policy) if critic is None else GuidedRuntime(
        policy, critic=load_critic(critic), guidance={"relative": 0.4})
    size = policy.config.image_size

    def fresh_envs() -> list:
        # One new env per episode, reset once outside the timing (GL context, first render): every arm's episode
        # then has the same env history. MetaWorld's reset image depends on the env's earlier episodes (the goal
        # site's position lags a step: docs/scale.md), which would otherwise count as a batching difference.
        envs = [MetaWorldEnv(task, image_size=size, max_steps=max_steps) for _ in seeds]
        for e, s in zip(envs, seeds, strict=True):
            e.reset(s)
        return envs

    def loop_as_it_was(envs):  # an env whose every frame is recorded with its image renders every step
        return [run_episode(RecordingEnv(e, record_images=True), runtime, seed=s)
                for e, s in zip(envs, seeds, strict=True)]

    def groups_of_one(envs):
        return [run_episodes_batched([e], runtime, [s])[0] for e, s in zip(envs, seeds, strict=True)]

    def lockstep(envs):
        out = []
        for i in range(0, len(seeds), batch):
            out += run_episodes_batched(envs[i:i + batch], runtime, seeds[i:i + batch])
        return out

    arms = {"run_episode (renders every step)": loop_as_it_was, "lockstep M=1 (renders per chunk)": groups_of_one,
            f"lockstep M={batch} (one batched call)": lockstep}
    rates: dict[str, list[float]] = {"bare env loop, random actions": [], **{k: [] for k in arms}}
    results: dict[str, list] = {}
    loads = []
    for _ in range(rounds):
        loads.append(load())
        for name, fn in arms.items():
            envs = fresh_envs()
            t0 = time.perf_counter()
            results[name] = fn(envs)
            rates[name].append(sum(r.length for r in results[name]) / (time.perf_counter() - t0))
            for e in envs:
                e.close()
        steps = sum(r.length for r in results["run_episode (renders every step)"])
        rates["bare env loop, random actions"].append(measure_speed(task, image_size=size, steps=steps))
    reference = results["run_episode (renders every step)"]

    def identical(a, b) -> bool:
        return a.length == b.length and a.success == b.success and len(a.chunks) == len(b.chunks) and all(
            torch.equal(x.chunk, y.chunk) for x, y in zip(a.chunks, b.chunks, strict=True))

    batched = results[f"lockstep M={batch} (one batched call)"]
    bare = statistics.median(rates["bare env loop, random actions"])
    return {
        "guided": critic is not None, "task": task, "image_size": size, "seeds": seeds, "max_steps": max_steps, "rounds": rounds, "load": loads,
        "steps_per_s": {k: statistics.median(v) for k, v in rates.items()},
        "ratio_to_bare": {k: statistics.median(v) / bare for k, v in rates.items()},
        "per_round": rates,
        "env_steps": sum(r.length for r in reference),
        "m1_identical_to_run_episode": all(identical(a, b) for a, b in zip(reference, results[
            "lockstep M=1 (renders per chunk)"], strict=True)),
        "batched_identical_episodes": sum(identical(a, b) for a, b in zip(reference, batched, strict=True)),
        "batched_same_outcome": sum(a.success == b.success and a.length == b.length
                                    for a, b in zip(reference, batched, strict=True)),
        "batched_max_first_chunk_diff": max(float((a.chunks[0].chunk - b.chunks[0].chunk).abs().max())
                                            for a, b in zip(reference, batched, strict=True)),
        "episodes": len(seeds),
    }


# ---------------------------------------------------------------------------------------------------- 2. eval
def random_study_critic(out: Path) -> Path:
    """A critic folder with the study's shape (random weights: only its cost matters for throughput)."""
    from gaflow.critic.train import CriticTrainConfig, build_critic, save_critic
    from gaflow.policies.registry import load_policy

    policy = load_policy("compact:builtin")
    cfg = CriticTrainConfig(features=("observation", "task", "state"), hidden=(256, 256), members=3)
    dims = {"observation": policy.config.hidden_dim, "task": policy.config.text_dim, "state": policy.config.state_dim}
    torch.manual_seed(0)
    save_critic(build_critic(cfg, dims, policy.spec.chunk_len, policy.spec.action_dim).eval(), out, cfg)
    return out


def evaluate_episodes_rendering_every_step(cfg_dict: dict, jobs: list) -> list[dict]:
    """The eval worker as it was before lockstep groups: the env rendering every step (a recording with images)."""
    import gaflow.evaluation.runner as runner
    from gaflow.runtime import RecordingEnv

    batched = runner.run_episodes_batched
    runner.run_episodes_batched = lambda envs, rt, seeds: batched([RecordingEnv(envs[0], record_images=True)], rt,
                                                                  seeds)
    try:
        return _EVALUATE_EPISODES(cfg_dict, jobs)
    finally:
        runner.run_episodes_batched = batched


def strip_timing(records: list[dict]) -> list[dict]:
    drop = ("wall_s", "chunk_latency_ms")
    return [{**r, "arms": {n: {k: v for k, v in a.items() if k not in drop} for n, a in r["arms"].items()}}
            for r in records]


def timed_eval(cfg, out: Path, executor, *, old_worker: bool = False) -> tuple[float, list[dict], float]:
    import gaflow.evaluation.runner as runner

    original = runner.evaluate_episodes
    if old_worker:
        runner.evaluate_episodes = evaluate_episodes_rendering_every_step
    try:
        before = load()
        t0 = time.perf_counter()
        records = runner.run_eval(cfg, out, progress=False, executor=executor)
        return time.perf_counter() - t0, records, before
    finally:
        runner.evaluate_episodes = original


def paired_eval(tasks: list[str], seeds: list[int], max_steps: int, workdir: Path, rounds: int) -> dict:
    from gaflow.evaluation.runner import EvalConfig, standard_arms
    from gaflow.runtime.executor import LocalPoolExecutor
    from gaflow.runtime.ray_executor import RayExecutor

    critic = random_study_critic(workdir / "critic")
    arms = ["unguided", "guided", "zero", "random"]
    cfg = EvalConfig(policy="compact:builtin", env="metaworld", tasks=tasks, seeds=seeds, split="unsplit",
                     arms=standard_arms({"relative": 0.4}, arms), critic=str(critic), max_steps=max_steps)
    runs = {
        "process pool, 2 workers, worker as it was (renders every step)":
            lambda out: timed_eval(cfg, out, LocalPoolExecutor(2), old_worker=True),
        "process pool, 2 workers, now": lambda out: timed_eval(cfg, out, LocalPoolExecutor(2)),
        "Ray local instance, 2 CPUs, now": lambda out: timed_eval(cfg, out, RayExecutor(workers=2)),
    }
    rows: dict[str, dict] = {name: {"wall_s": [], "load": []} for name in runs}
    reference = None
    order = list(runs)
    for rnd in range(rounds):  # rounds alternate the order, so load drifting over the run hits all alike
        for name in (order if rnd % 2 == 0 else order[::-1]):
            wall, records, before = runs[name](workdir / f"eval{rnd}-{order.index(name)}")
            row = rows[name]
            row["wall_s"].append(wall)
            row["load"].append([before, load()])
            row["arm_episodes"] = len(records) * len(arms)
            row["env_steps"] = sum(a["length"] for r in records for a in r["arms"].values())
            mine = strip_timing(records)
            reference = reference or mine
            row.setdefault("episodes_differing_from_first", []).append(
                sum(a != b for a, b in zip(mine, reference, strict=True)))
    for row in rows.values():
        row["arm_episodes_per_s"] = row["arm_episodes"] / statistics.median(row["wall_s"])
    base = rows[order[0]]["arm_episodes_per_s"]
    pool = rows["process pool, 2 workers, now"]["arm_episodes_per_s"]
    for r in rows.values():
        r["ratio_to_pool_as_it_was"] = r["arm_episodes_per_s"] / base
        r["ratio_to_pool_now"] = r["arm_episodes_per_s"] / pool
    return {"tasks": tasks, "seeds": seeds, "max_steps": max_steps, "arms": arms, "rounds": rounds, "runs": rows}


# ---------------------------------------------------------------------------------------------------- 3. scaling
def _noop(i: int) -> list[int]:
    return [i]


def scaling(tasks: list[str], seeds: list[int], max_steps: int, workers: list[int], workdir: Path,
            rounds: int) -> dict:
    from gaflow.evaluation.runner import EvalConfig, run_eval
    from gaflow.runtime.executor import InProcessExecutor
    from gaflow.runtime.ray_executor import RayExecutor

    cfg = EvalConfig(policy="compact:builtin", env="metaworld", tasks=tasks, seeds=seeds, split="unsplit",
                     max_steps=max_steps)
    episodes = len(tasks) * len(seeds)
    runs = {"in-process": InProcessExecutor, **{f"ray {w}": (lambda w=w: RayExecutor(workers=w)) for w in workers}}
    walls: dict[str, list[float]] = {k: [] for k in runs}
    loads: list[float] = []
    order = list(runs)
    for rnd in range(rounds):
        loads.append(load())
        for name in (order if rnd % 2 == 0 else order[::-1]):
            t0 = time.perf_counter()
            run_eval(cfg, workdir / f"scaling{rnd}-{order.index(name)}", progress=False, executor=runs[name]())
            walls[name].append(time.perf_counter() - t0)
    rows = {k: {"wall_s": statistics.median(v), "episodes_per_s": episodes / statistics.median(v), "walls": v}
            for k, v in walls.items()}
    n = 200
    ex = RayExecutor(workers=2)
    list(ex.run(_noop, [(i,) for i in range(20)]))  # workers up
    t0 = time.perf_counter()
    list(ex.run(_noop, [(i,) for i in range(n)]))
    noop_ms = 1e3 * (time.perf_counter() - t0) / n
    return {"tasks": tasks, "seeds": seeds, "max_steps": max_steps, "episodes": episodes, "rounds": rounds,
            "load": loads, "runs": rows, "noop_job_ms": noop_ms,
            "per_episode_overhead_ms": 1e3 * (rows["ray 1"]["wall_s"] - rows["in-process"]["wall_s"]) / episodes
            if "ray 1" in rows else None}


# ---------------------------------------------------------------------------------------------------- main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="push")
    p.add_argument("--harness-seeds", type=int, default=8)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-steps", type=int, default=100)
    p.add_argument("--eval-tasks", default="push,hand-insert")
    p.add_argument("--eval-seeds", type=int, default=6)
    p.add_argument("--eval-rounds", type=int, default=2)
    p.add_argument("--scaling-workers", default="1,2")
    p.add_argument("--skip", default="", help="comma-separated: harness,harness-guided,eval,scaling")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/rollout_throughput.json"))
    a = p.parse_args()
    torch.set_num_threads(1)
    skip = set(filter(None, a.skip.split(",")))
    result: dict = {"cpus": os.cpu_count(), "load_at_start": load(), "torch": torch.__version__}
    tasks = [t.strip() for t in a.eval_tasks.split(",") if t.strip()]
    scaling_workers = [int(w) for w in a.scaling_workers.split(",")]
    # a throughput benchmark reads no test episode: seeds outside every named split (gaflow.evaluation.splits)
    test_seeds = list(range(50000, 50000 + a.eval_seeds))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        harness_seeds = list(range(50000, 50000 + a.harness_seeds))
        if "harness" not in skip:
            result["harness"] = harness(a.task, harness_seeds, a.batch, a.rounds, a.max_steps)
            print(json.dumps(result["harness"], indent=1))
        if "harness-guided" not in skip:
            critic = random_study_critic(work / "harness_critic")
            result["harness_guided"] = harness(a.task, harness_seeds, a.batch, a.rounds, a.max_steps, critic)
            print(json.dumps(result["harness_guided"], indent=1))
        if {"eval", "scaling"} - skip:  # one local instance for both, as `--backend ray` starts it; its start-up
            from gaflow.runtime.ray_executor import RayExecutor  # is reported, not counted in the rates

            t0 = time.perf_counter()
            RayExecutor(workers=max(2, *scaling_workers)).connect()
            result["ray_init_s"] = time.perf_counter() - t0
        if "eval" not in skip:
            result["eval"] = paired_eval(tasks, test_seeds, a.max_steps, work, a.eval_rounds)
            print(json.dumps(result["eval"], indent=1))
        if "scaling" not in skip:
            result["scaling"] = scaling(tasks, test_seeds, a.max_steps, scaling_workers, work, a.eval_rounds)
            print(json.dumps(result["scaling"], indent=1))
    result["load_at_end"] = load()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"→ {a.out}")


if __name__ == "__main__":
    main()

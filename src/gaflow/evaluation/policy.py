"""``gaflow eval-policy``: unguided success of a saved compact policy on MetaWorld tasks × seeds, and the rollout
speed measurement of BENCHMARKS.md — both through the runtime and the executor like every other episode job."""

from __future__ import annotations

import math
import time
from typing import Any

from gaflow.evaluation.ledger import finish_read, record_read, test_seeds_of
from gaflow.runtime import GuidedRuntime, RuntimeSpec, run_episode
from gaflow.runtime.batched import run_episodes_batched
from gaflow.runtime.build import release, runtime_and_env
from gaflow.runtime.executor import Executor, chunked, make_executor, run_jobs, torch_threads


def _env_spec(camera: str | None) -> str:
    return f"metaworld?camera={camera}" if camera else "metaworld"


def episode_summaries(spec_dict: dict, env: str, task: str, seeds: list[int], max_steps: int | None) -> list[dict]:
    """Worker: unguided episodes → their summaries (tagged with the job's task name and wall time)."""
    spec = RuntimeSpec(**spec_dict)
    out = []
    with torch_threads(1):
        runtime, recording = runtime_and_env(spec, env, task, max_steps=max_steps, record_images=False)
        for seed in seeds:
            t0 = time.perf_counter()
            s = run_episodes_batched([recording.env], runtime, [seed])[0].summary()  # renders once per chunk
            s["task"] = task  # the job's task name, used to group results
            s["wall_s"] = time.perf_counter() - t0
            out.append(s)
    return out


def evaluate_policy(policy_dir: str, tasks: list[str], seeds: list[int], *, n_action_steps: int | None = None,
                    num_steps: int | None = None, noise_seed: int = 0, camera: str | None = None,
                    max_steps: int | None = None, workers: int = 1, progress: bool = True,
                    force_reread: bool = False, executor: Executor | None = None
                    ) -> dict[str, list[dict[str, Any]]]:
    """Unguided success of a saved compact policy on MetaWorld ``tasks`` × ``seeds`` → per-task episode summaries.

    Test seeds are recorded in the test ledger (a second read is refused unless ``force_reread``)."""
    executor = executor or make_executor(workers)
    workers = executor.workers
    spec = RuntimeSpec(policy=f"compact:{policy_dir}", num_steps=num_steps, noise_seed=noise_seed,
                       n_action_steps=n_action_steps)
    header = record_read(None, command="eval-policy", policy=spec.policy, env="metaworld",
                         seeds_by_task={t: list(seeds) for t in tasks}, force=force_reread)
    per_job = max(1, math.ceil(len(seeds) / max(1, workers * 2))) if workers > 1 else len(seeds)
    jobs = [(spec.to_dict(), _env_spec(camera), task, part, max_steps) for task in tasks
            for part in chunked(seeds, per_job)]
    results: dict[str, list[dict[str, Any]]] = {t: [] for t in tasks}

    def take(summaries: list[dict]) -> str:
        for s in summaries:
            results[s["task"]].append(s)
        return ""

    try:
        run_jobs(executor, episode_summaries, jobs, label="eval-policy", total=len(tasks) * len(seeds),
                 progress=progress, on_result=take)
    finally:
        release()
    for t in tasks:
        results[t].sort(key=lambda s: s["seed"])
    test = set(test_seeds_of("metaworld", list(seeds)))
    finish_read(header, {t: [s for s in eps if s["seed"] in test] for t, eps in results.items()})
    return results


def measure_rollout_speed(policy, task: str, seeds: list[int], *, camera: str | None = None,
                          n_action_steps: int | None = None) -> dict[str, float]:
    """Env steps/s of full policy rollouts (render + encode + sample + step) vs a bare env loop with random actions
    (same task, image size and camera, same number of steps), measured back to back in this process."""
    from gaflow.envs.metaworld import DEFAULT_CAMERA, MetaWorldEnv, measure_speed

    camera = camera or DEFAULT_CAMERA
    runtime = GuidedRuntime(policy, n_action_steps=n_action_steps)
    env = MetaWorldEnv(task, image_size=policy.config.image_size, camera=camera)
    env.reset(seeds[0])  # GL context and first render outside the timing
    steps, chunks, t0 = 0, 0, time.perf_counter()
    for seed in seeds:
        rec = run_episode(env, runtime, seed=seed)
        steps += rec.length
        chunks += len(rec.chunks)
    policy_rate = steps / (time.perf_counter() - t0)
    env.close()
    bare = measure_speed(task, image_size=policy.config.image_size, camera=camera, steps=steps)
    return {"policy_steps_per_s": policy_rate, "bare_steps_per_s": bare, "steps": steps, "chunks": chunks}

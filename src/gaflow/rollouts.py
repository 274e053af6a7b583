"""Receding-horizon rollouts of a flow policy in an environment, recorded chunk by chunk.

One episode (:func:`run_episode`): observe → ``policy.encode`` (once per chunk) → :func:`gaflow.sampler.sample_chunks`
(the one sampler; guided or not) → ``policy.decode_actions`` → execute the first ``n_action_steps`` actions →
re-plan from the new observation. The episode **stops at the first success** (the step at which the environment's
success flag first turns true, even in the middle of a chunk) or when the environment reports ``done`` (its step
cap). Success-to-go targets for critics are computed from ``first_success_step`` and each chunk's ``env_step``.

Noise. The initial noise of every chunk comes from one generator per episode seeded by
:func:`episode_noise_seed` ``(seed, noise_generator_seed)``, and every chunk draws the same number of values
(``N·H·padded_dim``), so two arms of an evaluation (e.g. unguided vs guided) start chunk ``k`` of episode ``seed``
from identical noise. Guidance controls draw from their own generators and never touch this stream.

Environments follow ``gaflow.envs``: ``reset(seed) -> obs``, ``step(action) -> (obs, success, done, info)``;
observations are stacked with :func:`gaflow.observations.stack_observations`.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from gaflow.guidance.config import Guidance
from gaflow.sampler import SamplerConfig, sample_chunks


@dataclass
class ChunkRecord:
    index: int  # chunk number within the episode
    env_step: int  # env steps taken before this chunk's observation (0 = the reset observation)
    executed: tuple[int, int]  # [start, stop) env step indices executed from this chunk
    chunk: torch.Tensor  # (H, padded_dim) the selected chunk in the policy's (normalised) space
    features: dict[str, torch.Tensor]  # critic features of this chunk's observation, each (F,)
    latency_s: float  # encode + sample + decode for this chunk
    guidance: dict[str, float] | None = None  # GuidanceDiagnostics.summary() when guided
    value: float | None = None  # critic value of the selected chunk, when the sampler computed one


@dataclass
class EpisodeRecord:
    task: str
    seed: int
    noise_seed: int
    success: bool
    first_success_step: int | None  # env steps taken when success first fired (1-based), None if never
    length: int  # env steps executed
    n_action_steps: int
    chunks: list[ChunkRecord] = field(default_factory=list)

    @property
    def mean_latency_s(self) -> float:
        return float(np.mean([c.latency_s for c in self.chunks])) if self.chunks else float("nan")

    def summary(self) -> dict[str, Any]:
        """JSON-friendly summary (no tensors)."""
        return {"task": self.task, "seed": self.seed, "noise_seed": self.noise_seed, "success": self.success,
                "first_success_step": self.first_success_step, "length": self.length,
                "n_action_steps": self.n_action_steps, "num_chunks": len(self.chunks),
                "mean_latency_s": self.mean_latency_s}


def episode_noise_seed(seed: int, noise_generator_seed: int) -> int:
    """Stable 63-bit seed of episode ``seed``'s policy-noise generator (SHA-256, not Python's salted hash)."""
    digest = hashlib.sha256(f"gaflow/policy-noise/{int(noise_generator_seed)}/{int(seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def run_episode(
    env,
    policy,
    *,
    seed: int,
    sampler_config: SamplerConfig | None = None,
    guidance: Guidance | None = None,
    n_action_steps: int | None = None,
    noise_generator_seed: int = 0,
    record: bool = True,
) -> EpisodeRecord:
    """Run episode ``seed`` of ``env`` with ``policy`` in receding horizon; see the module docstring.

    ``n_action_steps`` defaults to ``policy.config.n_action_steps`` when the policy has one, else the chunk
    length. ``record=False`` keeps only the summary (no per-chunk records).
    """
    from gaflow.observations import stack_observations

    spec = policy.spec
    cfg = sampler_config or SamplerConfig()
    if n_action_steps is None:
        n_action_steps = getattr(getattr(policy, "config", None), "n_action_steps", spec.chunk_len)
    if not 1 <= n_action_steps <= spec.chunk_len:
        raise ValueError(f"n_action_steps must be in [1, chunk_len={spec.chunk_len}], got {n_action_steps}")
    generator = torch.Generator().manual_seed(episode_noise_seed(seed, noise_generator_seed))
    noise_shape = (1, cfg.num_candidates, spec.chunk_len, spec.padded_dim)

    obs = env.reset(seed)
    steps, first_success, done = 0, None, False
    chunks: list[ChunkRecord] = []
    while not done:
        t0 = time.perf_counter()
        noise = torch.randn(noise_shape, generator=generator)
        with torch.no_grad():
            context = policy.encode(stack_observations([obs]))
            out = sample_chunks(policy, context=context, config=cfg, guidance=guidance, noise=noise)
            actions = policy.decode_actions(out.chunk)[0].cpu().numpy()  # (H, action_dim)
        latency = time.perf_counter() - t0
        start = steps
        for action in actions[:n_action_steps]:
            obs, success, done, _info = env.step(action)
            steps += 1
            if success and first_success is None:
                first_success = steps
            if first_success is not None:
                done = True  # stop at the first success
            if done:
                break
        if record:
            feats = out.features if out.features is not None else policy.critic_features(context)
            value = None
            if out.values is not None:
                value = float(out.values[0, int(out.selected[0])])
            chunks.append(ChunkRecord(
                index=len(chunks), env_step=start, executed=(start, steps), chunk=out.chunk[0].detach().clone(),
                features={k: v[0].detach().clone() for k, v in feats.items()}, latency_s=latency,
                guidance=out.diagnostics.summary() if out.diagnostics is not None else None, value=value,
            ))
    return EpisodeRecord(
        task=str(getattr(env, "task", "")), seed=int(seed), noise_seed=int(noise_generator_seed),
        success=first_success is not None, first_success_step=first_success, length=steps,
        n_action_steps=n_action_steps, chunks=chunks,
    )


def parse_seeds(text: str) -> list[int]:
    """``"1000-1049"``, ``"1,2,5"`` or a mix (``"0-4,10"``) → a sorted list of unique seeds."""
    seeds: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            if sep:
                a, b = int(lo), int(hi)
                if b < a:
                    raise ValueError
                seeds.update(range(a, b + 1))
            else:
                seeds.add(int(part))
        except ValueError:
            raise ValueError(f"bad seed range {part!r}: use e.g. '1000-1049' or '1,2,5'") from None
    if not seeds:
        raise ValueError(f"no seeds in {text!r}")
    return sorted(seeds)


# ---------------------------------------------------------------------------------------------- evaluation
def _evaluate_worker(args: tuple) -> list[dict[str, Any]]:
    policy_dir, task, seeds, n_action_steps, num_steps, noise_seed, camera, max_steps, threads = args
    from gaflow.envs.metaworld import DEFAULT_CAMERA, MetaWorldEnv
    from gaflow.jobs import torch_threads
    from gaflow.policies.compact import CompactFlowPolicy

    with torch_threads(threads):
        policy = CompactFlowPolicy.from_pretrained(policy_dir)
        env = MetaWorldEnv(task, image_size=policy.config.image_size, camera=camera or DEFAULT_CAMERA,
                           max_steps=max_steps)
        out = []
        try:
            for seed in seeds:
                t0 = time.perf_counter()
                rec = run_episode(env, policy, seed=seed, sampler_config=SamplerConfig(num_steps=num_steps),
                                  n_action_steps=n_action_steps, noise_generator_seed=noise_seed, record=True)
                s = rec.summary()
                s["task"] = task  # the job's task name, used to group results
                s["wall_s"] = time.perf_counter() - t0
                out.append(s)
        finally:
            env.close()
    return out


def evaluate_policy(
    policy_dir: str,
    tasks: list[str],
    seeds: list[int],
    *,
    n_action_steps: int | None = None,
    num_steps: int | None = None,
    noise_seed: int = 0,
    camera: str | None = None,
    max_steps: int | None = None,
    workers: int = 1,
    progress: bool = True,
) -> dict[str, list[dict[str, Any]]]:
    """Unguided success of a saved compact policy on MetaWorld ``tasks`` × ``seeds`` → per-task episode summaries.

    ``workers > 1`` runs episodes in separate processes (``forkserver``: a process that has rendered must not fork
    its GL context), each single-threaded.
    """
    from gaflow.jobs import chunked, run_batches

    per_job = max(1, math.ceil(len(seeds) / max(1, workers * 2))) if workers > 1 else len(seeds)
    jobs = [((policy_dir, task, part, n_action_steps, num_steps, noise_seed, camera, max_steps, 1),)
            for task in tasks for part in chunked(seeds, per_job)]
    results: dict[str, list[dict[str, Any]]] = {t: [] for t in tasks}
    for summary in run_batches(_evaluate_worker, jobs, workers=workers, label="eval-policy",
                               total=len(tasks) * len(seeds), progress=progress):
        results[summary["task"]].append(summary)
    for t in tasks:
        results[t].sort(key=lambda s: s["seed"])
    return results


def measure_rollout_speed(policy, task: str, seeds: list[int], *, camera: str | None = None,
                          n_action_steps: int | None = None) -> dict[str, float]:
    """Env steps/s of full policy rollouts (render + encode + sample + step) vs a bare env loop with random actions
    (same task, image size and camera, same number of steps), measured back to back in this process."""
    from gaflow.envs.metaworld import DEFAULT_CAMERA, MetaWorldEnv, measure_speed

    camera = camera or DEFAULT_CAMERA
    env = MetaWorldEnv(task, image_size=policy.config.image_size, camera=camera)
    env.reset(seeds[0])  # GL context and first render outside the timing
    steps, chunks, t0 = 0, 0, time.perf_counter()
    for seed in seeds:
        rec = run_episode(env, policy, seed=seed, n_action_steps=n_action_steps)
        steps += rec.length
        chunks += len(rec.chunks)
    policy_rate = steps / (time.perf_counter() - t0)
    env.close()
    bare = measure_speed(task, image_size=policy.config.image_size, camera=camera, steps=steps)
    return {"policy_steps_per_s": policy_rate, "bare_steps_per_s": bare, "steps": steps, "chunks": chunks}

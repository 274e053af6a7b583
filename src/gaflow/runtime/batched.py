"""Lockstep episodes: ``M`` environments stepped together, their chunks sampled in one batched ``infer`` per round.

>>> from gaflow.envs.toy import ToyReachEnv
>>> from gaflow.runtime import GuidedRuntime, RuntimeSpec
>>> from gaflow.runtime.batched import run_episodes_batched
>>> rt = GuidedRuntime.from_spec(RuntimeSpec(policy="toy:default"))
>>> recs = run_episodes_batched([ToyReachEnv() for _ in range(4)], rt, seeds=[0, 1, 2, 3])
>>> [r.seed for r in recs]
[0, 1, 2, 3]

The receding-horizon loop of :func:`~gaflow.runtime.run_episode` (observe → ``infer`` → execute the first
``n_action_steps`` actions → stop at the first success or at ``done``), run for ``M`` episodes at once: every round,
the rows still running are encoded and sampled in **one** ``infer`` call, each row drawing from its own
per-episode noise stream (:meth:`GuidedRuntime.start_episode` with one seed per row), and a row leaves the batch
when its episode ends.

**Identical to running alone?** Row ``i`` sees the same observations and the same noise as
``run_episode(envs[i], runtime, seeds[i])``; its chunks are bit-identical when the policy's and the critic's
kernels compute a row independently of the batch size. That holds for the analytic toy policy and critics (tested),
not for matmuls on MKL: a batch-1 ``Linear`` runs a different kernel than a batch-8 one, so the compact policy's
chunks differ in the last float bits (≈4e-7) and episodes then drift apart (BENCHMARKS §15 measures how far).
Paired studies therefore run groups of one (``M = 1``) — which is what :func:`~gaflow.runtime.run_episode` runs:
this is the one rollout loop. Two cases always run one episode at a time: a ``random`` guidance control (it
draws from one generator for the whole batch; ``Guidance.start_episode`` reseeds it per episode) and objective
terms that read the episode's context (the executed actions and the end-effector position,
:mod:`gaflow.guidance.context`).

**Rendering where the policy looks.** The policy reads an observation once per chunk, not once per step. An env
that renders its camera image inside ``step`` and says so (a settable ``render_images`` flag and a ``render()``
method, like :class:`~gaflow.envs.metaworld.MetaWorldEnv`) is stepped without rendering, and its image is rendered
only for the observations ``infer`` reads — the same pixels (the simulator state is the same), at ``1 /
n_action_steps`` of the cost. Not when a :class:`~gaflow.runtime.RecordingEnv` keeps every frame's image.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from gaflow.guidance.context import HISTORY, episode_context
from gaflow.observations import IMAGE_KEY
from gaflow.runtime.episode import ChunkRecord, EpisodeRecord, RecordingEnv


def rows_are_independent(runtime) -> bool:
    """False where a batch shares state across its rows beyond the per-episode noise streams: a ``random``
    guidance control (one generator for the batch) or objective terms that read each episode's own context."""
    if getattr(runtime, "wants_objective_context", False):
        return False
    guidance = getattr(runtime, "guidance", None)
    if guidance is None:
        return True
    # Guidance's per-episode state is its random control's generator (Guidance.start_episode reseeds only that)
    control = getattr(guidance, "control", None)
    return getattr(control, "name", "none") != "random"


def _render_target(env):
    """The env whose rendering can wait until the policy looks, or None (see the module docstring)."""
    if isinstance(env, RecordingEnv):
        if env.record_images:
            return None  # the recording keeps every frame's image
        env = env.env
    if getattr(env, "render_images", False) is True and callable(getattr(env, "render", None)):
        return env
    return None


@contextlib.contextmanager
def _deferred_rendering(envs: Sequence):
    targets = [_render_target(e) for e in envs]
    for t in targets:
        if t is not None:
            t.render_images = False
    try:
        yield targets
    finally:
        for t in targets:
            if t is not None:
                t.render_images = True


@contextlib.contextmanager
def _rows(runtime, rows: list[int]):
    """Let ``infer`` draw noise for the rows in ``rows`` only (rows that finished leave the batch)."""
    streams = runtime._generators  # one per episode, from start_episode
    runtime._generators = [streams[i] for i in rows]
    try:
        yield
    finally:
        runtime._generators = streams


def run_episodes_batched(envs: Sequence, runtime, seeds: Sequence[int], *, record: bool = True
                         ) -> list[EpisodeRecord]:
    """Run episode ``seeds[i]`` of ``envs[i]`` for every ``i`` in lockstep (see the module docstring).

    ``envs`` must be distinct env objects (one per running episode). ``record=False`` keeps only the summaries.
    """
    envs, seeds = list(envs), [int(s) for s in seeds]
    if len(envs) != len(seeds):
        raise ValueError(f"run_episodes_batched needs one seed per env: got {len(envs)} envs, {len(seeds)} seeds")
    if len({id(e) for e in envs}) != len(envs):
        raise ValueError("run_episodes_batched needs a distinct env object for every episode")
    if len(envs) > 1 and not rows_are_independent(runtime):
        return [run_episodes_batched([e], runtime, [s], record=record)[0] for e, s in zip(envs, seeds, strict=True)]
    if not envs:
        return []
    m, n_action_steps = len(envs), runtime.n_action_steps
    runtime.start_episode(seeds if m > 1 else seeds[0])
    steps, first_success, done = [0] * m, [None] * m, [False] * m
    chunks: list[list[ChunkRecord]] = [[] for _ in range(m)]
    # Objective terms beyond the critic read the executed actions (policy space) and, where the env states its
    # action path, the end-effector position; such runtimes run one episode at a time (rows_are_independent).
    wants_context = getattr(runtime, "wants_objective_context", False)
    executed: list[list] = [[] for _ in range(m)]
    with _deferred_rendering(envs) as renderers:

        def look(i: int, obs: dict) -> dict:  # the observation the policy reads, with its image
            if renderers[i] is not None:
                obs[IMAGE_KEY] = renderers[i].render()
            return obs

        obs = [look(i, env.reset(seed)) for i, (env, seed) in enumerate(zip(envs, seeds, strict=True))]
        running = list(range(m))
        while running:
            context = {}
            if wants_context:
                (i,) = running
                context["objective_context"] = episode_context(obs[i], getattr(envs[i], "action_path", None),
                                                               executed[i])
            with _rows(runtime, running):
                out = runtime.infer([obs[i] for i in running], with_features=record, **context)
            for row, i in enumerate(running):
                start = steps[i]
                for action in out.actions[row][:n_action_steps]:
                    obs[i], success, done[i], _info = envs[i].step(action)
                    steps[i] += 1
                    if success and first_success[i] is None:
                        first_success[i] = steps[i]
                    if first_success[i] is not None:
                        done[i] = True  # stop at the first success
                    if done[i]:
                        break
                if wants_context:
                    done_now = out.chunk[row, : steps[i] - start, : runtime.policy.spec.action_dim]
                    executed[i] = [*executed[i], *done_now][-HISTORY:]
                if record:
                    chunks[i].append(ChunkRecord(
                        index=len(chunks[i]), env_step=start, executed=(start, steps[i]),
                        chunk=out.chunk[row].detach().clone(),
                        features={k: v[row].detach().clone() for k, v in out.features.items()},
                        latency_s=out.latency_s / len(running),  # the batch call's time, shared by its rows
                        guidance=out.diagnostics[row] if out.diagnostics is not None else None,
                        value=float(out.values[row]) if out.values is not None else None,
                    ))
                if not done[i]:
                    look(i, obs[i])
            running = [i for i in running if not done[i]]
    return [EpisodeRecord(task=str(getattr(env, "task", "")), seed=seed, noise_seed=int(runtime.noise_seed),
                          success=first_success[i] is not None, first_success_step=first_success[i],
                          length=steps[i], n_action_steps=n_action_steps, chunks=chunks[i])
            for i, (env, seed) in enumerate(zip(envs, seeds, strict=True))]

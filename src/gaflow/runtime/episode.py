"""Receding-horizon episodes of a :class:`~gaflow.runtime.GuidedRuntime` in an environment, chunk by chunk — the
one rollout loop (collection, evaluation, sweeps and ``eval-policy`` all run it).

observe → ``runtime.infer`` (encode once per chunk, guided or plain sampling, decode) → execute the first
``n_action_steps`` actions → re-plan from the new observation. The episode **stops at the first success** (the step
at which the environment's success flag first turns true, even in the middle of a chunk) or when the environment
reports ``done`` (its step cap). Success-to-go targets for critics are computed from ``first_success_step`` and
each chunk's ``env_step``.

Environments follow ``gaflow.envs``: ``reset(seed) -> obs``, ``step(action) -> (obs, success, done, info)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from gaflow.observations import ENV_STATE_KEY, IMAGE_KEY, STATE_KEY


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


def run_episode(env, runtime, *, seed: int, record: bool = True) -> EpisodeRecord:
    """Run episode ``seed`` of ``env`` with ``runtime`` in receding horizon; see the module docstring.

    ``record=False`` keeps only the summary (no per-chunk records). The loop itself is
    :func:`gaflow.runtime.batched.run_episodes_batched` with one env: there is one rollout loop.
    """
    from gaflow.runtime.batched import run_episodes_batched  # it builds on this module's records

    return run_episodes_batched([env], runtime, [seed], record=record)[0]


class RecordingEnv:
    """Wraps an env and keeps the frames of the current episode (observation before each action, the action,
    and the success flag after it)."""

    def __init__(self, env, record_images: bool = True):
        self.env, self.record_images = env, record_images
        self.task = getattr(env, "task", "")
        self.action_path = getattr(env, "action_path", None)  # the env's action-to-path map, if it states one
        self.frames: list[dict] = []
        self._obs = None

    def reset(self, seed):
        self.frames = []
        self._obs = self.env.reset(seed)
        return self._obs

    def step(self, action):
        obs, success, done, info = self.env.step(action)
        frame = {"state": np.asarray(self._obs[STATE_KEY], np.float32),
                 "env_state": np.asarray(self._obs[ENV_STATE_KEY], np.float32),
                 "action": np.asarray(action, np.float32), "success": float(success), "task": self._obs["task"]}
        if self.record_images and IMAGE_KEY in self._obs:
            frame["image"] = np.asarray(self._obs[IMAGE_KEY], np.uint8)
        self.frames.append(frame)
        self._obs = obs
        return obs, success, done, info

    def close(self):
        if hasattr(self.env, "close"):
            self.env.close()

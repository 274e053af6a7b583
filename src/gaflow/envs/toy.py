"""``toy-reach``: a 2-D point-mass reaching task that runs in microseconds — for tests, CI and the quick demo.

The point starts at a random position and must get within ``tolerance`` of a random goal in ``max_steps`` steps;
each action (2-d, clipped to [−1, 1]) moves it by ``step_size·action``. The initial state is a deterministic
function of ``(task, seed)`` (SHA-256 seeded), like every gaflow env. Observations follow
:mod:`gaflow.observations`: ``observation.state`` = ``[x, y, goal_x, goal_y]``; no image.
"""

from __future__ import annotations

import hashlib

import numpy as np

from gaflow.envs.base import ActionPath, EnvInfo, Feature
from gaflow.observations import ENV_STATE_KEY, STATE_KEY, TASK_KEY

TOY_TASKS = {"toy-reach": "move the point to the goal", "toy-reach-far": "move the point to the distant goal"}
# The toy has no physical time; a dataset still needs a rate for its timestamps (any positive one works).
CONTROL_FPS = 10
STATE_NAMES = ("x", "y", "goal_x", "goal_y")
DEFAULT_STEP_SIZE = 0.12


def action_path(step_size: float = DEFAULT_STEP_SIZE) -> ActionPath:
    """The point moves by ``step_size·clip(action, −1, 1)`` per step; its position is ``observation.state[:2]``."""
    return ActionPath(STATE_KEY, (0, 1), (0, 1), (float(step_size),) * 2, -1.0, 1.0, "units")


def env_info(task: str | None = None, **env_options) -> EnvInfo:
    """What :class:`ToyReachEnv` emits (the same for every task and option but ``step_size``, which scales its
    action path; ``task`` is only checked)."""
    if task is not None and task not in TOY_TASKS:
        raise ValueError(f"unknown toy task {task!r}; choose one of {sorted(TOY_TASKS)}")
    return EnvInfo(
        env="toy",
        fps=CONTROL_FPS,
        action=Feature("action", "float32", (ToyReachEnv.action_dim,), ("dx", "dy")),
        observation=(Feature(STATE_KEY, "float32", (4,), STATE_NAMES),
                     Feature(ENV_STATE_KEY, "float32", (4,), STATE_NAMES)),
        action_path=action_path(env_options.get("step_size", DEFAULT_STEP_SIZE)),
    )


class ToyReachEnv:
    action_dim = 2

    def __init__(self, task: str = "toy-reach", max_steps: int = 24, step_size: float = DEFAULT_STEP_SIZE,
                 tolerance: float = 0.15):
        if task not in TOY_TASKS:
            raise ValueError(f"unknown toy task {task!r}; choose one of {sorted(TOY_TASKS)}")
        self.task, self.max_steps, self.step_size, self.tolerance = task, max_steps, step_size, tolerance
        self.description = TOY_TASKS[task]
        self.action_path = action_path(step_size)
        self.pos = self.goal = np.zeros(2)
        self.steps = 0

    def _obs(self) -> dict:
        s = np.concatenate([self.pos, self.goal]).astype(np.float32)
        return {STATE_KEY: s, ENV_STATE_KEY: s.copy(), TASK_KEY: self.description}

    def reset(self, seed: int) -> dict:
        digest = hashlib.sha256(f"gaflow/toy/{self.task}/{int(seed)}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        spread = 1.0 if self.task == "toy-reach" else 1.6
        self.pos = rng.uniform(-1, 1, 2)
        self.goal = np.clip(self.pos + rng.uniform(-spread, spread, 2), -1.5, 1.5)
        self.steps = 0
        return self._obs()

    def step(self, action) -> tuple[dict, bool, bool, dict]:
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[:2], -1.0, 1.0)
        self.pos = self.pos + self.step_size * a
        self.steps += 1
        success = bool(np.linalg.norm(self.pos - self.goal) < self.tolerance)
        done = success or self.steps >= self.max_steps
        return self._obs(), success, done, {}

    def close(self) -> None:
        pass

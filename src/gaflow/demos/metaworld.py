"""Scripted MetaWorld demonstrations written as a LeRobotDataset v3 (``gaflow demos``).

Each episode ``(task, seed)`` runs MetaWorld's scripted expert (:class:`gaflow.experts.metaworld.MetaWorldExpert`)
with Gaussian action noise σ, clipped to [−1, 1]; frame t holds the observation before step t, the action actually
executed at step t, and ``next.success`` (the success flag after that step). An episode ends
``steps_after_success`` steps after its first success (so a policy sees what "done" looks like and a critic sees
success persist), or at the step cap. Failed episodes are kept: ``episode.success`` tells them apart, and a
critic needs both. The noise stream is a function of ``(task, seed)`` too, so every episode can be regenerated
exactly.

Schema: the env's features (:func:`gaflow.envs.metaworld.env_info`; H = ``image_size``) plus gaflow's columns
(:data:`gaflow.data.writer.COLUMNS`)::

    observation.image              image    (H, H, 3)  uint8 RGB on disk; loads as float32 (3, H, H) in [0, 1]
    observation.state              float32  (4,)       hand xyz + gripper opening
    observation.environment_state  float32  (39,)      MetaWorld's full state vector
    action                         float32  (4,)       executed action (expert + noise, clipped)
    episode.seed                   int64    (1,)       the episode's seed (with the task, its identity)
    episode.noise_std              float32  (1,)       σ of the action noise
    episode.success                bool     (1,)       the episode ever succeeded (constant per episode)
    next.success                   bool     (1,)       success flag after this frame's action
    task                           str                 natural-language instruction (LeRobot's task table)

plus LeRobot's own ``timestamp``, ``frame_index``, ``episode_index``, ``index``, ``task_index``; ``fps`` = 80
(MetaWorld's control rate).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gaflow.data.writer import DatasetWriter, check_target
from gaflow.envs.metaworld import (
    ACTION_DIM,
    CAMERAS,
    DEFAULT_CAMERA,
    DEFAULT_IMAGE_SIZE,
    default_max_steps,
    env_info,
    placement_seed,
    task_name,
)

DEMO_META_FILE = "gaflow_demos.json"  # provenance, in the dataset's meta/ folder
COLUMNS = ("episode.seed", "episode.noise_std", "episode.success", "next.success")


@dataclass
class DemoConfig:
    """What ``gaflow demos`` records; every field is a CLI flag of the same name."""

    tasks: list[str] = field(default_factory=lambda: ["push", "pick-place"])
    episodes_per_task: int = 50
    noise: float = 0.3  # σ of the Gaussian action noise added to the expert (then clipped to [−1, 1])
    seed_start: int = 0  # episode seeds are seed_start, seed_start + 1, ... for every task
    out: Path = Path("data/demos")
    image_size: int = DEFAULT_IMAGE_SIZE
    max_steps: int | None = None  # None: the task's default cap (gaflow.envs.metaworld.DEFAULT_MAX_STEPS)
    camera: str = DEFAULT_CAMERA
    steps_after_success: int = 10  # keep recording this many steps after the first success
    overwrite: bool = False

    def validate(self) -> None:
        if not self.tasks:
            raise ValueError("tasks: give at least one MetaWorld task")
        self.tasks = [task_name(t) for t in self.tasks]
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks: duplicates in {self.tasks}")
        if self.episodes_per_task < 1:
            raise ValueError(f"episodes_per_task must be >= 1, got {self.episodes_per_task}")
        if not (np.isfinite(self.noise) and self.noise >= 0):
            raise ValueError(f"noise must be a finite σ >= 0, got {self.noise}")
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")
        if self.max_steps is not None and not 1 <= self.max_steps <= 500:
            raise ValueError(f"max_steps must be in [1, 500], got {self.max_steps}")
        if self.steps_after_success < 0:
            raise ValueError(f"steps_after_success must be >= 0, got {self.steps_after_success}")
        if self.camera not in CAMERAS:
            raise ValueError(f"camera {self.camera!r} unknown; MetaWorld cameras: {', '.join(CAMERAS)}")


@dataclass
class EpisodeRecord:
    task: str
    seed: int
    success: bool
    length: int
    first_success_step: int | None


def noise_rng(task: str, seed: int) -> np.random.Generator:
    """Action-noise generator of episode ``(task, seed)`` — independent of the placement stream."""
    return np.random.default_rng([placement_seed(task, seed), 0x6E6F697365])  # second word: "noise"


def rollout_expert(env: Any, seed: int, noise: float, steps_after_success: int,
                   expert: Any | None = None) -> Iterator[dict[str, Any]]:
    """Yield one frame per step of the noisy scripted expert on episode ``(env.task, seed)``: the observation
    before the step, the executed ``action`` and ``next.success`` (the ``episode.*`` values are the caller's).

    ``expert``: a :class:`~gaflow.experts.metaworld.MetaWorldExpert` of ``env`` (built when ``None``). An env
    built with ``render=False`` yields frames without ``observation.image`` (same trajectory: rendering does not
    touch the simulation).
    """
    if expert is None:
        from gaflow.experts.metaworld import MetaWorldExpert

        expert = MetaWorldExpert(env)
    rng = noise_rng(env.task, seed)
    obs = env.reset(seed)
    after = None
    while True:
        action = expert.act(obs)
        if noise > 0:
            action = action + noise * rng.standard_normal(ACTION_DIM).astype(np.float32)
        action = np.clip(action, -1.0, 1.0).astype(np.float32)
        next_obs, success, _, info = env.step(action)
        yield dict(obs) | {"action": action, "next.success": bool(success)}
        obs = next_obs
        if after is None and success:
            after = 0
        elif after is not None:
            after += 1
        if info["truncated"] or (after is not None and after >= steps_after_success):
            return


def write_demos(cfg: DemoConfig, progress: Any | None = None) -> list[EpisodeRecord]:
    """Record the demonstrations of ``cfg`` into ``cfg.out`` (atomically, :class:`DatasetWriter`); return one
    record per episode. ``progress``: a ``rich.progress.Progress`` to report into (optional)."""
    from gaflow.envs.metaworld import MetaWorldEnv
    from gaflow.experts.metaworld import MetaWorldExpert

    cfg.validate()
    out = Path(cfg.out).expanduser().absolute()
    check_target(out, cfg.overwrite)
    info = env_info(image_size=cfg.image_size, camera=cfg.camera)
    records: list[EpisodeRecord] = []
    bar = progress.add_task("demos", total=len(cfg.tasks) * cfg.episodes_per_task) if progress is not None else None
    with DatasetWriter(out, info, COLUMNS, overwrite=cfg.overwrite) as writer:
        for task in cfg.tasks:
            with MetaWorldEnv(task, image_size=cfg.image_size, camera=cfg.camera, max_steps=cfg.max_steps,
                              render=True, terminate_on_success=False) as env:
                expert = MetaWorldExpert(env)
                for i in range(cfg.episodes_per_task):
                    seed = cfg.seed_start + i
                    frames = list(rollout_expert(env, seed, cfg.noise, cfg.steps_after_success, expert))
                    flags = [f["next.success"] for f in frames]
                    ever = any(flags)
                    writer.add_episode(frames, {"episode.seed": seed, "episode.noise_std": cfg.noise,
                                                "episode.success": ever})
                    records.append(EpisodeRecord(task, seed, ever, len(frames),
                                                 flags.index(True) + 1 if ever else None))
                    if progress is not None:
                        n_ok = sum(r.success for r in records)
                        progress.update(bar, advance=1, description=(
                            f"{task} seed {seed} | success {n_ok}/{len(records)}"))
        meta = asdict(cfg)
        meta.update(out=str(out), fps=info.fps,
                    max_steps_per_task={t: cfg.max_steps or default_max_steps(t) for t in cfg.tasks},
                    episodes=[asdict(r) for r in records])
        writer.write_meta(DEMO_META_FILE, meta)
    return records


__all__ = [
    "COLUMNS",
    "DEMO_META_FILE",
    "DemoConfig",
    "EpisodeRecord",
    "noise_rng",
    "rollout_expert",
    "write_demos",
]

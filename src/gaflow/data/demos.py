"""Scripted MetaWorld demonstrations written as a LeRobotDataset v3.

Each episode ``(task, seed)`` runs MetaWorld's scripted expert with Gaussian action noise σ, clipped to [−1, 1];
frame t holds the observation before step t, the action actually executed at step t, and ``next.success`` (the
success flag after that step). An episode ends ``steps_after_success`` steps after its first success (so a
policy sees what "done" looks like and a critic sees success persist), or at the step cap. Failed episodes are
kept: ``episode.success`` tells them apart, and a critic needs both. The noise stream is a function of
``(task, seed)`` too, so every episode can be regenerated exactly.

Schema (:data:`FEATURES` for H = ``image_size``)::

    observation.image              image    (H, H, 3)  uint8 RGB on disk; loads as float32 (3, H, H) in [0, 1]
    observation.state              float32  (4,)       hand xyz + gripper opening
    observation.environment_state  float32  (39,)      MetaWorld's full state vector
    action                         float32  (4,)       executed action (expert + noise, clipped)
    episode.seed                   int64    (1,)       the episode's seed (with the task, its identity)
    episode.noise_std              float32  (1,)       σ of the action noise
    episode.success                float32  (1,)       1.0 if the episode ever succeeded (constant per episode)
    next.success                   float32  (1,)       success flag after this frame's action
    task                           str                 natural-language instruction (LeRobot's task table)

plus LeRobot's own ``timestamp``, ``frame_index``, ``episode_index``, ``index``, ``task_index``; ``fps`` = 80
(MetaWorld's control rate). Images are stored in the parquet files (``use_videos=False``), so no FFmpeg.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gaflow.envs.base import ACTION_DIM, ENV_STATE_DIM, STATE_DIM

DEMO_META_FILE = "gaflow_demos.json"  # provenance, in the dataset's meta/ folder


def features(image_size: int) -> dict[str, dict[str, Any]]:
    """LeRobot feature spec of a demonstration dataset with square images of side ``image_size``."""
    return {
        "observation.image": {"dtype": "image", "shape": (image_size, image_size, 3),
                              "names": ["height", "width", "channels"]},
        "observation.state": {"dtype": "float32", "shape": (STATE_DIM,),
                              "names": ["hand_x", "hand_y", "hand_z", "gripper"]},
        "observation.environment_state": {"dtype": "float32", "shape": (ENV_STATE_DIM,), "names": None},
        "action": {"dtype": "float32", "shape": (ACTION_DIM,), "names": ["dx", "dy", "dz", "gripper"]},
        "episode.seed": {"dtype": "int64", "shape": (1,), "names": None},
        "episode.noise_std": {"dtype": "float32", "shape": (1,), "names": None},
        "episode.success": {"dtype": "float32", "shape": (1,), "names": None},
        "next.success": {"dtype": "float32", "shape": (1,), "names": None},
    }


FEATURES = features(84)


@dataclass
class DemoConfig:
    """What ``gaflow demos`` records; every field is a CLI flag of the same name."""

    tasks: list[str] = field(default_factory=lambda: ["push", "pick-place"])
    episodes_per_task: int = 50
    noise: float = 0.3  # σ of the Gaussian action noise added to the expert (then clipped to [−1, 1])
    seed_start: int = 0  # episode seeds are seed_start, seed_start + 1, ... for every task
    out: Path = Path("data/demos")
    image_size: int = 84
    max_steps: int | None = None  # None: the task's default cap (gaflow.envs.metaworld.DEFAULT_MAX_STEPS)
    camera: str = "corner4"
    steps_after_success: int = 10  # keep recording this many steps after the first success
    overwrite: bool = False

    def validate(self) -> None:
        from gaflow.envs.metaworld import CAMERAS, task_name

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
    from gaflow.envs.metaworld import placement_seed

    return np.random.default_rng([placement_seed(task, seed), 0x6E6F697365])  # second word: "noise"


def rollout_expert(env: Any, seed: int, noise: float, steps_after_success: int) -> Iterator[dict[str, Any]]:
    """Yield one LeRobot frame per step of the noisy scripted expert on episode ``(env.task, seed)``.

    ``episode.success`` is not known until the episode ends; frames carry a placeholder that the caller fills in.
    An env built with ``render=False`` yields frames without ``observation.image`` (same trajectory: rendering
    does not touch the simulation).
    """
    rng = noise_rng(env.task, seed)
    obs = env.reset(seed)
    after = None
    while True:
        action = env.expert_action(obs)
        if noise > 0:
            action = action + noise * rng.standard_normal(ACTION_DIM).astype(np.float32)
        action = np.clip(action, -1.0, 1.0).astype(np.float32)
        next_obs, success, _, info = env.step(action)
        frame = {"observation.image": obs["observation.image"]} if "observation.image" in obs else {}
        yield frame | {
            "observation.state": obs["observation.state"],
            "observation.environment_state": obs["observation.environment_state"],
            "action": action,
            "episode.seed": np.array([seed], dtype=np.int64),
            "episode.noise_std": np.array([noise], dtype=np.float32),
            "episode.success": np.array([0.0], dtype=np.float32),
            "next.success": np.array([float(success)], dtype=np.float32),
            "task": obs["task"],
        }
        obs = next_obs
        if after is None and success:
            after = 0
        elif after is not None:
            after += 1
        if info["truncated"] or (after is not None and after >= steps_after_success):
            return


@contextlib.contextmanager
def _quiet_hf_datasets() -> Iterator[None]:
    # LeRobot's save_episode runs HF `datasets.map`, which prints a tqdm bar per episode under our rich bar.
    try:
        from datasets.utils import logging as ds_logging
    except ImportError:  # pragma: no cover
        yield
        return
    was_enabled = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            ds_logging.enable_progress_bar()


def check_target(out: Path, overwrite: bool) -> None:
    """Refuse to clobber ``out`` unless ``overwrite``; even then only replace an (empty or) LeRobot dataset."""
    if not out.exists() and not out.is_symlink():
        return
    if not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
    if not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory; refusing to replace it even with --overwrite")
    if any(out.iterdir()) and not (out / "meta" / "info.json").is_file():
        raise FileExistsError(f"{out} is a non-empty folder that is not a LeRobot dataset (no meta/info.json); "
                              "refusing to replace it even with --overwrite")


def write_demos(cfg: DemoConfig, progress: Any | None = None) -> list[EpisodeRecord]:
    """Record the demonstrations of ``cfg`` into ``cfg.out`` (atomically); return one record per episode.

    Builds the dataset in a hidden sibling folder and renames it into place only after ``finalize()``, so an
    interrupted run never leaves a partial dataset at ``cfg.out`` (a crashed run's temporary folder is removed).
    ``progress``: a ``rich.progress.Progress`` to report into (optional).
    """
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from gaflow.envs.metaworld import CONTROL_FPS, MetaWorldEnv, default_max_steps

    cfg.validate()
    out = Path(cfg.out).expanduser().absolute()
    check_target(out, cfg.overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    records: list[EpisodeRecord] = []
    total = len(cfg.tasks) * cfg.episodes_per_task
    bar = progress.add_task("demos", total=total) if progress is not None else None
    ds = None
    try:
        with _quiet_hf_datasets():
            ds = LeRobotDataset.create(repo_id=f"local/{out.name}", fps=CONTROL_FPS,
                                       features=features(cfg.image_size), root=tmp, robot_type="sawyer",
                                       use_videos=False, video_backend="pyav")
            for task in cfg.tasks:
                env = MetaWorldEnv(task, image_size=cfg.image_size, camera=cfg.camera, max_steps=cfg.max_steps,
                                   render=True, terminate_on_success=False)
                try:
                    for i in range(cfg.episodes_per_task):
                        seed = cfg.seed_start + i
                        frames = list(rollout_expert(env, seed, cfg.noise, cfg.steps_after_success))
                        flags = [f["next.success"][0] > 0 for f in frames]
                        ever = any(flags)
                        for f in frames:
                            f["episode.success"][0] = float(ever)
                            ds.add_frame(f)
                        ds.save_episode()
                        records.append(EpisodeRecord(task, seed, ever, len(frames),
                                                     flags.index(True) + 1 if ever else None))
                        if progress is not None:
                            n_ok = sum(r.success for r in records)
                            progress.update(bar, advance=1, description=(
                                f"{task} seed {seed} | success {n_ok}/{len(records)}"))
                finally:
                    env.close()
            ds.finalize()
        meta = asdict(cfg)
        meta.update(out=str(out), fps=CONTROL_FPS,
                    max_steps_per_task={t: cfg.max_steps or default_max_steps(t) for t in cfg.tasks},
                    episodes=[asdict(r) for r in records])
        (tmp / "meta" / DEMO_META_FILE).write_text(json.dumps(meta, indent=2, default=str))
        _swap_into_place(tmp, out)
    except BaseException:
        if ds is not None:
            # Close LeRobot's writers first: their __del__ would otherwise flush buffered metadata into `tmp`
            # after it is removed, recreating it.
            with contextlib.suppress(Exception):
                ds.finalize()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return records


def _swap_into_place(tmp: Path, out: Path) -> None:
    if out.exists() or out.is_symlink():
        trash = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, trash)
        try:
            os.replace(tmp, out)
        except BaseException:
            os.replace(trash, out)
            raise
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, out)


__all__ = [
    "DEMO_META_FILE",
    "FEATURES",
    "DemoConfig",
    "EpisodeRecord",
    "check_target",
    "features",
    "noise_rng",
    "rollout_expert",
    "write_demos",
]

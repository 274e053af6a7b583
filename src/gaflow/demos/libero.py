"""Scripted-expert demonstrations of LIBERO tasks as a LeRobotDataset v3 (``gaflow libero-demos``).

build env + expert per task → roll out every (task, episode) camera-free → (optionally) replay each episode's
actions in a camera env after a hard reset to record images → write the dataset (:class:`DatasetWriter`:
temporary sibling folder, renamed into place).

Episode ``k`` of a task starts from init state ``inits[k mod len(inits)]`` (default: the critic split's, 0–24) with noise seed
``noise_seed + k // len(inits)``; the pair is stored with every frame (``episode.seed`` = init index,
``episode.noise_seed``) so the episode can be replayed.

Features: the env's (:func:`gaflow.envs.libero.env_info`) plus gaflow's columns (``task`` is the instruction)::

    observation.state              float32 (8,)   eef pos, eef axis-angle, gripper qpos (gaflow.envs.libero)
    observation.environment_state  float32 (D,)   object poses + fixture joints, zero-padded to the largest
                                                  task of the run; per-task layouts in meta/gaflow_libero.json
    observation.images.image       image (H,W,3)  --cameras only: agentview, upright (both axes flipped)
    observation.images.wrist_image image (H,W,3)  --cameras only: eye-in-hand, upright
    action                         float32 (7,)   the executed action (expert + noise, clipped to [−1, 1])
    episode.seed                   int64 (1,)     init-state index
    episode.noise_seed             int64 (1,)
    episode.noise_std              float32 (1,)
    episode.success                bool (1,)      the episode ended in success (same on all its frames)
    next.success                   bool (1,)      success right after this frame's action
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from gaflow.data.writer import DatasetWriter, check_target
from gaflow.envs.libero import CAMERAS, DEFAULT_IMAGE_SIZE, SUITES, env_info, task_count
from gaflow.evaluation.splits import SplitViolation
from gaflow.observations import ENV_STATE_KEY, STATE_KEY

SIDECAR = "gaflow_libero.json"
COLUMNS = ("episode.seed", "episode.noise_seed", "episode.noise_std", "episode.success", "next.success")


@dataclass
class LiberoDemoConfig:
    """What ``gaflow libero-demos`` records."""

    suite: str = "libero_spatial"
    tasks: tuple[int, ...] = (0, 1)
    episodes_per_task: int = 20
    noise: float = 0.3  # Gaussian action-noise σ added to the expert
    noise_seed: int = 0
    inits: tuple[int, ...] | None = None  # init-state indices to cycle through (None: the critic split's, 0–24)
    out: Path = Path("data/libero_demos")
    cameras: bool = False
    image_size: int = DEFAULT_IMAGE_SIZE
    overwrite: bool = False
    repo_id: str = "gaflow/libero_demos"

    def validate(self) -> None:
        if self.suite not in SUITES:
            raise ValueError(f"suite must be one of {SUITES}, got {self.suite!r}")
        n = task_count(self.suite)
        bad = [t for t in self.tasks if not 0 <= t < n]
        if not self.tasks or bad:
            raise ValueError(f"tasks must be non-empty ids in [0, {n}) for {self.suite}, got {list(self.tasks)}")
        if self.episodes_per_task <= 0:
            raise ValueError(f"episodes_per_task must be positive, got {self.episodes_per_task}")
        if self.noise < 0:
            raise ValueError(f"noise must be >= 0, got {self.noise}")
        if self.image_size <= 0:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        if self.inits is not None and (not self.inits or not all(0 <= int(i) < 50 for i in self.inits)):
            raise ValueError(f"inits must be non-empty init-state indices in [0, 50), got {self.inits}")
        held = sorted({int(i) for i in self.inits or ()} - set(critic_inits()))
        if held:
            raise SplitViolation(f"inits {held} are validation/test initial states (LIBERO_SPLITS): demonstrations "
                                 "train the base policy and may only use the critic split's inits "
                                 f"{critic_inits()[0]}–{critic_inits()[-1]}")


def critic_inits() -> list[int]:
    """The init states demonstrations may use: LIBERO_SPLITS' critic range (never validation or test)."""
    from gaflow.evaluation.splits import LIBERO_SPLITS

    a, b = LIBERO_SPLITS.ranges["critic"]
    return list(range(a, b))


def episode_name(k: int, inits: list[int] | tuple[int, ...], noise_seed: int) -> tuple[int, int]:
    """Episode ``k`` of a task → (init index, noise seed), cycling through ``inits``."""
    return int(inits[k % len(inits)]), noise_seed + k // len(inits)


def replay_images(cam_env: Any, ep: Any) -> list[dict[str, np.ndarray]]:
    """Replay ``ep``'s actions in a camera env after a hard reset; return the images of every frame.

    Raises if the replay leaves the recorded trajectory (it is bit-exact when it works)."""
    obs = cam_env.reset(ep.init_index, ep.noise_seed)
    frames = []
    for t, action in enumerate(ep.actions):
        drift = float(np.abs(obs[STATE_KEY] - ep.states[t]).max())
        if drift > 1e-5:
            raise RuntimeError(
                f"camera replay of {ep.suite} task {ep.task_id} init {ep.init_index} drifted from the recorded "
                f"episode at step {t} (max |Δstate| = {drift:.2e})"
            )
        frames.append({k: obs[k] for k in CAMERAS})
        obs, _, _, _ = cam_env.step(action)
    return frames


def record_libero_demos(cfg: LiberoDemoConfig, console: Console | None = None) -> dict[str, Any]:
    """Record the demonstrations of ``cfg`` into ``cfg.out`` (atomically). Returns a summary dict."""
    from gaflow.envs.libero import LiberoEnv
    from gaflow.experts.libero_pick_place import PickPlaceExpert, run_expert_episode

    cfg.validate()
    console = console or Console()
    out = Path(cfg.out)
    check_target(out, cfg.overwrite)  # before the minutes of building envs

    t0 = time.perf_counter()
    envs = {t: LiberoEnv(cfg.suite, t) for t in cfg.tasks}
    episodes: list[dict[str, Any]] = []
    try:
        experts = {t: PickPlaceExpert(envs[t]) for t in cfg.tasks}  # raises UnsupportedTaskError early
        layouts = {t: env.environment_state_names for t, env in envs.items()}
        dim = max(len(v) for v in layouts.values())
        info = env_info(cfg.suite, cameras=cfg.cameras, image_size=cfg.image_size, environment_state_dim=dim)
        progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=console)
        with DatasetWriter(out, info, COLUMNS, overwrite=cfg.overwrite, repo_id=cfg.repo_id) as writer, progress:
            bar = progress.add_task(f"{cfg.suite} demos", total=len(cfg.tasks) * cfg.episodes_per_task)
            for t in cfg.tasks:
                env, expert = envs[t], experts[t]
                cam_env = (LiberoEnv(cfg.suite, t, cameras=True, image_size=cfg.image_size)
                           if cfg.cameras else None)
                inits = cfg.inits if cfg.inits is not None else critic_inits()
                try:
                    for k in range(cfg.episodes_per_task):
                        init, nseed = episode_name(k, inits, cfg.noise_seed)
                        ep = run_expert_episode(env, expert, init, noise_std=cfg.noise, noise_seed=nseed)
                        images = replay_images(cam_env, ep) if cam_env is not None else None
                        for i in range(ep.steps):
                            env_state = np.zeros(dim, np.float32)  # zero-padded to the largest task
                            env_state[: ep.env_states.shape[1]] = ep.env_states[i]
                            frame = {STATE_KEY: ep.states[i], ENV_STATE_KEY: env_state, "action": ep.actions[i],
                                     "next.success": bool(ep.next_success[i]), "task": ep.task}
                            writer.add_frame(frame | (images[i] if images is not None else {}))
                        writer.save_episode({"episode.seed": init, "episode.noise_seed": nseed,
                                             "episode.noise_std": cfg.noise, "episode.success": ep.success})
                        episodes.append({"task_id": t, "init_index": init, "noise_seed": nseed,
                                         "success": ep.success, "steps": ep.steps})
                        progress.advance(bar)
                finally:
                    if cam_env is not None:
                        cam_env.close()
            writer.write_meta(SIDECAR, {
                "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
                "environment_state_dim": dim,
                "environment_state_names": {str(t): names for t, names in layouts.items()},
                "episodes": episodes,
            })
    finally:
        for env in envs.values():
            env.close()
    n_ok = sum(e["success"] for e in episodes)
    return {"out": str(out), "episodes": len(episodes), "successes": n_ok,
            "frames": sum(e["steps"] for e in episodes), "seconds": time.perf_counter() - t0}


__all__ = ["COLUMNS", "SIDECAR", "LiberoDemoConfig", "episode_name", "record_libero_demos", "replay_images"]

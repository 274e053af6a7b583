"""``gaflow libero-demos`` — scripted-expert demonstrations of LIBERO tasks as a LeRobotDataset (v3).

load config → build env + expert → roll out every (task, episode) camera-free → (optionally) replay each episode's
actions in a camera env after a hard reset to record images → write the dataset to a temporary folder → rename it
into place.

Episode ``k`` of a task starts from init state ``inits[k mod len(inits)]`` (default: all 50) with noise seed
``noise_seed + k // len(inits)``; the pair is
stored with every frame (``episode.seed`` = init index, ``episode.noise_seed``) so the episode can be replayed.

Features (per frame; ``task`` is the instruction):

    observation.state              float32 (8,)   eef pos, eef axis-angle, gripper qpos (gaflow.envs.libero)
    observation.environment_state  float32 (D,)   object poses + fixture joints, zero-padded to the largest
                                                  task of the run; per-task layouts in meta/gaflow_libero.json
    action                         float32 (7,)   the executed action (expert + noise, clipped to [−1, 1])
    episode.seed                   int64 (1,)     init-state index
    episode.noise_seed             int64 (1,)
    episode.noise_std              float32 (1,)
    episode.success                bool (1,)      the episode ended in success (same on all its frames)
    next.success                   bool (1,)      success right after this frame's action
    observation.images.image       image (H,W,3)  --cameras only: agentview, upright (both axes flipped)
    observation.images.wrist_image image (H,W,3)  --cameras only: eye-in-hand, upright
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from gaflow.cli import app

FEATURE_STATE = "observation.state"
FEATURE_ENV_STATE = "observation.environment_state"
SIDECAR = "gaflow_libero.json"


@dataclass
class LiberoDemoConfig:
    """What ``gaflow libero-demos`` records."""

    suite: str = "libero_spatial"
    tasks: tuple[int, ...] = (0, 1)
    episodes_per_task: int = 20
    noise: float = 0.3  # Gaussian action-noise σ added to the expert
    noise_seed: int = 0
    inits: tuple[int, ...] | None = None  # init-state indices to cycle through (None: all; keep test inits out)
    out: Path = Path("data/libero_demos")
    cameras: bool = False
    image_size: int = 128
    overwrite: bool = False
    repo_id: str = "gaflow/libero_demos"

    def validate(self) -> None:
        from gaflow.envs.libero import SUITES, task_count

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


def episode_name(k: int, inits: list[int] | tuple[int, ...], noise_seed: int) -> tuple[int, int]:
    """Episode ``k`` of a task → (init index, noise seed), cycling through ``inits``."""
    return int(inits[k % len(inits)]), noise_seed + k // len(inits)


def _features(env_state_dim: int, cameras: bool, image_size: int) -> dict[str, dict[str, Any]]:
    feats: dict[str, dict[str, Any]] = {
        FEATURE_STATE: {"dtype": "float32", "shape": (8,), "names": [
            "eef_x", "eef_y", "eef_z", "eef_axis_angle_x", "eef_axis_angle_y", "eef_axis_angle_z",
            "gripper_qpos_left", "gripper_qpos_right"]},
        FEATURE_ENV_STATE: {"dtype": "float32", "shape": (env_state_dim,), "names": None},
        "action": {"dtype": "float32", "shape": (7,), "names": [
            "dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"]},
        "episode.seed": {"dtype": "int64", "shape": (1,), "names": None},
        "episode.noise_seed": {"dtype": "int64", "shape": (1,), "names": None},
        "episode.noise_std": {"dtype": "float32", "shape": (1,), "names": None},
        "episode.success": {"dtype": "bool", "shape": (1,), "names": None},
        "next.success": {"dtype": "bool", "shape": (1,), "names": None},
    }
    if cameras:
        from gaflow.envs.libero import CAMERAS

        for key in CAMERAS:
            feats[key] = {"dtype": "image", "shape": (image_size, image_size, 3),
                          "names": ["height", "width", "channels"]}
    return feats


def _replay_images(cam_env: Any, ep: Any) -> list[dict[str, np.ndarray]]:
    """Replay ``ep``'s actions in a camera env after a hard reset; return the images of every frame.

    Raises if the replay leaves the recorded trajectory (it is bit-exact when it works)."""
    from gaflow.envs.libero import CAMERAS

    obs = cam_env.reset(ep.init_index, ep.noise_seed)
    frames = []
    for t, action in enumerate(ep.actions):
        drift = float(np.abs(obs[FEATURE_STATE] - ep.states[t]).max())
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
    cfg.validate()
    console = console or Console()
    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import datasets
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    datasets.disable_progress_bars()  # one rich bar is enough

    from gaflow.envs.libero import CONTROL_FPS, LiberoEnv
    from gaflow.experts.libero_pick_place import PickPlaceExpert, run_expert_episode

    t0 = time.perf_counter()
    envs = {t: LiberoEnv(cfg.suite, t) for t in cfg.tasks}
    experts = {t: PickPlaceExpert(envs[t]) for t in cfg.tasks}  # raises UnsupportedTaskError early
    layouts = {}
    for t, env in envs.items():
        layouts[t] = env.environment_state_names
    dim = max(len(v) for v in layouts.values())

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_parent = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    root = tmp_parent / "dataset"
    episodes: list[dict[str, Any]] = []
    try:
        ds = LeRobotDataset.create(
            repo_id=cfg.repo_id, fps=CONTROL_FPS, features=_features(dim, cfg.cameras, cfg.image_size),
            root=root, robot_type="panda", use_videos=False, video_backend="pyav",
        )
        total = len(cfg.tasks) * cfg.episodes_per_task
        progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=console)
        with progress:
            bar = progress.add_task(f"{cfg.suite} demos", total=total)
            for t in cfg.tasks:
                env, expert = envs[t], experts[t]
                cam_env = (LiberoEnv(cfg.suite, t, cameras=True, image_size=cfg.image_size)
                           if cfg.cameras else None)
                inits = cfg.inits if cfg.inits is not None else range(env.num_init_states)
                try:
                    for k in range(cfg.episodes_per_task):
                        init, nseed = episode_name(k, inits, cfg.noise_seed)
                        ep = run_expert_episode(env, expert, init, noise_std=cfg.noise, noise_seed=nseed)
                        images = _replay_images(cam_env, ep) if cam_env is not None else None
                        for i in range(ep.steps):
                            env_state = np.zeros(dim, np.float32)
                            env_state[: ep.env_states.shape[1]] = ep.env_states[i]
                            frame = {
                                FEATURE_STATE: ep.states[i].astype(np.float32),
                                FEATURE_ENV_STATE: env_state,
                                "action": ep.actions[i].astype(np.float32),
                                "episode.seed": np.array([init], np.int64),
                                "episode.noise_seed": np.array([nseed], np.int64),
                                "episode.noise_std": np.array([cfg.noise], np.float32),
                                "episode.success": np.array([ep.success], bool),
                                "next.success": np.array([ep.next_success[i]], bool),
                                "task": ep.task,
                            }
                            if images is not None:
                                frame.update(images[i])
                            ds.add_frame(frame)
                        ds.save_episode()
                        episodes.append({"task_id": t, "init_index": init, "noise_seed": nseed,
                                         "success": ep.success, "steps": ep.steps})
                        progress.advance(bar)
                finally:
                    if cam_env is not None:
                        cam_env.close()
        ds.finalize()
        sidecar = {
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
            "environment_state_dim": dim,
            "environment_state_names": {str(t): names for t, names in layouts.items()},
            "episodes": episodes,
        }
        (root / "meta" / SIDECAR).write_text(json.dumps(sidecar, indent=1))
        if out.exists():  # --overwrite: move the old one aside, then swap in the new one
            trash = tmp_parent / "old"
            os.replace(out, trash)
        os.replace(root, out)
    finally:
        for env in envs.values():
            env.close()
        shutil.rmtree(tmp_parent, ignore_errors=True)
    n_ok = sum(e["success"] for e in episodes)
    summary = {"out": str(out), "episodes": len(episodes), "successes": n_ok,
               "frames": sum(e["steps"] for e in episodes), "seconds": time.perf_counter() - t0}
    return summary


def _parse_tasks(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter(f"--tasks must be comma-separated integers, got {text!r}") from None


@app.command("libero-demos")
def libero_demos(
    suite: str = typer.Option("libero_spatial", help="libero_spatial | libero_object | libero_goal | ..."),
    tasks: str = typer.Option("0,1", help="comma-separated task ids"),
    episodes_per_task: int = typer.Option(20, help="episodes per task (cycling through the init states)"),
    inits: str = typer.Option(None, help="init-state indices to use, e.g. 0-24 (default: all 50; keep the "
                              "validation/test inits of gaflow.evaluation.splits.LIBERO_SPLITS out)"),
    noise: float = typer.Option(0.3, help="Gaussian action-noise σ added to the expert"),
    noise_seed: int = typer.Option(0, help="base noise seed"),
    out: Path = typer.Option(Path("data/libero_demos"), help="dataset folder (LeRobotDataset v3)"),
    cameras: bool = typer.Option(False, "--cameras", help="record agentview + wrist images (slow: ~40 s/episode)"),
    image_size: int = typer.Option(128, help="image height = width"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing dataset"),
) -> None:
    """Record scripted-expert demonstrations of LIBERO pick-and-place tasks as a LeRobotDataset."""
    from gaflow.evaluation.splits import parse_seeds

    console = Console()
    cfg = LiberoDemoConfig(suite=suite, tasks=_parse_tasks(tasks), episodes_per_task=episodes_per_task,
                           noise=noise, noise_seed=noise_seed, out=out,
                           inits=tuple(parse_seeds(inits)) if inits else None, cameras=cameras, image_size=image_size,
                           overwrite=overwrite)
    try:
        summary = record_libero_demos(cfg, console)
    except (ValueError, FileExistsError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    console.print(
        f"[bold]libero-demos[/bold]: {summary['episodes']} episodes ({summary['successes']} successful), "
        f"{summary['frames']} frames → {summary['out']} in {summary['seconds']:.0f} s"
    )


__all__ = ["LiberoDemoConfig", "episode_name", "record_libero_demos"]

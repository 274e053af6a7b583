"""The one LeRobotDataset v3 writer: every dataset gaflow records (scripted demonstrations, collected rollouts)
goes through :class:`DatasetWriter`.

A dataset is described by its env (an :class:`~gaflow.envs.base.EnvInfo`, or anything with ``fps``,
``robot_type`` and ``lerobot_features()``): the env's observation features and ``action``, at the env's control
rate, plus the per-frame/per-episode ``columns`` a recording adds, whose dtypes are fixed here once for all of
gaflow (:data:`COLUMNS`). ``episode.success`` and ``next.success`` are **bool** — LeRobot's own convention for
success flags; readers (``gaflow.data.dataset.episode_table``, the compact policy's ``successful_only``) also
accept the float32 0/1 of datasets written before.

Atomic: the dataset is built in a hidden sibling folder ``.<name>.tmp-<pid>-<random>/``, finalised, and renamed
into place only when the writer is closed without an error; an exception (or Ctrl-C) inside the ``with`` block
finalises LeRobot's writers, deletes the temporary folder and leaves whatever was at the target untouched.
Images are stored inside the parquet files (``use_videos=False``): no FFmpeg.

>>> with DatasetWriter("data/demos", env_info("toy"), columns=("episode.seed", "episode.success",
...                    "next.success")) as writer:                                  # doctest: +SKIP
...     for t in range(n):
...         writer.add_frame({"observation.state": s[t], "observation.environment_state": s[t],
...                           "action": a[t], "next.success": ok[t], "task": "move the point to the goal"})
...     writer.save_episode({"episode.seed": 3, "episode.success": any(ok)})
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from gaflow.data.dataset import hub_offline
from gaflow.observations import TASK_KEY

# Columns a recording adds to the env's features. Per-episode columns (``episode.*``) hold the same value on every
# frame of an episode and are given to ``save_episode``; the others are per frame.
COLUMNS: dict[str, dict[str, Any]] = {
    "episode.seed": {"dtype": "int64", "shape": (1,), "names": None},  # with the task: the episode's identity
    "episode.noise_seed": {"dtype": "int64", "shape": (1,), "names": None},
    "episode.noise_std": {"dtype": "float32", "shape": (1,), "names": None},  # σ of the action noise
    "episode.success": {"dtype": "bool", "shape": (1,), "names": None},  # the episode ever succeeded
    "next.success": {"dtype": "bool", "shape": (1,), "names": None},  # success right after this frame's action
}
EPISODE_PREFIX = "episode."


class EnvDescription(Protocol):
    """What the writer needs of an env's description (:class:`gaflow.envs.base.EnvInfo` is one)."""

    fps: int
    robot_type: str | None

    def lerobot_features(self) -> dict[str, dict[str, Any]]: ...


def check_target(out: str | os.PathLike, overwrite: bool) -> None:
    """Refuse to clobber ``out`` unless ``overwrite``; even then only replace an empty folder or a LeRobot dataset."""
    out = Path(out)
    if not out.exists() and not out.is_symlink():
        return
    if not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
    if not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory; refusing to replace it even with --overwrite")
    if any(out.iterdir()) and not (out / "meta" / "info.json").is_file():
        raise FileExistsError(f"{out} is a non-empty folder that is not a LeRobot dataset (no meta/info.json); "
                              "refusing to replace it even with --overwrite")


def replace_dir(src: Path, dst: Path, trash: Path) -> None:
    """Move folder ``src`` to ``dst``, replacing what is there (moved to ``trash`` first, restored if the second
    rename fails). Renames within one file system: ``dst`` is never a half-copied folder."""
    if dst.exists() or dst.is_symlink():
        os.replace(dst, trash)
        try:
            os.replace(src, dst)
        except BaseException:
            os.replace(trash, dst)
            raise
    else:
        os.replace(src, dst)


def _remove_stale_temporaries(out: Path) -> None:
    # Left by a writer that was killed (SIGKILL skips every cleanup): .<name>.tmp-<pid>-*, with <pid> gone.
    for tmp in out.parent.glob(f".{out.name}.tmp-*-*"):
        pid = tmp.name[len(f".{out.name}.tmp-"):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except PermissionError:  # alive, someone else's
            pass


@contextlib.contextmanager
def _quiet_hf_datasets() -> Iterator[None]:
    # LeRobot's save_episode runs HF `datasets.map`, which prints a tqdm bar per episode under the caller's bar.
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


class DatasetWriter:
    """Write one LeRobotDataset v3 at ``root`` from an env description and extra ``columns``.

    Args:
        root: the dataset folder to create.
        env: an :class:`~gaflow.envs.base.EnvInfo` (features, ``fps``, ``robot_type``); pass
            ``info.select(keys)`` to store only some of its observation keys.
        columns: names from :data:`COLUMNS` (their dtypes are gaflow's, the same in every dataset).
        overwrite: replace an existing dataset (or empty folder) at ``root`` (:func:`check_target`).
        repo_id: LeRobot's repo id, default ``local/<folder name>`` (what :func:`gaflow.data.load_dataset` uses).

    Use it as a context manager: ``add_frame`` each frame of an episode, ``save_episode(values)`` with the
    episode's ``episode.*`` values, ``write_meta`` for sidecar files; leaving the block finalises and swaps the
    dataset into place, or, on an exception, removes everything and re-raises.
    """

    def __init__(self, root: str | os.PathLike, env: EnvDescription, columns: Iterable[str] = (), *,
                 overwrite: bool = False, repo_id: str | None = None) -> None:
        self.root = Path(root).expanduser().absolute()
        self.fps = int(env.fps)
        features = dict(env.lerobot_features())
        for name in columns:
            if name not in COLUMNS:
                raise ValueError(f"column {name!r} is not one of gaflow's dataset columns {sorted(COLUMNS)}")
            if name in features:
                raise ValueError(f"column {name!r} is already an env feature")
            features[name] = dict(COLUMNS[name])
        self.features = features
        self.episode_columns = tuple(k for k in features if k.startswith(EPISODE_PREFIX))
        self.frame_columns = tuple(k for k in features if not k.startswith(EPISODE_PREFIX))
        self.num_episodes = 0
        self.num_frames = 0
        self._frames: list[dict[str, Any]] = []
        self._closed = False

        check_target(self.root, overwrite)
        self.root.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(self.root)
        # A fresh uniquely named folder (mkdtemp), holding the dataset (`dataset/`) and, during the swap, the
        # replaced one (`old/`): cleaning up is one rmtree.
        self._holder = Path(tempfile.mkdtemp(prefix=f".{self.root.name}.tmp-{os.getpid()}-", dir=self.root.parent))
        self._tmp = self._holder / "dataset"
        self._context = contextlib.ExitStack()
        self._ds: Any = None
        try:
            self._context.enter_context(_quiet_hf_datasets())
            self._context.enter_context(hub_offline())  # writing a local dataset never talks to the hub
            from lerobot.datasets.lerobot_dataset import LeRobotDataset

            self._ds = LeRobotDataset.create(repo_id=repo_id or f"local/{self.root.name}", fps=self.fps,
                                             features=features, root=self._tmp, robot_type=env.robot_type,
                                             use_videos=False, video_backend="pyav")
        except BaseException:
            self.abort()
            raise

    # -- recording ---------------------------------------------------------------------------------------------
    def add_frame(self, frame: Mapping[str, Any]) -> None:
        """Add one frame of the current episode: every env feature, the per-frame columns, and ``task`` (the
        instruction). Scalars and tensors are converted; a missing, extra or misshapen value raises, naming it."""
        self._check_open()
        missing = [k for k in (*self.frame_columns, TASK_KEY) if k not in frame]
        extra = [k for k in frame if k not in self.frame_columns and k != TASK_KEY]
        if missing or extra:
            raise ValueError(f"frame {len(self._frames)} of episode {self.num_episodes}: missing {missing}, "
                             f"unexpected {extra} (episode.* values go to save_episode)")
        row = {k: self._convert(k, frame[k]) for k in self.frame_columns}
        row[TASK_KEY] = str(frame[TASK_KEY])
        self._frames.append(row)

    def save_episode(self, values: Mapping[str, Any] | None = None) -> None:
        """End the current episode; ``values`` holds its ``episode.*`` columns (one value each)."""
        self._check_open()
        values = dict(values or {})
        missing = [k for k in self.episode_columns if k not in values]
        extra = [k for k in values if k not in self.episode_columns]
        if missing or extra:
            raise ValueError(f"episode {self.num_episodes}: missing {missing}, unexpected {extra} "
                             f"(this dataset's episode columns are {list(self.episode_columns)})")
        if not self._frames:
            raise ValueError(f"episode {self.num_episodes} has no frames")
        episode = {k: self._convert(k, v) for k, v in values.items()}
        for row in self._frames:
            self._ds.add_frame(row | {k: v.copy() for k, v in episode.items()})
        self._ds.save_episode()
        self.num_episodes += 1
        self.num_frames += len(self._frames)
        self._frames = []

    def add_episode(self, frames: Iterable[Mapping[str, Any]], values: Mapping[str, Any] | None = None) -> None:
        """``add_frame`` every frame, then ``save_episode(values)``."""
        for frame in frames:
            self.add_frame(frame)
        self.save_episode(values)

    def write_meta(self, name: str, obj: Any) -> Path:
        """Write ``obj`` as JSON to ``meta/<name>`` of the dataset (moved into place with it)."""
        self._check_open()
        path = self._tmp / "meta" / name
        path.write_text(json.dumps(obj, indent=2, default=str))
        return path

    # -- ending ------------------------------------------------------------------------------------------------
    def close(self) -> Path:
        """Finalise the dataset and swap it into place at ``root``; returns ``root``."""
        self._check_open()
        self._closed = True
        try:
            if self._frames:
                raise RuntimeError(f"{len(self._frames)} frames added after the last save_episode")
            self._ds.finalize()
            self._ds = None
            replace_dir(self._tmp, self.root, self._holder / "old")
        except BaseException:
            self.abort()
            raise
        self._cleanup()
        return self.root

    def abort(self) -> None:
        """Drop everything written so far; the target is left as it was."""
        self._closed = True
        if self._ds is not None:
            # Close LeRobot's parquet writers first: their __del__ would otherwise flush buffered metadata into
            # the temporary folder after it is removed, recreating it.
            with contextlib.suppress(Exception):
                self._ds.finalize()
            self._ds = None
        self._frames = []
        self._cleanup()

    def _cleanup(self) -> None:
        shutil.rmtree(self._holder, ignore_errors=True)
        self._context.close()

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._closed:
            return
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- helpers -----------------------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"the writer of {self.root} is closed")

    def _convert(self, key: str, value: Any) -> np.ndarray:
        spec = self.features[key]
        if hasattr(value, "detach"):  # a torch tensor
            value = value.detach().cpu().numpy()
        arr = np.asarray(value)
        shape = tuple(spec["shape"])
        if arr.shape != shape and not (shape == (1,) and arr.size == 1):  # (1,) columns also take a scalar
            raise ValueError(f"{key!r} must have shape {shape} ({spec['dtype']}), got shape {arr.shape}")
        if spec["dtype"] == "image" and arr.dtype != np.uint8:
            raise ValueError(f"{key!r} is an image: uint8 (H, W, 3) expected, got {arr.dtype}")
        return arr.reshape(shape).astype(np.uint8 if spec["dtype"] == "image" else np.dtype(spec["dtype"]), copy=True)


__all__ = ["COLUMNS", "DatasetWriter", "EnvDescription", "check_target", "replace_dir"]

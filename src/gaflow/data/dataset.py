"""Load a local LeRobotDataset v3 (e.g. one written by ``gaflow demos``) for training.

``load_dataset(root, chunk_len=H)`` returns LeRobot's own ``LeRobotDataset``: item ``i`` is frame ``i`` with
``action`` replaced by the chunk of the next H actions (``(H, 4)``) and ``action_is_pad`` (``(H,)`` bool) true
where the chunk runs past the episode's end (LeRobot repeats the last action there). Images come as float32
``(3, H, W)`` in [0, 1] — the format :func:`gaflow.observations.stack_observations` produces from the env.
Per-frame features of shape ``(1,)`` (``episode.seed``, ``next.success``, ...) come back as scalars.

The folder is checked before LeRobot sees it: LeRobot would otherwise create a missing folder and try to
download anything missing from the Hugging Face hub.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

REQUIRED_FEATURES: tuple[str, ...] = (
    "observation.image",
    "observation.state",
    "observation.environment_state",
    "action",
)
EPISODE_FEATURES: tuple[str, ...] = ("episode.seed", "episode.noise_std", "episode.success")


class DatasetError(ValueError):
    """The folder is not a usable LeRobot v3 dataset; the message names the file or feature at fault."""


def read_info(root: str | Path) -> dict[str, Any]:
    """Validate the layout of a local LeRobot v3 dataset and return its ``meta/info.json``."""
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"dataset folder {root} does not exist (record one with `gaflow demos --out {root}`)")
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder")
    info_path = root / "meta" / "info.json"
    if not info_path.is_file():
        raise DatasetError(f"{root} is not a LeRobot dataset: {info_path} is missing")
    try:
        info = json.loads(info_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{info_path} is not valid JSON ({exc})") from exc
    if not isinstance(info, dict):
        raise DatasetError(f"{info_path} must hold a JSON object")
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v3"):
        raise DatasetError(f"{info_path}: codebase_version is {version or '(missing)'!r}, gaflow reads LeRobot v3.x")
    for key in ("fps", "features", "total_episodes"):
        if key not in info:
            raise DatasetError(f"{info_path} has no {key!r} field")
    if not isinstance(info["features"], dict):
        raise DatasetError(f"{info_path}: 'features' must be an object")
    tasks = root / "meta" / "tasks.parquet"
    if not tasks.is_file():
        raise DatasetError(f"{root} is incomplete: {tasks} is missing")
    if not any((root / "meta" / "episodes").glob("*/*.parquet")):
        raise DatasetError(f"{root} is incomplete: no episode metadata under {root / 'meta' / 'episodes'} "
                           "(was finalize() called?)")
    if not any((root / "data").glob("*/*.parquet")):
        raise DatasetError(f"{root} is incomplete: no data files under {root / 'data'}")
    return info


def check_features(info: dict[str, Any], required: Iterable[str], where: str | Path) -> None:
    missing = [k for k in required if k not in info["features"]]
    if missing:
        raise DatasetError(f"{where} lacks required feature(s) {', '.join(map(repr, missing))}; "
                           f"it has {', '.join(sorted(info['features']))}")


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    # A local dataset must never turn into a hub download (LeRobot falls back to one when files are missing).
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover
        yield
        return
    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def load_dataset(
    root: str | Path,
    chunk_len: int | None = None,
    *,
    episodes: list[int] | None = None,
    required_features: Iterable[str] = REQUIRED_FEATURES,
) -> Any:
    """Open the LeRobot v3 dataset in ``root`` (repo_id ``local/<folder name>``, PyAV video backend).

    ``chunk_len``: when set, each item's ``action`` is the chunk ``(chunk_len, action_dim)`` of this and the
    next ``chunk_len − 1`` actions with ``action_is_pad`` marking steps past the episode end.
    ``episodes``: restrict to these episode indices.
    """
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = Path(root).expanduser()
    info = read_info(root)
    check_features(info, required_features, root / "meta" / "info.json")
    delta_timestamps = None
    if chunk_len is not None:
        if int(chunk_len) < 1:
            raise ValueError(f"chunk_len must be >= 1, got {chunk_len}")
        fps = float(info["fps"])
        delta_timestamps = {"action": [k / fps for k in range(int(chunk_len))]}
    try:
        with hub_offline():
            return LeRobotDataset(f"local/{root.name}", root=root, episodes=episodes, video_backend="pyav",
                                  delta_timestamps=delta_timestamps)
    except Exception as exc:
        raise DatasetError(f"could not load the LeRobot dataset in {root}: {type(exc).__name__}: {exc}") from exc


def episode_table(ds: Any) -> list[dict[str, Any]]:
    """One row per episode of ``ds``: episode_index, task, seed, noise_std, success, length.

    ``seed``/``noise_std``/``success`` are ``None`` for datasets without the ``episode.*`` features.
    """
    meta_eps = ds.meta.episodes
    rows: dict[int, dict[str, Any]] = {}
    for ep in meta_eps:
        tasks = ep["tasks"]
        rows[int(ep["episode_index"])] = {
            "episode_index": int(ep["episode_index"]),
            "task": tasks[0] if isinstance(tasks, list) and len(tasks) == 1 else tasks,
            "seed": None,
            "noise_std": None,
            "success": None,
            "length": int(ep["length"]),
        }
    present = [k for k in EPISODE_FEATURES if k in ds.meta.features]
    if present:
        cols = ds.hf_dataset.with_format(None).select_columns(["episode_index", *present]).to_pandas()
        firsts = cols.groupby("episode_index", sort=True).first()
        for ep_idx, row in firsts.iterrows():
            r = rows.get(int(ep_idx))
            if r is None:
                continue
            if "episode.seed" in present:
                r["seed"] = int(_scalar(row["episode.seed"]))
            if "episode.noise_std" in present:
                r["noise_std"] = round(float(_scalar(row["episode.noise_std"])), 6)  # stored as float32
            if "episode.success" in present:  # bool (gaflow's dtype) or float32 0/1 (datasets written before)
                r["success"] = bool(_scalar(row["episode.success"]) > 0.5)
    wanted = set(ds.episodes) if ds.episodes is not None else None
    return [r for i, r in sorted(rows.items()) if wanted is None or i in wanted]


def _scalar(v: Any) -> Any:
    try:
        return v[0]
    except (TypeError, IndexError, KeyError):
        return v


__all__ = [
    "EPISODE_FEATURES",
    "REQUIRED_FEATURES",
    "DatasetError",
    "check_features",
    "episode_table",
    "hub_offline",
    "load_dataset",
    "read_info",
]

"""Demonstrations for :class:`~gaflow.policies.compact.CompactFlowPolicy` training: a LeRobotDataset read into memory
once, each frame's action-chunk indices, the dataset/config checks, and the image augmentation.

``load_demo_frames(root)`` decodes every image once (PNG cells, or video one episode per call) and keeps them uint8,
so a training step is a few tensor gathers (:meth:`DemoFrames.chunk_indices` builds every frame's chunk and
``action_is_pad`` mask with tensor ops). ``root`` may name several folders and keep only some tasks of each
(``"a,b::push+pick-place"``); task names that are not the dataset's own task strings are resolved by the caller's
``describe_task`` (the CLI passes MetaWorld's task descriptions), so this module knows no environment.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gaflow.policies.compact.config import CompactPolicyConfig
from gaflow.policies.compact.modeling import ACTION_KEY, ENV_STATE_KEY, IMAGE_KEY, STATE_KEY

# A task name used in a ``path::name`` filter → the task string a dataset stores; raises KeyError or ValueError
# for a name it does not know.
DescribeTask = Callable[[str], str]


@dataclass
class DemoFrames:
    """A whole demonstrations dataset in memory (row ``i`` = frame ``i``)."""

    images: torch.Tensor | None  # (N, S, S, 3) uint8
    state: torch.Tensor  # (N, state_dim)
    env_state: torch.Tensor | None  # (N, env_state_dim)
    actions: torch.Tensor  # (N, action_dim)
    episode_index: torch.Tensor  # (N,)
    task_index: torch.Tensor  # (N,) into `tasks`
    tasks: list[str]
    root: str

    def __len__(self) -> int:
        return self.actions.shape[0]

    @property
    def num_episodes(self) -> int:
        return int(torch.unique(self.episode_index).numel())

    def chunk_indices(self, chunk_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, H)`` frame indices of each frame's action chunk and its ``action_is_pad`` mask (steps past the
        episode's end repeat its last action, as LeRobot's delta_timestamps padding does)."""
        n = len(self)
        ep = self.episode_index
        starts = torch.ones(n, dtype=torch.bool)
        starts[1:] = ep[1:] != ep[:-1]
        if not bool((torch.diff(ep[starts]) != 0).all()):
            raise ValueError(f"{self.root}: frames of an episode are not contiguous")
        ends = torch.ones(n, dtype=torch.bool)
        ends[:-1] = ep[1:] != ep[:-1]
        last = torch.nonzero(ends).squeeze(1)  # last frame of each episode, in order
        seg = torch.cumsum(starts.long(), 0) - 1  # segment id of each frame
        last_of_frame = last[seg]  # (N,)
        idx = torch.arange(n).unsqueeze(1) + torch.arange(chunk_len).unsqueeze(0)  # (N, H)
        pad = idx > last_of_frame.unsqueeze(1)
        return torch.minimum(idx, last_of_frame.unsqueeze(1)), pad


def _column(hf, key: str, root: str) -> np.ndarray:
    if key not in hf.column_names:
        raise ValueError(f"dataset {root} has no feature {key!r} (it has {sorted(hf.column_names)})")
    return np.asarray(hf.with_format("numpy")[key])


def load_demo_frames(
    root: str | Path | list[str | Path],
    *,
    need_images: bool = True,
    need_env_state: bool = False,
    max_episodes_per_task: int | None = None,
    successful_only: bool = False,
    describe_task: DescribeTask | None = None,
) -> DemoFrames:
    """Read a LeRobotDataset v3 folder into memory tensors in one pass (no per-sample ``__getitem__``).

    Images stored in parquet (``use_videos=False``) are decoded from PNG once; images stored as video are decoded
    one episode per call. Raises ``ValueError`` naming the folder and the feature when something is missing.
    Several folders (a list, or one string with commas) are concatenated; tasks are matched by their string.
    ``path::push+pick-place`` keeps only those tasks of that folder: each name is one of the folder's task strings
    or, failing that, ``describe_task(name)`` is (e.g. MetaWorld's ``"push"`` → ``"push the puck to the goal"``).
    """
    roots = list(root) if isinstance(root, (list, tuple)) else str(root).split(",")
    kw = dict(need_images=need_images, need_env_state=need_env_state,
              max_episodes_per_task=max_episodes_per_task, successful_only=successful_only, describe_task=describe_task)
    parts = []
    for entry in roots:
        path, _, only = str(entry).strip().partition("::")
        parts.append(_load_one(Path(path), only=[t for t in only.split("+") if t] or None, **kw))
    if len(parts) == 1:
        return parts[0]
    tasks = sorted({t for p in parts for t in p.tasks})
    ep_offset, task_idx, eps = 0, [], []
    for p in parts:
        remap = torch.tensor([tasks.index(t) for t in p.tasks], dtype=torch.long)
        task_idx.append(remap[p.task_index])
        eps.append(p.episode_index + ep_offset)
        ep_offset = int(eps[-1].max()) + 1

    def cat(name: str):
        xs = [getattr(p, name) for p in parts]
        return None if any(x is None for x in xs) else torch.cat(xs)

    return DemoFrames(images=cat("images"), state=cat("state"), env_state=cat("env_state"), actions=cat("actions"),
                      episode_index=torch.cat(eps), task_index=torch.cat(task_idx), tasks=tasks,
                      root=",".join(p.root for p in parts))


def _load_one(
    root: Path,
    *,
    need_images: bool,
    need_env_state: bool,
    max_episodes_per_task: int | None,
    successful_only: bool,
    describe_task: DescribeTask | None,
    only: list[str] | None = None,
) -> DemoFrames:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    if not (root / "meta" / "info.json").exists():
        raise FileNotFoundError(f"{root} is not a LeRobotDataset folder (no meta/info.json)")
    ds = LeRobotDataset(repo_id=f"local/{root.name}", root=root, video_backend="pyav")
    hf = ds.hf_dataset
    r = str(root)
    episode_index = torch.from_numpy(_column(hf, "episode_index", r).astype(np.int64).reshape(-1))
    task_index = torch.from_numpy(_column(hf, "task_index", r).astype(np.int64).reshape(-1))
    tasks_df = ds.meta.tasks
    tasks = [str(name) for name in sorted(tasks_df.index, key=lambda s: int(tasks_df.loc[s, "task_index"]))]

    keep = torch.ones(len(episode_index), dtype=torch.bool)
    if only is not None:
        wanted = [_match_task(t, tasks, r, describe_task) for t in only]
        keep &= torch.isin(task_index, torch.tensor(wanted, dtype=torch.long))
    if successful_only:
        if "episode.success" not in hf.column_names:
            raise ValueError(f"dataset {r} has no feature 'episode.success' (needed by successful_only)")
        keep &= torch.from_numpy(_column(hf, "episode.success", r).reshape(-1).astype(bool))
    if max_episodes_per_task is not None:
        chosen: dict[int, list[int]] = {}
        for ep, ti in torch.unique(torch.stack([episode_index[keep], task_index[keep]], 1), dim=0).tolist():
            chosen.setdefault(ti, []).append(ep)
        allowed = {e for eps in chosen.values() for e in sorted(eps)[:max_episodes_per_task]}
        keep &= torch.tensor([int(e) in allowed for e in episode_index.tolist()])
    rows = torch.nonzero(keep).squeeze(1)
    if rows.numel() == 0:
        raise ValueError(f"dataset {r}: no frames left after filtering")

    def col(key: str) -> torch.Tensor:
        x = torch.from_numpy(np.stack(_column(hf, key, r)).astype(np.float32))
        x = x.reshape(x.shape[0], -1)[rows]
        return x

    images = None
    if need_images:
        images = _load_images(ds, hf, r)[rows]
    used = sorted(set(task_index[rows].tolist()))  # keep only the tasks that remain, re-indexed
    remap = torch.full((len(tasks),), -1, dtype=torch.long)
    remap[torch.tensor(used)] = torch.arange(len(used))
    return DemoFrames(
        images=images,
        state=col(STATE_KEY),
        env_state=col(ENV_STATE_KEY) if need_env_state else None,
        actions=col(ACTION_KEY),
        episode_index=episode_index[rows],
        task_index=remap[task_index[rows]],
        tasks=[tasks[i] for i in used],
        root=r + (f"::{'+'.join(only)}" if only else ""),
    )


def _match_task(name: str, tasks: list[str], root: str, describe_task: DescribeTask | None) -> int:
    """Index of task ``name`` in a dataset's task strings: the string itself, or ``describe_task(name)``."""
    if name in tasks:
        return tasks.index(name)
    try:
        desc = describe_task(name) if describe_task is not None else None
    except (ValueError, KeyError):
        desc = None
    if desc in tasks:
        return tasks.index(desc)
    raise ValueError(f"dataset {root} has no task {name!r}; its tasks are {tasks}")


def _load_images(ds, hf, root: str) -> torch.Tensor:
    if IMAGE_KEY not in ds.meta.features:
        raise ValueError(f"dataset {root} has no feature {IMAGE_KEY!r} (use_image=False trains without images)")
    if IMAGE_KEY in ds.meta.video_keys:
        from lerobot.datasets.video_utils import decode_video_frames

        ts_all = _column(hf, "timestamp", root).reshape(-1)
        eps = _column(hf, "episode_index", root).reshape(-1)
        out = []
        for ep in np.unique(eps):  # frames are stored episode by episode
            meta = ds.meta.episodes[int(ep)]
            path = ds.root / ds.meta.get_video_file_path(int(ep), IMAGE_KEY)
            ts = [float(meta[f"videos/{IMAGE_KEY}/from_timestamp"]) + float(t) for t in ts_all[eps == ep]]
            frames = decode_video_frames(path, ts, ds.tolerance_s, "pyav", return_uint8=True)
            out.append(frames.reshape(len(ts), *frames.shape[-3:]).permute(0, 2, 3, 1))
        return torch.cat(out).contiguous()
    from PIL import Image

    col = hf.data.column(IMAGE_KEY)
    imgs = []
    for cell in col.to_pylist():
        if cell is None or cell.get("bytes") is None:
            raise ValueError(f"dataset {root}: an {IMAGE_KEY!r} cell holds no image bytes")
        imgs.append(np.asarray(Image.open(io.BytesIO(cell["bytes"])).convert("RGB")))
    return torch.from_numpy(np.stack(imgs))


def random_shift(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """DrQ random shift: replicate-pad by ``pad`` pixels and crop back at a random offset per image."""
    if pad <= 0:
        return images
    b, c, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad), mode="replicate")
    off = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator)
    return torch.stack([padded[i, :, y: y + h, x: x + w] for i, (y, x) in enumerate(off.tolist())])


def check_dataset_matches(config: CompactPolicyConfig, frames: DemoFrames) -> None:
    """Raise a clear error when a dataset cannot train (or continue training) a policy with ``config``."""
    checks = [("action", frames.actions.shape[1], config.action_dim, "action_dim"),
              (STATE_KEY, frames.state.shape[1], config.state_dim, "state_dim")]
    if config.use_env_state and frames.env_state is not None:
        checks.append((ENV_STATE_KEY, frames.env_state.shape[1], config.env_state_dim, "env_state_dim"))
    for key, got, want, field_name in checks:
        if got != want:
            raise ValueError(
                f"dataset {frames.root}: {key!r} has dimension {got}, but the policy config has {field_name}={want}"
            )
    if config.use_image:
        if frames.images is None:
            raise ValueError(f"dataset {frames.root}: no images loaded, but the policy config has use_image=True")
        s = config.image_size
        if tuple(frames.images.shape[1:]) != (s, s, 3):
            raise ValueError(
                f"dataset {frames.root}: {IMAGE_KEY!r} frames are {tuple(frames.images.shape[1:])}, but the policy "
                f"config has image_size={s} (expects ({s}, {s}, 3))"
            )

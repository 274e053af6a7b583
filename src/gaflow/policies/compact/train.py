"""Flow-matching training of :class:`~gaflow.policies.compact.CompactFlowPolicy` on a LeRobotDataset of demos.

Read top to bottom: load the whole dataset into memory once (images stay uint8) → build chunk indices → build the
policy with a normaliser computed from the frames used → loop (random-shift augmentation, ``flow_samples`` noise
draws per observation so the image encoder's cost is shared, AdamW, warm-up + cosine LR, rich progress bar) →
atomic checkpoints → final export ``<out>/{config.json, model.safetensors, ...}``.

Flow matching uses :func:`gaflow.convention.interpolate` and :func:`gaflow.convention.target_velocity` (never
re-derived here); the loss is the MSE between predicted and target velocity over the real, non-padded steps of the
chunk (LeRobot masks ``action_is_pad`` the same way: a chunk that runs past its episode's end repeats the last
action and those steps do not count). Training times follow ``config.time_sampling`` (LeRobot's Beta(1.5, 1)).

Run folder layout::

    <out>/checkpoints/step_000500/  config.json model.safetensors normalizer.safetensors task_embeddings.safetensors
                                     train_state.pt        (optimizer, step, RNG; its sha256 is in config.json)
    <out>/checkpoints/LATEST        name of the newest complete checkpoint (written after the folder is renamed)
    <out>/config.json, model.safetensors, ...   the final policy (written at the end of training)
    <out>/train_log.json            loss history
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gaflow.convention import interpolate, target_velocity
from gaflow.io import atomic_write_text
from gaflow.normalize import Normalizer, compute_stats
from gaflow.policies.compact.config import CompactPolicyConfig
from gaflow.policies.compact.modeling import (
    ACTION_KEY,
    ENV_STATE_KEY,
    IMAGE_KEY,
    STATE_KEY,
    CheckpointError,
    CompactFlowPolicy,
    read_checkpoint_config,
)
from gaflow.protocol import expand_context

TRAIN_STATE_FILE = "train_state.pt"


@dataclass
class TrainConfig:
    dataset: str = "data/demos"
    out: str = "runs/policy"
    steps: int = 20_000
    batch_size: int = 64  # observations per step
    flow_samples: int = 4  # (noise, t) draws per observation per step; images are encoded once
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 500
    min_lr_ratio: float = 0.1  # cosine decay to lr·min_lr_ratio at `steps`
    grad_clip: float = 1.0
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    log_every: int = 50
    seed: int = 0
    num_threads: int = 2
    resume: bool = False
    max_episodes_per_task: int | None = None  # use only the first k episodes of each task
    successful_only: bool = False  # drop episodes whose "episode.success" is false
    dims_from_dataset: bool = True  # a new policy's action/state/env-state sizes come from the dataset
    # floor on the std used to normalise state inputs: a feature that barely moves in the demos (a resting object's
    # quaternion) must not turn a millimetre of test-time drift into hundreds of standard deviations (LIBERO: 0.01)
    state_std_floor: float = 0.0
    progress: bool = True
    policy: CompactPolicyConfig = field(default_factory=CompactPolicyConfig)

    def __post_init__(self) -> None:
        if isinstance(self.policy, dict):
            self.policy = CompactPolicyConfig.from_dict(self.policy)
        for name in ("steps", "batch_size", "flow_samples", "checkpoint_every", "log_every", "num_threads",
                     "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "policy"}
        d["policy"] = self.policy.to_dict()
        return d


# ---------------------------------------------------------------------------------------------- data
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
) -> DemoFrames:
    """Read a LeRobotDataset v3 folder into memory tensors in one pass (no per-sample ``__getitem__``).

    Images stored in parquet (``use_videos=False``) are decoded from PNG once; images stored as video are decoded
    one episode per call. Raises ``ValueError`` naming the folder and the feature when something is missing.
    Several folders (a list, or one string with commas) are concatenated; tasks are matched by their string.
    ``path::push+pick-place`` keeps only those tasks of that folder (MetaWorld names or task strings).
    """
    roots = list(root) if isinstance(root, (list, tuple)) else str(root).split(",")
    kw = dict(need_images=need_images, need_env_state=need_env_state,
              max_episodes_per_task=max_episodes_per_task, successful_only=successful_only)
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
        wanted = [_match_task(t, tasks, r) for t in only]
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


def _match_task(name: str, tasks: list[str], root: str) -> int:
    """Index of task ``name`` in a dataset's task strings: the string itself or a MetaWorld task name."""
    if name in tasks:
        return tasks.index(name)
    try:
        from gaflow.envs.metaworld import TASK_DESCRIPTIONS, task_name

        desc = TASK_DESCRIPTIONS[task_name(name)]
    except (ImportError, ValueError, KeyError):
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


def sample_times(n: int, mode: str, generator: torch.Generator) -> torch.Tensor:
    """Flow times for training: LeRobot's ``Beta(1.5, 1)·0.999 + 0.001`` or uniform on ``[0.001, 1]``."""
    u = torch.rand(n, generator=generator)
    if mode == "beta":
        # Beta(1.5, 1) has CDF t^1.5, so the inverse-CDF draw keeps everything on one seeded generator.
        return u.pow(1.0 / 1.5) * 0.999 + 0.001
    return u * 0.999 + 0.001


# ---------------------------------------------------------------------------------------------- training
class Trainer:
    """Holds the in-memory data, the policy and the optimiser; :meth:`run` trains to ``config.steps``."""

    def __init__(self, config: TrainConfig, frames: DemoFrames | None = None) -> None:
        self.config = cfg = config
        torch.set_num_threads(cfg.num_threads)
        self.out = Path(cfg.out)
        self.ckpt_root = self.out / "checkpoints"
        resume_dir = self._resume_dir()
        pcfg = cfg.policy
        if resume_dir is not None:
            pcfg = CompactPolicyConfig.from_dict(read_checkpoint_config(resume_dir)["policy"])
        self.frames = frames if frames is not None else load_demo_frames(
            cfg.dataset, need_images=pcfg.use_image, need_env_state=pcfg.use_env_state,
            max_episodes_per_task=cfg.max_episodes_per_task, successful_only=cfg.successful_only,
        )
        if resume_dir is None and cfg.dims_from_dataset:  # a new policy takes its action/state sizes from the data
            f = self.frames
            pcfg = dataclasses.replace(pcfg, action_dim=f.actions.shape[1], state_dim=f.state.shape[1],
                                       env_state_dim=(f.env_state.shape[1] if pcfg.use_env_state and
                                                      f.env_state is not None else pcfg.env_state_dim))
            cfg.policy = pcfg
        check_dataset_matches(pcfg, self.frames)
        self.chunk_index, self.chunk_pad = self.frames.chunk_indices(pcfg.chunk_len)

        if resume_dir is not None:
            self.policy = CompactFlowPolicy.from_pretrained(resume_dir, freeze=False)
            self.policy.train()
        else:
            keys = [ACTION_KEY, STATE_KEY] + ([ENV_STATE_KEY] if pcfg.use_env_state else [])
            values = {ACTION_KEY: self.frames.actions, STATE_KEY: self.frames.state}
            if pcfg.use_env_state:
                values[ENV_STATE_KEY] = self.frames.env_state
            stats = compute_stats(values)
            for key in (k for k in keys if k != ACTION_KEY):  # state inputs only; actions keep their own scale
                stats[key]["std"] = stats[key]["std"].clamp_min(cfg.state_std_floor)
            normalizer = Normalizer.from_stats(stats, keys, pcfg.normalization)
            torch.manual_seed(cfg.seed)
            self.policy = CompactFlowPolicy(pcfg, normalizer)
        self.task_embeddings = self.policy.text_encoder.embed(self.frames.tasks)  # (T, 384), cached once
        self.optimizer = torch.optim.AdamW(self.policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.step = 0
        self.log: list[dict[str, float]] = []
        if resume_dir is not None:
            self._load_train_state(resume_dir)

    # -- resume ------------------------------------------------------------------------------------------
    def _resume_dir(self) -> Path | None:
        latest = self.ckpt_root / "LATEST"
        if not self.config.resume:
            if latest.exists():
                raise FileExistsError(
                    f"{self.out} already holds checkpoints ({latest.read_text().strip()}); pass --resume to continue "
                    "that run or choose another --out"
                )
            return None
        if not latest.exists():
            return None
        return self.ckpt_root / latest.read_text().strip()

    def _load_train_state(self, directory: Path) -> None:
        path = directory / TRAIN_STATE_FILE
        if not path.exists():
            raise CheckpointError(f"{path} is missing: cannot resume training from {directory}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
            self.optimizer.load_state_dict(state["optimizer"])
        except Exception as e:
            raise CheckpointError(f"{path} is corrupted or does not match the policy: {e}") from e
        self.step = int(state["step"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.log = list(state.get("log", []))

    # -- one step ----------------------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        cfg = self.config
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        span = max(1, cfg.steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

    def make_batch(self, idx: torch.Tensor, augment: bool = True) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
        """Policy batch for frames ``idx``, their normalised action chunks ``(B, H, A)`` and pad masks ``(B, H)``."""
        pcfg, f = self.policy.config, self.frames
        batch: dict[str, Any] = {STATE_KEY: f.state[idx], "task_embedding": self.task_embeddings[f.task_index[idx]]}
        if pcfg.use_image:
            img = f.images[idx].permute(0, 3, 1, 2).float().div_(255.0)
            if augment:
                img = random_shift(img, pcfg.augment_shift, self.generator)
            batch[IMAGE_KEY] = img
        if pcfg.use_env_state:
            batch[ENV_STATE_KEY] = f.env_state[idx]
        chunk = self.policy.normalize_actions(f.actions[self.chunk_index[idx]])
        return batch, chunk, self.chunk_pad[idx]

    def loss(self, batch: dict[str, Any], chunk: torch.Tensor, pad: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """Flow-matching loss with ``k`` (noise, t) draws per observation."""
        k = k or self.config.flow_samples
        conv = self.policy.spec.convention
        ctx = expand_context(self.policy.encode(batch), k)
        chunk = chunk.repeat_interleave(k, 0)
        pad = pad.repeat_interleave(k, 0)
        noise = torch.randn(chunk.shape, generator=self.generator)
        t = sample_times(chunk.shape[0], self.policy.config.time_sampling, self.generator)
        x_t = interpolate(noise, chunk, t, conv)
        v = self.policy.velocity(ctx, x_t, t)
        err = (v - target_velocity(noise, chunk, conv)).pow(2).mean(-1)  # (B·k, H)
        real = (~pad).float()
        return (err * real).sum() / real.sum().clamp_min(1.0)

    def train_step(self) -> float:
        cfg = self.config
        idx = torch.randint(0, len(self.frames), (cfg.batch_size,), generator=self.generator)
        batch, chunk, pad = self.make_batch(idx)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        loss = self.loss(batch, chunk, pad)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.step += 1
        return float(loss.detach())

    # -- loop --------------------------------------------------------------------------------------------
    def run(self, stop_at: int | None = None) -> CompactFlowPolicy:
        """Train until ``config.steps`` (or ``stop_at``), checkpointing every ``checkpoint_every`` steps."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        cfg = self.config
        end = min(cfg.steps, stop_at) if stop_at is not None else cfg.steps
        self.out.mkdir(parents=True, exist_ok=True)
        self.policy.train()
        running, t0, start = None, time.perf_counter(), self.step
        columns = (TextColumn("[bold]train-policy"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]} it/s"), TimeRemainingColumn())
        with Progress(*columns, disable=not cfg.progress) as bar:
            task = bar.add_task("train", total=cfg.steps, completed=self.step, loss="—", rate="—")
            while self.step < end:
                loss = self.train_step()
                running = loss if running is None else 0.98 * running + 0.02 * loss
                if self.step % cfg.log_every == 0 or self.step == end:
                    elapsed = time.perf_counter() - t0
                    self.log.append({"step": self.step, "loss": running, "lr": self.lr_at(self.step - 1),
                                     "time_s": elapsed})
                    bar.update(task, completed=self.step, loss=f"{running:.4f}",
                               rate=f"{(self.step - start) / max(elapsed, 1e-9):.1f}")
                if self.step % cfg.checkpoint_every == 0 or self.step == end:
                    path = self.save_checkpoint()
                    if cfg.progress and not bar.console.is_terminal:  # a log file gets one line per checkpoint
                        elapsed = time.perf_counter() - t0
                        bar.console.print(f"step {self.step}/{cfg.steps} loss {running:.4f} "
                                          f"{(self.step - start) / max(elapsed, 1e-9):.2f} it/s → {path}")
        if self.step >= cfg.steps:
            self.export()
        self.policy.eval()
        return self.policy

    def metadata(self) -> dict[str, Any]:
        f = self.frames
        return {"step": self.step, "train": self.config.to_dict(),
                "dataset": {"root": f.root, "frames": len(f), "episodes": f.num_episodes, "tasks": f.tasks,
                            "action_dim": int(f.actions.shape[1]), "state_dim": int(f.state.shape[1])}}

    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step_XXXXXX`` atomically (temp folder → rename → LATEST), keep the newest few."""
        self.ckpt_root.mkdir(parents=True, exist_ok=True)
        name = f"step_{self.step:07d}"
        final, tmp = self.ckpt_root / name, self.ckpt_root / f".tmp-{name}"
        shutil.rmtree(tmp, ignore_errors=True)
        buf = io.BytesIO()
        torch.save({"optimizer": self.optimizer.state_dict(), "step": self.step,
                    "generator": self.generator.get_state(), "torch_rng": torch.get_rng_state(), "log": self.log}, buf)
        self.policy.save_pretrained(tmp, metadata=self.metadata(), extra_files={TRAIN_STATE_FILE: buf.getvalue()})
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        atomic_write_text(self.ckpt_root / "LATEST", name + "\n")
        atomic_write_text(self.out / "train_log.json", json.dumps(self.log, indent=1))
        kept = sorted(p for p in self.ckpt_root.glob("step_*") if p.is_dir())
        for old in kept[: -self.config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def export(self) -> Path:
        """The final policy at the top of the run folder (``CompactFlowPolicy.from_pretrained(out)``)."""
        return self.policy.save_pretrained(self.out, metadata=self.metadata())


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


def train_policy(config: TrainConfig, frames: DemoFrames | None = None) -> CompactFlowPolicy:
    return Trainer(config, frames).run()

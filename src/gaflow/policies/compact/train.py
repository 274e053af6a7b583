"""Flow-matching training of :class:`~gaflow.policies.compact.CompactFlowPolicy` on a LeRobotDataset of demos.

Read top to bottom: load the whole dataset into memory once (:mod:`gaflow.policies.compact.data`; images stay
uint8) → build chunk indices → build the policy with a normaliser computed from the frames used → loop (random-shift
augmentation, ``flow_samples`` noise draws per observation so the image encoder's cost is shared, AdamW, warm-up +
cosine LR, rich progress bar) → atomic checkpoints → final export ``<out>/{config.json, model.safetensors, ...}``.

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

import torch

from gaflow.convention import interpolate, target_velocity
from gaflow.io import atomic_write_text
from gaflow.normalize import Normalizer, compute_stats
from gaflow.policies.compact.config import CompactPolicyConfig
from gaflow.policies.compact.data import (
    DemoFrames,
    DescribeTask,
    check_dataset_matches,
    load_demo_frames,
    random_shift,
)
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


# ---------------------------------------------------------------------------------------------- training
def sample_times(n: int, mode: str, generator: torch.Generator) -> torch.Tensor:
    """Flow times for training: LeRobot's ``Beta(1.5, 1)·0.999 + 0.001`` or uniform on ``[0.001, 1]``."""
    u = torch.rand(n, generator=generator)
    if mode == "beta":
        # Beta(1.5, 1) has CDF t^1.5, so the inverse-CDF draw keeps everything on one seeded generator.
        return u.pow(1.0 / 1.5) * 0.999 + 0.001
    return u * 0.999 + 0.001


class Trainer:
    """Holds the in-memory data, the policy and the optimiser; :meth:`run` trains to ``config.steps``.

    ``frames``: demos already in memory (else ``config.dataset`` is read); ``describe_task``: resolves task names in
    ``config.dataset``'s ``path::name`` filters that are not the dataset's own task strings (see
    :func:`~gaflow.policies.compact.data.load_demo_frames`).
    """

    def __init__(
        self, config: TrainConfig, frames: DemoFrames | None = None, *, describe_task: DescribeTask | None = None
    ) -> None:
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
            describe_task=describe_task,
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


def train_policy(
    config: TrainConfig, frames: DemoFrames | None = None, *, describe_task: DescribeTask | None = None
) -> CompactFlowPolicy:
    return Trainer(config, frames, describe_task=describe_task).run()

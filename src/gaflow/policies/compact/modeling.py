"""The built-in compact flow "VLA": a small CNN trained from scratch + a frozen sentence encoder + proprio, fused
into one context vector per observation, and a FiLM-conditioned residual MLP ("action expert") that predicts the
flow velocity of a whole action chunk ``(B, H, action_dim)``.

It implements the :class:`~gaflow.protocol.FlowPolicy` protocol (``padded_dim == action_dim``; LeRobot time
convention, see :mod:`gaflow.policies.compact.config`):

* ``encode(batch)`` — runs the image/text/state encoders **once per chunk**; the context is a plain dict of
  ``(B, ·)`` tensors, so the generic :func:`~gaflow.protocol.expand_context` repeats it for candidates.
* ``velocity(context, x_t, t)`` — only the action expert runs (cheap, every flow step).
* ``critic_features(context)`` — ``{"observation": (B, hidden_dim), "image": (B, image_feature_dim) [if images],
  "task": (B, 384), "state": (B, state_dim) [if proprio], "env_state": (B, env_state_dim) [if env state]}``: the
  fused observation context (image + language + proprio, as the expert sees it), the pooled image features, the
  frozen sentence embedding of the task string, and the *normalised* proprio and simulator state.
* ``decode_actions(chunk)`` — unnormalises a chunk from the policy's (mean/std-normalised) action space.

Batches use the LeRobot layout produced by ``gaflow.observations.stack_observations`` and by LeRobotDataset:
``"observation.image"`` float ``(B, 3, S, S)`` in ``[0, 1]`` (uint8 is accepted and scaled),
``"observation.state"`` ``(B, 4)``, ``"observation.environment_state"`` ``(B, 39)``, ``"task"`` ``list[str]``
(training may pass ``"task_embedding"`` ``(B, 384)`` instead of strings).

>>> import torch
>>> from gaflow.policies.compact import CompactFlowPolicy, CompactPolicyConfig
>>> from gaflow.normalize import Normalizer
>>> cfg = CompactPolicyConfig(text_encoder="hashed", image_size=32, cnn_channels=(8, 8))
>>> stats = {k: {"mean": torch.zeros(d), "std": torch.ones(d)} for k, d in
...          [("action", 4), ("observation.state", 4), ("observation.environment_state", 39)]}
>>> policy = CompactFlowPolicy(cfg, Normalizer(stats))
>>> batch = {"observation.image": torch.rand(2, 3, 32, 32), "observation.state": torch.zeros(2, 4),
...          "task": ["push the puck", "open the drawer"]}
>>> ctx = policy.encode(batch)
>>> policy.velocity(ctx, torch.randn(2, 8, 4), torch.rand(2)).shape
torch.Size([2, 8, 4])
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from gaflow.io import atomic_save_safetensors, atomic_write, atomic_write_text, sha256_file
from gaflow.normalize import Normalizer
from gaflow.policies.compact.config import CompactPolicyConfig
from gaflow.policies.compact.text import TextEncoder, make_text_encoder
from gaflow.protocol import PolicySpec

IMAGE_KEY = "observation.image"
STATE_KEY = "observation.state"
ENV_STATE_KEY = "observation.environment_state"
ACTION_KEY = "action"
FORMAT = "gaflow.compact_policy"
FORMAT_VERSION = 1
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
NORMALIZER_FILE, TASKS_FILE = "normalizer.safetensors", "task_embeddings.safetensors"


class CheckpointError(RuntimeError):
    """A checkpoint folder is missing, corrupted, or does not match what it is used with."""


class SpatialSoftmax(nn.Module):
    """Expected image coordinates of each channel's softmax (robomimic / Diffusion Policy keypoints) → (B, 2C)."""

    def __init__(self) -> None:
        super().__init__()
        self.log_temperature = nn.Parameter(torch.zeros(()))

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        b, c, h, w = feat.shape
        ys = torch.linspace(-1.0, 1.0, h, device=feat.device, dtype=feat.dtype)
        xs = torch.linspace(-1.0, 1.0, w, device=feat.device, dtype=feat.dtype)
        attn = torch.softmax(feat.flatten(2) / self.log_temperature.exp(), dim=-1).view(b, c, h, w)
        x = (attn.sum(2) * xs).sum(-1)
        y = (attn.sum(3) * ys).sum(-1)
        return torch.cat([x, y], dim=-1)


class ImageEncoder(nn.Module):
    """Stride-2 3×3 convs (GroupNorm, SiLU), one stride-1 conv, then [spatial-softmax keypoints, mean pool]."""

    def __init__(self, channels: tuple[int, ...], feature_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.GroupNorm(math.gcd(8, c), c), nn.SiLU()]
            c_in = c
        layers += [nn.Conv2d(c_in, c_in, 3, padding=1)]
        self.convs = nn.Sequential(*layers)
        self.keypoints = SpatialSoftmax()
        self.proj = nn.Sequential(nn.Linear(3 * c_in, feature_dim), nn.LayerNorm(feature_dim))

    def forward(self, image: torch.Tensor) -> torch.Tensor:  # (B, 3, S, S) in [0, 1] → (B, feature_dim)
        feat = self.convs(image * 2.0 - 1.0)
        pooled = torch.cat([self.keypoints(feat), feat.mean((2, 3))], dim=-1)
        return self.proj(pooled)


def time_embedding(t: torch.Tensor, dim: int, min_period: float = 4e-3, max_period: float = 4.0) -> torch.Tensor:
    """Sinusoidal embedding of flow time ``t`` ``(B,)`` → ``(B, dim)`` (LeRobot's periods for t ∈ [0, 1])."""
    half = dim // 2
    frac = torch.linspace(0.0, 1.0, half, device=t.device, dtype=torch.float32)
    period = min_period * (max_period / min_period) ** frac
    angle = 2 * math.pi * t.float().reshape(-1, 1) / period
    emb = torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)
    if dim % 2:
        emb = nn.functional.pad(emb, (0, 1))
    return emb


class FiLMBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.film = nn.Linear(dim, 2 * dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(cond).chunk(2, dim=-1)
        return h + self.mlp(self.norm(h) * (1 + scale) + shift)


class ActionExpert(nn.Module):
    """Velocity of the flattened chunk given the observation context and the flow time."""

    def __init__(self, chunk_len: int, action_dim: int, hidden: int, layers: int, time_dim: int) -> None:
        super().__init__()
        self.chunk_len, self.action_dim, self.time_dim = chunk_len, action_dim, time_dim
        flat = chunk_len * action_dim
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.inp = nn.Linear(flat + hidden, hidden)
        self.blocks = nn.ModuleList(FiLMBlock(hidden) for _ in range(layers))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, flat))

    def forward(self, cond: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        c = nn.functional.silu(cond + self.time_mlp(time_embedding(t, self.time_dim).to(cond)))
        h = self.inp(torch.cat([x_t.flatten(1), c], dim=-1))
        for block in self.blocks:
            h = block(h, c)
        return self.out(h).view(-1, self.chunk_len, self.action_dim)


class CompactFlowPolicy(nn.Module):
    """A small language-conditioned flow-matching policy over action chunks (see the module docstring)."""

    def __init__(self, config: CompactPolicyConfig, normalizer: Normalizer,
                 text_encoder: TextEncoder | None = None) -> None:
        super().__init__()
        self.config = cfg = config
        self.spec: PolicySpec = cfg.spec
        self.normalizer = normalizer
        if normalizer.mode != cfg.normalization:
            raise ValueError(f"normaliser mode {normalizer.mode!r} != config.normalization {cfg.normalization!r}")
        needed = [ACTION_KEY] + ([STATE_KEY] if cfg.use_state else []) + ([ENV_STATE_KEY] if cfg.use_env_state else [])
        dims = {ACTION_KEY: cfg.action_dim, STATE_KEY: cfg.state_dim, ENV_STATE_KEY: cfg.env_state_dim}
        for key in needed:
            if key not in normalizer.scale:
                raise ValueError(f"the normaliser has no stats for {key!r}, which this policy config uses")
            if normalizer.dim(key) != dims[key]:
                raise ValueError(
                    f"normalisation stats of {key!r} have dimension {normalizer.dim(key)}, but the policy config "
                    f"expects {dims[key]}"
                )
        self.text_encoder = text_encoder if text_encoder is not None else make_text_encoder(cfg.text_encoder, cfg.text_dim)
        if self.text_encoder.name != cfg.text_encoder:
            raise ValueError(f"text encoder {self.text_encoder.name!r} != config.text_encoder {cfg.text_encoder!r}")

        fused = 0
        if cfg.use_image:
            self.image_encoder = ImageEncoder(cfg.cnn_channels, cfg.image_feature_dim)
            fused += cfg.image_feature_dim
        if cfg.use_language:
            self.text_proj = nn.Sequential(nn.Linear(cfg.text_dim, cfg.text_feature_dim), nn.LayerNorm(cfg.text_feature_dim))
            fused += cfg.text_feature_dim
        if cfg.use_state:
            self.state_proj = nn.Sequential(nn.Linear(cfg.state_dim, cfg.state_feature_dim), nn.SiLU())
            fused += cfg.state_feature_dim
        if cfg.use_env_state:
            self.env_state_proj = nn.Sequential(
                nn.Linear(cfg.env_state_dim, cfg.hidden_dim), nn.SiLU(), nn.Linear(cfg.hidden_dim, cfg.image_feature_dim)
            )
            fused += cfg.image_feature_dim
        self.fuse = nn.Sequential(nn.Linear(fused, cfg.hidden_dim), nn.SiLU(), nn.Linear(cfg.hidden_dim, cfg.hidden_dim),
                                  nn.LayerNorm(cfg.hidden_dim))
        self.expert = ActionExpert(cfg.chunk_len, cfg.action_dim, cfg.hidden_dim, cfg.expert_layers, cfg.time_embed_dim)

    # ------------------------------------------------------------------ FlowPolicy protocol
    def encode(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        cfg = self.config
        parts, ctx = [], {}
        dev = next(self.parameters()).device
        batch_size = None
        if cfg.use_image:
            img = _require(batch, IMAGE_KEY)
            img = torch.as_tensor(img)
            if img.dtype == torch.uint8:
                img = img.float() / 255.0
            if img.dim() == 3:
                img = img.unsqueeze(0)
            s = cfg.image_size
            if img.dim() != 4 or img.shape[1:] != (3, s, s):
                raise ValueError(f"{IMAGE_KEY!r} must be (B, 3, {s}, {s}) images in [0, 1]; got {tuple(img.shape)}")
            feat = self.image_encoder(img.to(dev, torch.float32))
            ctx["image"] = feat
            parts.append(feat)
            batch_size = feat.shape[0]
        if cfg.use_language:
            if "task_embedding" in batch:
                text = torch.as_tensor(batch["task_embedding"], dtype=torch.float32)
            else:
                tasks = _require(batch, "task")
                tasks = [tasks] if isinstance(tasks, str) else list(tasks)
                if batch_size is not None and len(tasks) == 1 and batch_size > 1:
                    tasks = tasks * batch_size
                text = self.text_encoder.embed(tasks)
            text = text.to(dev)
            if text.dim() != 2 or text.shape[1] != cfg.text_dim:
                raise ValueError(f"task embeddings must be (B, {cfg.text_dim}); got {tuple(text.shape)}")
            ctx["task"] = text
            parts.append(self.text_proj(text))
        if cfg.use_state:
            state = self.normalizer.normalize(STATE_KEY, _as_2d(_require(batch, STATE_KEY), STATE_KEY).to(dev))
            ctx["state"] = state
            parts.append(self.state_proj(state))
        if cfg.use_env_state:
            env = self.normalizer.normalize(ENV_STATE_KEY, _as_2d(_require(batch, ENV_STATE_KEY), ENV_STATE_KEY).to(dev))
            ctx["env_state"] = env
            parts.append(self.env_state_proj(env))
        sizes = {p.shape[0] for p in parts}
        if len(sizes) != 1:
            raise ValueError(f"observation inputs disagree on the batch size: {sorted(sizes)}")
        ctx["observation"] = self.fuse(torch.cat(parts, dim=-1))
        return ctx

    def velocity(self, context: dict[str, torch.Tensor], x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cond = context["observation"]
        if x_t.shape[1:] != (self.spec.chunk_len, self.spec.padded_dim):
            raise ValueError(
                f"x_t must be (B, {self.spec.chunk_len}, {self.spec.padded_dim}); got {tuple(x_t.shape)}"
            )
        t = torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device).reshape(-1).expand(x_t.shape[0])
        return self.expert(cond, x_t, t)

    def critic_features(self, context: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: context[k] for k in ("observation", "image", "task", "state", "env_state") if k in context}

    def decode_actions(self, chunk: torch.Tensor) -> torch.Tensor:
        return self.normalizer.unnormalize(ACTION_KEY, chunk[..., : self.spec.action_dim])

    # ------------------------------------------------------------------ training helpers
    def normalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return self.normalizer.normalize(ACTION_KEY, actions)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------ checkpoints
    def save_pretrained(self, directory: str | Path, metadata: dict[str, Any] | None = None,
                        extra_files: dict[str, bytes] | None = None) -> Path:
        """Write a self-contained policy folder: weights, normaliser, cached task embeddings, ``extra_files``
        (e.g. a training state), then config.json — last, carrying the sha256 of every other file, so a partial or
        corrupted folder is detected on load."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        files = {
            WEIGHTS_FILE: (state, None),
            NORMALIZER_FILE: (self.normalizer.state_dict(), None),
        }
        tasks = sorted(self.text_encoder.cache)
        emb = torch.stack([self.text_encoder.cache[t] for t in tasks]) if tasks else torch.zeros(0, self.config.text_dim)
        files[TASKS_FILE] = ({"embeddings": emb.contiguous()},
                             {"tasks": json.dumps(tasks), "encoder": self.text_encoder.name})
        digests = {}
        for name, (tensors, meta) in files.items():
            atomic_save_safetensors(directory / name, tensors, meta)
            digests[name] = sha256_file(directory / name)
        for name, data in (extra_files or {}).items():
            atomic_write(directory / name, lambda p, data=data: Path(p).write_bytes(data))
            digests[name] = hashlib.sha256(data).hexdigest()
        cfg = {"format": FORMAT, "version": FORMAT_VERSION, "policy": self.config.to_dict(), "files": digests,
               "num_parameters": self.num_parameters(), "metadata": metadata or {}}
        atomic_write_text(directory / CONFIG_FILE, json.dumps(cfg, indent=2, sort_keys=True))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, freeze: bool = True, map_location: str = "cpu"):
        """Load a policy folder written by :meth:`save_pretrained` (a training run folder resolves to its latest
        checkpoint if it has no final export). ``freeze``: eval mode and no parameter gradients (a base policy is
        frozen; guidance never changes its weights)."""
        directory = resolve_checkpoint_dir(directory)
        meta = read_checkpoint_config(directory)
        config = CompactPolicyConfig.from_dict(meta["policy"])
        normalizer = Normalizer.from_state_dict(_load_safetensors(directory / NORMALIZER_FILE), config.normalization)
        text_encoder = make_text_encoder(config.text_encoder, config.text_dim)
        tasks_tensors, tasks_meta = _load_safetensors(directory / TASKS_FILE, with_metadata=True)
        names = json.loads((tasks_meta or {}).get("tasks", "[]"))
        emb = tasks_tensors.get("embeddings", torch.zeros(0, config.text_dim))
        if len(names) != emb.shape[0]:
            raise CheckpointError(f"{directory / TASKS_FILE}: {len(names)} task names for {emb.shape[0]} embeddings")
        text_encoder.preload(dict(zip(names, emb, strict=True)))
        try:
            policy = cls(config, normalizer, text_encoder)
        except ValueError as e:
            raise CheckpointError(f"{directory}: {e}") from e
        state = _load_safetensors(directory / WEIGHTS_FILE)
        try:
            policy.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"{directory / WEIGHTS_FILE} does not match {directory / CONFIG_FILE}: {e}") from e
        policy.to(map_location)
        policy.checkpoint_metadata = meta.get("metadata", {})
        if freeze:
            policy.eval()
            policy.requires_grad_(False)
        return policy


# ---------------------------------------------------------------------- checkpoint file helpers
def resolve_checkpoint_dir(directory: str | Path) -> Path:
    """A policy folder, or a training run folder: its final export if present, else its latest checkpoint."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"policy checkpoint folder {directory} does not exist")
    if (directory / CONFIG_FILE).exists() or (directory / WEIGHTS_FILE).exists():
        return directory
    latest = directory / "checkpoints" / "LATEST"
    if latest.exists():
        name = latest.read_text().strip()
        return resolve_checkpoint_dir(directory / "checkpoints" / name)
    raise CheckpointError(
        f"{directory} holds no compact policy: no {CONFIG_FILE} and no checkpoints/LATEST (is it a policy folder?)"
    )


def read_checkpoint_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_FILE
    if not path.exists():
        raise CheckpointError(f"{path} is missing: {directory} is not a complete compact policy checkpoint")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON (corrupted checkpoint): {e}") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format {meta.get('format')!r} is not {FORMAT!r}")
    if meta.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format version {meta.get('version')} is not {FORMAT_VERSION}")
    for name, digest in meta.get("files", {}).items():
        f = directory / name
        if not f.exists():
            raise CheckpointError(f"{f} is missing (listed in {path})")
        if sha256_file(f) != digest:
            raise CheckpointError(f"{f} is corrupted or was not written with {path} (sha256 mismatch)")
    for name in (WEIGHTS_FILE, NORMALIZER_FILE, TASKS_FILE):
        if name not in meta.get("files", {}):
            raise CheckpointError(f"{path} does not list {name}")
    return meta


def _require(batch: dict[str, Any], key: str) -> Any:
    if key not in batch:
        raise KeyError(f"the observation batch has no {key!r} (it has {sorted(batch)})")
    return batch[key]


def _as_2d(x: Any, key: str) -> torch.Tensor:
    x = torch.as_tensor(x, dtype=torch.float32)
    if x.dim() == 1:
        x = x.unsqueeze(0)
    if x.dim() != 2:
        raise ValueError(f"{key!r} must be (B, D); got {tuple(x.shape)}")
    return x


def _load_safetensors(path: Path, with_metadata: bool = False):
    if not path.exists():
        raise CheckpointError(f"{path} is missing")
    try:
        tensors = load_file(str(path))
        if not with_metadata:
            return tensors
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return tensors, f.metadata()
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupted?): {e}") from e


__all__ = ["CheckpointError", "CompactFlowPolicy", "resolve_checkpoint_dir"]

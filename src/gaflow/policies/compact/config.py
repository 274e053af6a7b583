"""Configuration of the built-in compact flow "VLA": a small CNN + frozen sentence encoder + proprio, and an MLP
action expert that predicts the flow velocity of a whole action chunk.

Choices fixed here and documented in ``docs/compact_policy.md``:

* **Time convention: LeRobot** (``x_t = t·ε + (1−t)·A``, integrate ``t: 1 → 0``), the convention of SmolVLA, π0
  and π0.5, so the built-in policy exercises exactly the guidance sign the LeRobot adapters need.
* **Training times**: ``t ~ Beta(1.5, 1)·0.999 + 0.001`` as in LeRobot (more weight near noise, ``t → 1``), or
  ``uniform`` on ``[0.001, 1]``.
* **Normalisation**: mean/std for actions and states (LeRobot's choice for SmolVLA's actions); ``min_max`` maps to
  ``[−1, 1]`` instead.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from gaflow.protocol import PolicySpec, TimeConvention

TEXT_ENCODERS = ("minilm", "hashed")


@dataclass
class CompactPolicyConfig:
    # Action chunk
    chunk_len: int = 8  # H: actions predicted per chunk
    action_dim: int = 4  # MetaWorld: end-effector xyz delta + gripper
    n_action_steps: int = 4  # default actions executed per chunk before re-planning (receding horizon)
    num_steps: int = 10  # flow (Euler) steps at sampling time
    convention: str = "lerobot"  # see the module docstring

    # Observation inputs
    use_image: bool = True
    use_language: bool = True
    use_state: bool = True  # proprio (hand xyz + gripper), "observation.state"
    use_env_state: bool = False  # privileged 39-d simulator state, "observation.environment_state"
    image_size: int = 84  # square images (H = W); encode() checks the incoming size
    state_dim: int = 4
    env_state_dim: int = 39

    # Encoders
    cnn_channels: tuple[int, ...] = (16, 32, 64)  # stride-2 3×3 convs, then one stride-1 conv → spatial softmax
    image_feature_dim: int = 128
    text_encoder: str = "minilm"  # minilm (frozen all-MiniLM-L6-v2) | hashed (deterministic bag of words)
    text_dim: int = 384
    text_feature_dim: int = 128
    state_feature_dim: int = 64

    # Action expert (FiLM-conditioned residual MLP over the flattened chunk)
    hidden_dim: int = 256  # width of the fused observation context and of the expert
    expert_layers: int = 2
    time_embed_dim: int = 64

    # Training-time choices that are part of the model (they travel with the checkpoint)
    normalization: Literal["mean_std", "min_max"] = "mean_std"
    time_sampling: Literal["beta", "uniform"] = "beta"
    augment_shift: int = 4  # random-shift augmentation (pixels of replicate padding, DrQ); 0 = off

    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes (e.g. tasks trained on)

    def __post_init__(self) -> None:
        self.cnn_channels = tuple(int(c) for c in self.cnn_channels)
        positive = ("chunk_len", "action_dim", "n_action_steps", "num_steps", "image_size", "state_dim",
                    "env_state_dim", "image_feature_dim", "text_dim", "text_feature_dim", "state_feature_dim",
                    "hidden_dim", "time_embed_dim")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"CompactPolicyConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.expert_layers < 0:
            raise ValueError(f"CompactPolicyConfig.expert_layers must be >= 0, got {self.expert_layers}")
        if not self.cnn_channels:
            raise ValueError("CompactPolicyConfig.cnn_channels must name at least one conv layer")
        if self.n_action_steps > self.chunk_len:
            raise ValueError(
                f"CompactPolicyConfig.n_action_steps ({self.n_action_steps}) must be <= chunk_len ({self.chunk_len})"
            )
        self.convention = TimeConvention(self.convention).value
        if self.text_encoder not in TEXT_ENCODERS:
            raise ValueError(f"CompactPolicyConfig.text_encoder must be one of {TEXT_ENCODERS}, got {self.text_encoder!r}")
        if self.normalization not in ("mean_std", "min_max"):
            raise ValueError(f"CompactPolicyConfig.normalization must be mean_std or min_max, got {self.normalization!r}")
        if self.time_sampling not in ("beta", "uniform"):
            raise ValueError(f"CompactPolicyConfig.time_sampling must be beta or uniform, got {self.time_sampling!r}")
        if self.augment_shift < 0:
            raise ValueError(f"CompactPolicyConfig.augment_shift must be >= 0, got {self.augment_shift}")
        if not (self.use_image or self.use_language or self.use_state or self.use_env_state):
            raise ValueError("CompactPolicyConfig: enable at least one input (use_image/use_language/use_state/...)")

    @property
    def spec(self) -> PolicySpec:
        return PolicySpec(self.chunk_len, self.action_dim, self.action_dim, self.convention, self.num_steps)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["cnn_channels"] = list(self.cnn_channels)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompactPolicyConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown compact policy config field(s): {', '.join(unknown)}")
        return cls(**data)

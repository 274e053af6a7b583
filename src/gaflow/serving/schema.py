"""What a served policy takes: the keys, shapes and dtypes of one env observation, checked before inference.

Observations use gaflow's env format (:mod:`gaflow.observations`): images ``uint8 (H, W, 3)``, state vectors
``float (D,)``, a ``"task"`` string — one observation, no batch dimension (openpi's convention). The schema is
read off the loaded policy (:meth:`ObservationSchema.from_policy`): LeRobot policies from their
``config.input_features`` (a ``(C, H, W)`` camera becomes a ``uint8 (H, W, C)`` image), the compact policy from its
config's ``use_*`` switches, the toy policy from its state layout.

:meth:`ObservationSchema.validate` reports every problem at once — a missing or unexpected key, a wrong shape or
dtype, a NaN or inf — in one :class:`ObservationError` naming the fields, so a client fixes its request in one go.
:meth:`ObservationSchema.example` is an observation a client can send as is (the server's metadata carries it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gaflow.observations import ENV_STATE_KEY, IMAGE_KEY, STATE_KEY, TASK_KEY

MAX_TASK_CHARS = 1000  # a language instruction; a longer string is a client bug (and would grow the text cache)


class ObservationError(ValueError):
    """An observation that does not match the schema (the message names every offending field)."""


@dataclass(frozen=True)
class FieldSpec:
    """One observation entry: an image (exact ``uint8`` shape), a float vector, or a text string."""

    key: str
    kind: str  # "image" | "vector" | "text"
    shape: tuple[int, ...] = ()
    required: bool = True

    def describe(self) -> dict[str, Any]:
        dtype = {"image": "uint8", "vector": "float32", "text": "str"}[self.kind]
        return {"kind": self.kind, "shape": list(self.shape), "dtype": dtype, "required": self.required}


@dataclass(frozen=True)
class ObservationSchema:
    fields: tuple[FieldSpec, ...]
    example_task: str = ""
    by_key: dict[str, FieldSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_key", {f.key: f for f in self.fields})

    # ------------------------------------------------------------------ building
    @classmethod
    def from_policy(cls, policy) -> ObservationSchema:
        """The schema of a loaded gaflow policy (LeRobot adapter, compact, toy); see the module docstring."""
        config = getattr(policy, "config", None)
        if config is not None and hasattr(config, "input_features"):
            return cls._from_lerobot(config)
        if config is not None and hasattr(config, "use_image") and hasattr(config, "image_size"):
            return cls._from_compact(policy, config)
        from gaflow.policies.toy import ToyReachPolicy

        if isinstance(policy, ToyReachPolicy):
            return cls((FieldSpec(STATE_KEY, "vector", (4,)), FieldSpec(TASK_KEY, "text", required=False)),
                       example_task="move the point to the goal")
        raise TypeError(f"cannot tell which observations a {type(policy).__name__} takes; serve a LeRobot, compact "
                        "or toy policy")

    @classmethod
    def _from_lerobot(cls, config) -> ObservationSchema:
        fields = []
        for key, feat in config.input_features.items():
            kind = getattr(feat.type, "name", str(feat.type))
            if kind == "VISUAL":
                if key.split(".")[-1].startswith("empty_camera"):  # LeRobot pads missing cameras itself
                    continue
                c, h, w = feat.shape
                fields.append(FieldSpec(key, "image", (int(h), int(w), int(c))))
            elif kind in ("STATE", "ENV"):
                fields.append(FieldSpec(key, "vector", tuple(int(s) for s in feat.shape)))
        fields.append(FieldSpec(TASK_KEY, "text"))
        return cls(tuple(fields), example_task="pick up the cube")

    @classmethod
    def _from_compact(cls, policy, config) -> ObservationSchema:
        fields = []
        if config.use_image:
            fields.append(FieldSpec(IMAGE_KEY, "image", (config.image_size, config.image_size, 3)))
        if config.use_state:
            fields.append(FieldSpec(STATE_KEY, "vector", (config.state_dim,)))
        if config.use_env_state:
            fields.append(FieldSpec(ENV_STATE_KEY, "vector", (config.env_state_dim,)))
        known = sorted(getattr(getattr(policy, "text_encoder", None), "cache", {}) or [""])
        fields.append(FieldSpec(TASK_KEY, "text", required=bool(config.use_language)))
        return cls(tuple(fields), example_task=known[0])

    # ------------------------------------------------------------------ use
    def describe(self) -> dict[str, dict[str, Any]]:
        """JSON/msgpack-friendly description (part of the server metadata)."""
        return {f.key: f.describe() for f in self.fields}

    def example(self) -> dict[str, Any]:
        """An observation that passes :meth:`validate`: zero images and states, a task the policy knows."""
        out: dict[str, Any] = {}
        for f in self.fields:
            if f.kind == "image":
                out[f.key] = np.zeros(f.shape, np.uint8)
            elif f.kind == "vector":
                out[f.key] = np.zeros(f.shape, np.float32)
            else:
                out[f.key] = self.example_task
        return out

    def validate(self, obs: Any) -> dict[str, Any]:
        """Check ``obs`` against the schema; return it with vectors as float32 (as the env format stacks them)."""
        if not isinstance(obs, Mapping):
            raise ObservationError(f"an observation must be a map of named fields, got {type(obs).__name__}")
        problems: list[str] = []
        unknown = sorted(str(k) for k in obs if k not in self.by_key)
        if unknown:
            problems.append(f"unexpected key(s) {', '.join(map(repr, unknown))}")
        missing = [f.key for f in self.fields if f.required and f.key not in obs]
        if missing:
            problems.append(f"missing key(s) {', '.join(map(repr, missing))}")
        clean: dict[str, Any] = {}
        for f in self.fields:
            if f.key not in obs:
                continue
            value, want = obs[f.key], str(f.shape)
            if f.kind == "text":
                if not isinstance(value, str):
                    problems.append(f"{f.key!r} must be a string, got {type(value).__name__}")
                elif len(value) > MAX_TASK_CHARS:
                    problems.append(f"{f.key!r} is {len(value)} characters long (at most {MAX_TASK_CHARS})")
                else:
                    clean[f.key] = value
                continue
            if not isinstance(value, np.ndarray):
                problems.append(f"{f.key!r} must be a numpy array {want}, got {type(value).__name__}")
                continue
            if f.kind == "image":
                if value.dtype != np.uint8 or value.shape != f.shape:
                    problems.append(f"{f.key!r} must be a uint8 image {want}, got {value.dtype} {value.shape}")
                    continue
                clean[f.key] = value
            else:
                if value.dtype.kind != "f" or value.shape != f.shape:
                    problems.append(f"{f.key!r} must be a float vector {want}, got {value.dtype} {value.shape}")
                    continue
                if not np.isfinite(value).all():
                    problems.append(f"{f.key!r} holds NaN or inf values")
                    continue
                clean[f.key] = value.astype(np.float32, copy=False)
        if problems:
            raise ObservationError("; ".join(problems) + f" (this policy takes: {self.summary()})")
        return clean

    def summary(self) -> str:
        parts = []
        for f in self.fields:
            kind = {"image": "uint8", "vector": "float32", "text": "str"}[f.kind]
            shape = f" {tuple(f.shape)}" if f.kind != "text" else ""
            parts.append(f"{f.key}: {kind}{shape}{'' if f.required else ' (optional)'}")
        return ", ".join(parts)

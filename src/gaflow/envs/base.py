"""What an environment emits, described without building it: :class:`EnvInfo` (one per env module, obtained with
:func:`gaflow.envs.registry.env_info`) and the :class:`Feature` of each observation key.

An ``EnvInfo`` is what a dataset of the env needs to know — control rate (the dataset's fps), action size, the
keys, shapes and dtypes of the observation dict (and which simulator camera renders each image) — and it maps
them to LeRobot's feature dict (:meth:`EnvInfo.lerobot_features`). The observation format itself (key names,
:func:`~gaflow.observations.stack_observations`) is :mod:`gaflow.observations`.

>>> info = EnvInfo("toy", fps=10, action=Feature("action", "float32", (2,)),
...                observation=(Feature("observation.state", "float32", (4,)),))
>>> info.lerobot_features()["action"]
{'dtype': 'float32', 'shape': (2,), 'names': None}

An env whose actions move an end effector by position deltas also states its :class:`ActionPath` (how a chunk of
actions maps to a predicted end-effector path, in env units), which the objective terms ``keep_out`` and
``speed`` and the hard-constraint projection read; an env without one (``action_path=None``) makes those terms
fail with a message naming the env.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from gaflow.observations import ACTION_KEY, TASK_KEY

IMAGE_AXES = ("height", "width", "channels")
DTYPES = ("float32", "float64", "int64", "bool", "image")  # LeRobot's names; all but "image" are numpy's too


@dataclass(frozen=True)
class Feature:
    """One array an env emits (or a dataset stores) under ``key``.

    ``dtype`` is LeRobot's name for it: ``"float32"``, ``"int64"``, ``"bool"``, or ``"image"`` — an image is
    uint8 ``(H, W, 3)`` in the observation and a PNG inside the dataset's parquet files. ``camera``: the simulator
    camera that renders an image feature.
    """

    key: str
    dtype: str
    shape: tuple[int, ...]
    names: tuple[str, ...] | None = None
    camera: str | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"feature {self.key!r}: dtype must be one of {DTYPES}, got {self.dtype!r}")
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        if self.names is not None:
            object.__setattr__(self, "names", tuple(self.names))
        if self.is_image and (len(self.shape) != 3 or self.shape[2] != 3):
            raise ValueError(f"feature {self.key!r}: an image is (H, W, 3), got shape {self.shape}")

    @property
    def is_image(self) -> bool:
        return self.dtype == "image"

    @property
    def numpy_dtype(self) -> np.dtype:
        """The dtype of the array in an observation or frame (uint8 for an image)."""
        return np.dtype(np.uint8 if self.is_image else self.dtype)

    def lerobot(self) -> dict[str, Any]:
        """This feature as an entry of LeRobot's ``features`` dict."""
        names = self.names if self.names is not None else (IMAGE_AXES if self.is_image else None)
        return {"dtype": self.dtype, "shape": self.shape, "names": list(names) if names is not None else None}


@dataclass(frozen=True)
class ActionPath:
    """An env's action-to-path map: where a chunk of actions takes the end effector, differentiably.

    The env applies ``clip(action, action_low, action_high)`` and moves the end effector by ``step_scale[i]`` env
    units per unit of action entry ``action_dims[i]``, so after step ``k`` of a chunk (``k = 1..H``)::

        path[k] = position + Σ_{j ≤ k} step_scale · clip(action[j, action_dims])

    ``position`` is the current end-effector position, read from the observation by :meth:`position`
    (``obs[position_key][position_index]``). For a mocap-driven arm (MetaWorld) this is the path of the hand's
    target — the hand follows it with a small lag; for an operational-space controller (LIBERO) each step's delta
    is a set-point the controller approaches, so the map is an approximation. ``units``: what the coordinates are
    measured in (keep-out zones are given in them).

    >>> path = ActionPath("observation.state", (0, 1), (0, 1), (0.5, 0.5))
    >>> path.predict(torch.zeros(1, 2), torch.tensor([[[1.0, 0.0], [4.0, 2.0]]])).tolist()  # 4.0 is clipped to 1
    [[[0.5, 0.0], [1.0, 0.5]]]
    """

    position_key: str
    position_index: tuple[int, ...]
    action_dims: tuple[int, ...]
    step_scale: tuple[float, ...]
    action_low: float = -1.0
    action_high: float = 1.0
    units: str = "m"

    def __post_init__(self) -> None:
        for name in ("position_index", "action_dims", "step_scale"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        n = len(self.position_index)
        if n == 0 or len(self.action_dims) != n or len(self.step_scale) != n:
            raise ValueError(f"ActionPath: position_index, action_dims and step_scale must have the same non-zero "
                             f"length, got {self.position_index}, {self.action_dims}, {self.step_scale}")
        if not all(np.isfinite(s) and s > 0 for s in self.step_scale):
            raise ValueError(f"ActionPath: step_scale must be positive and finite, got {self.step_scale}")
        if not self.action_low <= 0.0 <= self.action_high:
            # the hard-constraint projection shortens a step towards the zero action, which must be allowed
            raise ValueError(f"ActionPath: the action range [{self.action_low}, {self.action_high}] must contain 0")

    @property
    def dim(self) -> int:
        """Number of path coordinates."""
        return len(self.position_index)

    def position(self, obs: Mapping[str, Any]) -> np.ndarray:
        """The current end-effector position ``(dim,)`` in an observation dict, float64."""
        if self.position_key not in obs:
            raise KeyError(f"the observation has no {self.position_key!r} (the end-effector position of this env's "
                           f"ActionPath); it has {sorted(obs)}")
        return np.asarray(obs[self.position_key], dtype=np.float64).reshape(-1)[list(self.position_index)]

    def steps(self, actions: torch.Tensor) -> torch.Tensor:
        """Per-step displacements ``(B, H, dim)`` of actions ``(B, H, action_dim)`` in env units."""
        a = actions[..., list(self.action_dims)].clamp(self.action_low, self.action_high)
        return a * torch.tensor(self.step_scale, dtype=a.dtype, device=a.device)

    def predict(self, position: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Predicted positions ``(B, H, dim)`` after each action: ``position`` ``(B, dim)`` plus the cumulative
        sum of :meth:`steps` (differentiable w.r.t. ``actions``, except where the env's clip is active)."""
        return position.to(actions.dtype).unsqueeze(1) + self.steps(actions).cumsum(1)


@dataclass(frozen=True)
class EnvInfo:
    """What one env (with given options) emits: see the module docstring.

    ``env``: the env's kind as ``make_env`` names it (``"metaworld"``, ``"libero:libero_spatial"``, ``"toy"``);
    ``fps``: its control rate in Hz, the fps of every dataset recorded from it; ``observation``: the arrays of its
    observation dict in the order the env builds it (the dict also holds ``"task"``, the instruction string);
    ``robot_type``: LeRobot's ``robot_type`` of its datasets; ``action_path``: the env's action-to-path map
    (:class:`ActionPath`), ``None`` when its actions are not end-effector position deltas.
    """

    env: str
    fps: int
    action: Feature
    observation: tuple[Feature, ...]
    robot_type: str | None = None
    action_path: ActionPath | None = None

    def __post_init__(self) -> None:
        if int(self.fps) <= 0:
            raise ValueError(f"EnvInfo({self.env!r}): fps must be positive, got {self.fps}")
        if self.action.key != ACTION_KEY or len(self.action.shape) != 1:
            raise ValueError(f"EnvInfo({self.env!r}): action must be a vector feature named {ACTION_KEY!r}")
        keys = [f.key for f in self.observation]
        if len(set(keys)) != len(keys) or ACTION_KEY in keys or TASK_KEY in keys:
            raise ValueError(f"EnvInfo({self.env!r}): observation keys must be unique and not "
                             f"{ACTION_KEY!r}/{TASK_KEY!r}, got {keys}")
        object.__setattr__(self, "observation", tuple(self.observation))
        path = self.action_path
        if path is not None:
            if any(not 0 <= i < self.action_dim for i in path.action_dims):
                raise ValueError(f"EnvInfo({self.env!r}): action_path.action_dims {path.action_dims} outside the "
                                 f"{self.action_dim}-d action")
            pos = self.feature(path.position_key)
            if len(pos.shape) != 1 or any(not 0 <= i < pos.shape[0] for i in path.position_index):
                raise ValueError(f"EnvInfo({self.env!r}): action_path.position_index {path.position_index} outside "
                                 f"{path.position_key!r} of shape {pos.shape}")

    @property
    def action_dim(self) -> int:
        return self.action.shape[0]

    @property
    def observation_keys(self) -> tuple[str, ...]:
        return tuple(f.key for f in self.observation)

    @property
    def cameras(self) -> dict[str, str | None]:
        """Image key → simulator camera that renders it (empty when the env emits no image)."""
        return {f.key: f.camera for f in self.observation if f.is_image}

    def feature(self, key: str) -> Feature:
        for f in (*self.observation, self.action):
            if f.key == key:
                return f
        raise KeyError(f"{self.env} emits no {key!r}; it emits {', '.join(self.observation_keys)} and {ACTION_KEY!r}")

    def select(self, keys: Iterable[str]) -> EnvInfo:
        """The same env restricted to the observation ``keys`` (e.g. what a recording actually kept)."""
        wanted = list(keys)
        for k in wanted:
            self.feature(k)  # raises, naming the key
        path = self.action_path if self.action_path is not None and self.action_path.position_key in wanted else None
        return replace(self, observation=tuple(f for f in self.observation if f.key in wanted), action_path=path)

    def without_images(self) -> EnvInfo:
        return self.select(f.key for f in self.observation if not f.is_image)

    def lerobot_features(self) -> dict[str, dict[str, Any]]:
        """LeRobot's ``features`` dict of a dataset of this env's frames: the observation arrays, then the action
        (``task`` is LeRobot's own column; per-episode columns are the dataset writer's)."""
        return {f.key: f.lerobot() for f in (*self.observation, self.action)}

    def check_observation(self, obs: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` naming the first key whose presence, shape or dtype differs from this description."""
        expected = {*self.observation_keys, TASK_KEY}
        if set(obs) != expected:
            raise ValueError(f"{self.env} observation keys differ from its EnvInfo: missing "
                             f"{sorted(expected - set(obs))}, unexpected {sorted(set(obs) - expected)}")
        if not isinstance(obs[TASK_KEY], str):
            raise ValueError(f"{self.env} observation {TASK_KEY!r} must be a str, got {type(obs[TASK_KEY]).__name__}")
        for f in self.observation:
            v = np.asarray(obs[f.key])
            if v.shape != f.shape or v.dtype != f.numpy_dtype:
                raise ValueError(f"{self.env} observation {f.key!r} is {v.dtype} {v.shape}; its EnvInfo says "
                                 f"{f.numpy_dtype} {f.shape}")


def check_env_options(env_class: type, options: Mapping[str, Any], where: str) -> None:
    """Raise ``TypeError`` naming any option that ``env_class``'s constructor does not take."""
    accepted = set(inspect.signature(env_class.__init__).parameters) - {"self"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise TypeError(f"{where}: unknown env option(s) {unknown}; {env_class.__name__} takes {sorted(accepted)}")


__all__ = ["ActionPath", "EnvInfo", "Feature", "check_env_options"]

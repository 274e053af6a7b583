"""Observation format shared by environments, datasets and policies (bottom layer: numpy and torch only).

Every environment returns one observation per step as a dict with LeRobot's feature names; MetaWorld's::

    {"observation.image": np.uint8 (H, W, 3),              # upright RGB
     "observation.state": np.float32 (4,),                 # hand xyz + gripper
     "observation.environment_state": np.float32 (39,),    # full MetaWorld state vector
     "task": str}                                          # natural-language instruction

(LIBERO uses ``observation.images.<camera>`` and other state sizes; see ``gaflow.envs.libero``.)

``stack_observations`` turns a list of those into a policy batch in exactly the format ``LeRobotDataset`` returns
for the same features (images channel-first float in [0, 1]), so a policy sees the same thing in training and in
closed-loop evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

IMAGE_KEY = "observation.image"
STATE_KEY = "observation.state"
ENV_STATE_KEY = "observation.environment_state"
TASK_KEY = "task"
ACTION_KEY = "action"


def is_image_key(key: str) -> bool:
    """``observation.image`` (MetaWorld) or ``observation.images.<camera>`` (LIBERO, multi-camera)."""
    return key == IMAGE_KEY or key.startswith(IMAGE_KEY + "s.")


def stack_observations(obs_list: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack env observations into a batch shaped like a ``LeRobotDataset`` batch.

    For MetaWorld observations this returns ``{"observation.image": float32 (B, 3, H, W) in [0, 1],
    "observation.state": float32 (B, 4), "observation.environment_state": float32 (B, 39), "task": list[str]}``.
    Every image key (``observation.image``, ``observation.images.<camera>``) is converted from uint8 HWC to
    float CHW in [0, 1], as LeRobotDataset returns stored images; ``observation.state`` and
    ``observation.environment_state`` are stacked as float32 vectors (their length may differ between
    environments but must agree within the batch); other keys are ignored. An env built without rendering
    simply has no image keys.

    >>> import numpy as np
    >>> o = {"observation.image": np.zeros((8, 8, 3), np.uint8), "observation.state": np.zeros(4, np.float32),
    ...      "observation.environment_state": np.zeros(39, np.float32), "task": "push the puck to the goal"}
    >>> stack_observations([o, o])["observation.image"].shape
    torch.Size([2, 3, 8, 8])
    """
    if len(obs_list) == 0:
        raise ValueError("stack_observations: obs_list is empty")
    batch: dict[str, Any] = {}
    image_keys = sorted({k for o in obs_list for k in o if is_image_key(k)})
    for key in image_keys:
        imgs = []
        for i, o in enumerate(obs_list):
            if key not in o:
                raise KeyError(f"stack_observations: {key!r} is present in some observations but not in #{i}")
            img = np.asarray(o[key])
            if img.ndim != 3 or img.shape[-1] != 3 or img.dtype != np.uint8:
                raise ValueError(
                    f"stack_observations: {key!r} of observation {i} must be uint8 (H, W, 3), "
                    f"got {img.dtype} {img.shape}"
                )
            if imgs and img.shape != imgs[0].shape:
                raise ValueError(f"stack_observations: {key!r} shapes differ: {imgs[0].shape} vs {img.shape}")
            imgs.append(img)
        # uint8 HWC → float CHW in [0, 1], as LeRobotDataset returns an "image" feature.
        batch[key] = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float().div_(255.0).contiguous()
    for key in (STATE_KEY, ENV_STATE_KEY):
        present = [key in o for o in obs_list]
        if not any(present):
            if key == STATE_KEY:
                raise KeyError(f"stack_observations: observations have no {key!r}")
            continue
        rows = []
        for i, o in enumerate(obs_list):
            if key not in o:
                raise KeyError(f"stack_observations: observation {i} has no {key!r}")
            v = np.asarray(o[key], dtype=np.float32)
            if v.ndim != 1 or (rows and v.shape != rows[0].shape):
                want = f"({rows[0].shape[0]},)" if rows else "a vector"
                raise ValueError(f"stack_observations: {key!r} of observation {i} must be {want}, got {v.shape}")
            rows.append(v)
        batch[key] = torch.from_numpy(np.stack(rows))
    batch[TASK_KEY] = [str(o.get(TASK_KEY, "")) for o in obs_list]
    return batch


__all__ = [
    "ACTION_KEY",
    "ENV_STATE_KEY",
    "IMAGE_KEY",
    "STATE_KEY",
    "TASK_KEY",
    "is_image_key",
    "stack_observations",
]

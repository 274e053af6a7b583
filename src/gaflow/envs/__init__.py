"""Simulation environments (the observation format they share with datasets and policies is
:mod:`gaflow.observations`);
``metaworld`` wraps MetaWorld v3 tasks (imported lazily: it pulls in MuJoCo)."""

from gaflow.envs.base import ACTION_DIM, ENV_STATE_DIM, STATE_DIM
from gaflow.observations import (
    ACTION_KEY,
    ENV_STATE_KEY,
    IMAGE_KEY,
    STATE_KEY,
    TASK_KEY,
    stack_observations,
)

__all__ = [
    "ACTION_DIM",
    "ACTION_KEY",
    "ENV_STATE_DIM",
    "ENV_STATE_KEY",
    "IMAGE_KEY",
    "STATE_DIM",
    "STATE_KEY",
    "TASK_KEY",
    "MetaWorldEnv",
    "stack_observations",
]


def __getattr__(name: str):
    if name == "MetaWorldEnv":
        from gaflow.envs.metaworld import MetaWorldEnv

        return MetaWorldEnv
    raise AttributeError(name)

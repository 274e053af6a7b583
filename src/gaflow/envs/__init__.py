"""Simulation environments (the observation format they share with datasets and policies is
:mod:`gaflow.observations`): ``metaworld`` (MetaWorld v3), ``libero`` (LIBERO suites) and ``toy`` (a 2-D
reaching task), built by name with :func:`make_env` and described — fps, action size, observation features —
by :func:`env_info` (:class:`EnvInfo`). Simulators are imported lazily: they pull in MuJoCo."""

from gaflow.envs.base import EnvInfo, Feature
from gaflow.envs.registry import env_info, make_env, parse_env_spec
from gaflow.observations import (
    ACTION_KEY,
    ENV_STATE_KEY,
    IMAGE_KEY,
    STATE_KEY,
    TASK_KEY,
    stack_observations,
)

__all__ = [
    "ACTION_KEY",
    "ENV_STATE_KEY",
    "IMAGE_KEY",
    "STATE_KEY",
    "TASK_KEY",
    "EnvInfo",
    "Feature",
    "MetaWorldEnv",
    "env_info",
    "make_env",
    "parse_env_spec",
    "stack_observations",
]


def __getattr__(name: str):
    if name == "MetaWorldEnv":
        from gaflow.envs.metaworld import MetaWorldEnv

        return MetaWorldEnv
    raise AttributeError(name)

"""Building what an episode job runs — a runtime and an env — by name, once per worker process.

Workers receive plain values (a :class:`~gaflow.runtime.RuntimeSpec`, an env spec, a task) and call
:func:`runtime_and_env`; a process keeps the last policy/critic it loaded and the env of the task it is on, so a
worker that runs many small jobs of one task loads its model once.
"""

from __future__ import annotations

import json
from typing import Any

from gaflow.runtime.episode import RecordingEnv
from gaflow.runtime.inference import GuidedRuntime, RuntimeSpec


def make_task_env(env_spec: str, task: str, policy, *, image_size: int | None = None,
                  max_steps: int | None = None):
    """The env for ``task`` (MetaWorld's image size defaults to the policy's, so the policy sees what it trained on)."""
    from gaflow.envs.registry import make_env, parse_env_spec

    opts: dict[str, Any] = {"max_steps": max_steps}
    if parse_env_spec(env_spec)[0] == "metaworld":
        opts["image_size"] = image_size or getattr(getattr(policy, "config", None), "image_size", None)
    return make_env(env_spec, task, **opts)


_LOADED: dict[str, Any] = {"key": None, "policy": None, "critic": None}  # this process's loaded models
_ENV: dict[str, Any] = {"key": None, "env": None}


def load_models(spec: RuntimeSpec) -> tuple[Any, Any]:
    """The (policy, critic) of ``spec``, loaded once per process and reused while the spec names the same files."""
    key = json.dumps([spec.policy, spec.critic])
    if _LOADED["key"] != key:
        from gaflow.policies.registry import load_policy

        critic = None
        if spec.critic is not None:
            from gaflow.critic.train import load_critic

            critic = load_critic(spec.critic)
        _LOADED.update(key=key, policy=load_policy(spec.policy), critic=critic)
    return _LOADED["policy"], _LOADED["critic"]


def runtime_and_env(spec: RuntimeSpec, env_spec: str, task: str, *, image_size: int | None = None,
                    max_steps: int | None = None, record_images: bool = True) -> tuple[GuidedRuntime, RecordingEnv]:
    """A runtime for ``spec`` (models cached per process) and a recording env for ``task`` (cached per task)."""
    policy, critic = load_models(spec)
    runtime = GuidedRuntime.from_spec(spec, policy=policy, critic=critic)
    key = json.dumps([spec.policy, env_spec, task, image_size, max_steps])
    if _ENV["key"] != key:
        close_env()
        _ENV.update(key=key, env=make_task_env(env_spec, task, policy, image_size=image_size, max_steps=max_steps))
    return runtime, RecordingEnv(_ENV["env"], record_images)


def close_env() -> None:
    """Close this process's cached env."""
    if _ENV["env"] is not None and hasattr(_ENV["env"], "close"):
        _ENV["env"].close()
    _ENV.update(key=None, env=None)


def release() -> None:
    """Drop this process's cached env and models (stages call it after a job batch ran in-process, so a later
    job reloads files that may have changed; pool workers exit with their pool)."""
    close_env()
    _LOADED.update(key=None, policy=None, critic=None)

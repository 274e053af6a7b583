"""Environments by name, for commands that build them inside worker processes.

``make_env(env, task, **options)``: ``env`` is ``"metaworld"``, ``"libero:<suite>"`` (task = task id) or
``"toy"``. Heavy simulators are imported only when asked for.
"""

from __future__ import annotations

from typing import Any


def make_env(env: str, task: str, **options: Any):
    kind, _, rest = env.partition(":")
    if kind == "toy":
        from gaflow.envs.toy import ToyReachEnv

        return ToyReachEnv(task, **{k: v for k, v in options.items() if k in ("max_steps",) and v is not None})
    if kind == "metaworld":
        from gaflow.envs.metaworld import MetaWorldEnv

        return MetaWorldEnv(task, **{k: v for k, v in options.items() if v is not None})
    if kind == "libero":
        from gaflow.envs.libero import LiberoEnv

        suite = rest or "libero_spatial"
        opts = {k: v for k, v in options.items() if v is not None and k != "image_size"}
        return LiberoEnv(suite, int(task), **opts)
    raise ValueError(f"unknown env {env!r}: use 'metaworld', 'libero:<suite>' or 'toy'")

"""Environments by name, for commands that build them inside worker processes.

``make_env(env, task, **options)``: ``env`` is ``"metaworld"``, ``"libero:<suite>"`` (task = task id) or
``"toy"``, optionally followed by ``?key=value&...`` env options (e.g. ``libero:libero_spatial?cameras=1&image_size=64``
for a camera policy). ``env_info(env, task, **options)`` takes the same arguments and returns the env's
:class:`~gaflow.envs.base.EnvInfo` (fps, action size, observation features) without building a simulator where
the features do not depend on it (MetaWorld, toy; LIBERO builds the task once to size its environment state
unless ``environment_state_dim`` is given). Heavy simulators are imported only when asked for.
"""

from __future__ import annotations

from typing import Any

from gaflow.envs.base import EnvInfo


def _parse(value: str) -> Any:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(value.lower(), value)


def parse_env_spec(env: str) -> tuple[str, str, dict[str, Any]]:
    """``"libero:libero_spatial?cameras=1"`` → ``("libero", "libero_spatial", {"cameras": 1})``."""
    spec, _, query = env.partition("?")
    options: dict[str, Any] = {}
    for item in filter(None, query.split("&")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"env option {item!r} in {spec!r}: use key=value")
        options[key] = _parse(value)
    kind, _, rest = spec.partition(":")
    return kind, rest, options


def _resolve(env: str, options: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """The env kind, its argument (LIBERO's suite) and the options its constructor receives — the one place
    ``make_env`` and ``env_info`` agree on what an option means."""
    kind, rest, parsed = parse_env_spec(env)
    opts = {k: v for k, v in {**options, **parsed}.items() if v is not None}
    if kind == "toy":
        return kind, rest, {k: v for k, v in opts.items() if k == "max_steps"}
    if kind == "metaworld":
        return kind, rest, opts
    if kind == "libero":
        if "cameras" in opts:
            opts["cameras"] = bool(opts["cameras"])
        return kind, rest or "libero_spatial", opts
    raise ValueError(f"unknown env {env!r}: use 'metaworld', 'libero:<suite>' or 'toy'")


def make_env(env: str, task: str, **options: Any):
    kind, rest, opts = _resolve(env, options)
    if kind == "toy":
        from gaflow.envs.toy import ToyReachEnv

        return ToyReachEnv(task, **opts)
    if kind == "metaworld":
        from gaflow.envs.metaworld import MetaWorldEnv

        return MetaWorldEnv(task, **opts)
    from gaflow.envs.libero import LiberoEnv

    return LiberoEnv(rest, int(task), **opts)


def env_info(env: str, task: str | int | None = None, **options: Any) -> EnvInfo:
    """What ``make_env(env, task, **options)`` would emit. ``task`` may be ``None`` where the features do not
    depend on it (MetaWorld, toy, LIBERO with ``environment_state_dim=``).

    >>> env_info("metaworld", "push", image_size=64).fps
    80
    """
    kind, rest, opts = _resolve(env, options)
    if kind == "toy":
        from gaflow.envs.toy import env_info as toy_info

        return toy_info(task, **opts)
    if kind == "metaworld":
        from gaflow.envs.metaworld import env_info as metaworld_info

        return metaworld_info(task, **opts)
    from gaflow.envs.libero import env_info as libero_info

    return libero_info(rest, None if task is None else int(task), **opts)


__all__ = ["env_info", "make_env", "parse_env_spec"]

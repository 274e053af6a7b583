"""Environments by name, for commands that build them inside worker processes.

``make_env(env, task, **options)``: ``env`` is ``"metaworld"``, ``"libero:<suite>"`` (task = task id) or
``"toy"``, optionally followed by ``?key=value&...`` env options (e.g. ``libero:libero_spatial?cameras=1&image_size=64``
for a camera policy). Heavy simulators are imported only when asked for.
"""

from __future__ import annotations

from typing import Any


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


def make_env(env: str, task: str, **options: Any):
    kind, rest, parsed = parse_env_spec(env)
    options.update(parsed)
    if kind == "toy":
        from gaflow.envs.toy import ToyReachEnv

        return ToyReachEnv(task, **{k: v for k, v in options.items() if k in ("max_steps",) and v is not None})
    if kind == "metaworld":
        from gaflow.envs.metaworld import MetaWorldEnv

        return MetaWorldEnv(task, **{k: v for k, v in options.items() if v is not None})
    if kind == "libero":
        from gaflow.envs.libero import LiberoEnv

        suite = rest or "libero_spatial"
        opts = {k: v for k, v in options.items() if v is not None}
        if "cameras" in opts:
            opts["cameras"] = bool(opts["cameras"])
        return LiberoEnv(suite, int(task), **opts)
    raise ValueError(f"unknown env {env!r}: use 'metaworld', 'libero:<suite>' or 'toy'")

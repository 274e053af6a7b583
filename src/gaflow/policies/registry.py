"""Base policies by name: ``load_policy("lerobot:<hub id or dir>")``.

Each scheme maps to a loader taking the rest of the string; heavy dependencies are imported only when their scheme
is used. Supported: ``lerobot:`` (SmolVLA, π0, π0.5 via :func:`gaflow.policies.lerobot.load_lerobot_policy`),
``compact:<dir>`` (the built-in policy) and ``toy:`` (the analytic toy-reach policy).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _load_lerobot(rest: str, **kwargs: Any):
    from gaflow.policies.lerobot import load_lerobot_policy

    return load_lerobot_policy(rest, **kwargs)


def builtin_compact_dir() -> str:
    """The compact checkpoint shipped with gaflow (``compact:builtin``; src/gaflow/assets/compact_metaworld/README.md)."""
    from importlib.resources import files

    return str(files("gaflow") / "assets" / "compact_metaworld")


def _load_compact(rest: str, **kwargs: Any):
    from gaflow.policies.compact import CompactFlowPolicy

    return CompactFlowPolicy.from_pretrained(builtin_compact_dir() if rest == "builtin" else rest, **kwargs)


def _load_toy(rest: str, **kwargs: Any):
    from gaflow.policies.toy import ToyReachPolicy

    items = [] if rest == "default" else rest.split(",")
    bad = [kv for kv in items if "=" not in kv]
    if bad:
        raise ValueError(f"policy spec 'toy:{rest}': use toy:default or toy:key=value,... (e.g. toy:std=0.9); "
                         f"got {bad}")
    opts = dict(kv.split("=", 1) for kv in items)
    return ToyReachPolicy(**{k: float(v) if "." in v else int(v) for k, v in opts.items()}, **kwargs)


LOADERS: dict[str, Callable[..., Any]] = {
    "lerobot": _load_lerobot,
    "compact": _load_compact,  # compact:<checkpoint dir> (gaflow train-policy) or compact:builtin (shipped)
    "toy": _load_toy,  # toy:default or toy:std=0.9,gain=0.7 (analytic policy for toy-reach)
}


def load_policy(spec: str, **kwargs: Any):
    """A frozen base policy (a :class:`~gaflow.protocol.FlowPolicy`) from ``"<scheme>:<location>"``.

    Keyword arguments go to the scheme's loader (for ``lerobot:``: ``device``, ``tokenizer``).
    """
    scheme, sep, rest = str(spec).partition(":")
    if not sep or scheme not in LOADERS:
        known = ", ".join(f"'{s}:...'" for s in LOADERS)
        raise ValueError(f"policy spec {spec!r}: expected one of {known}")
    if not rest:
        raise ValueError(f"policy spec {spec!r}: nothing after '{scheme}:'")
    return LOADERS[scheme](rest, **kwargs)

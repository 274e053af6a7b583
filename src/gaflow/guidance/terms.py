"""Objective terms: the summands guidance climbs, their protocol and the registry of their names.

A term is built once per chunk request from :class:`TermInputs` (critic, features, per-request context) and maps a
chunk ``(B, H, d)`` — the real action dims, in the policy's normalised space — to a value ``(B,)``, higher is
better, differentiable w.r.t. the chunk. Its gradient is not asked of the term: the composite
:class:`~gaflow.guidance.objective.Objective` sums the weighted values and takes every term's gradient in one
backward pass. A penalty (jerk, distance to a keep-out zone) is written as a value to raise: ``-cost``.

``GuidanceConfig.objectives`` names terms by their registry name, ``[{"name": "critic", "weight": 1.0}]`` by
default; any other key of an entry is passed to the term's factory as a keyword parameter.

>>> import torch
>>> def reach(inputs, target=0.0):           # a factory: TermInputs and the entry's parameters → a term
...     return Reach(target)
>>> class Reach:
...     def __init__(self, target): self.target = target
...     def value(self, chunk): return -(chunk - self.target).pow(2).sum((1, 2))
>>> register_term("reach_doc", reach)
>>> check_objectives([{"name": "critic", "weight": 1.0}, {"name": "reach_doc", "weight": 0.5, "target": 0.2}])[1]
{'name': 'reach_doc', 'weight': 0.5, 'target': 0.2}
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from gaflow.guidance.checks import number

CRITIC = "critic"  # the one term whose ensemble statistics drive the gate, the fallback and best-of-N
DEFAULT_OBJECTIVES: list[dict[str, Any]] = [{"name": CRITIC, "weight": 1.0}]


@runtime_checkable
class ObjectiveTerm(Protocol):
    def value(self, chunk: torch.Tensor) -> torch.Tensor:
        """``chunk`` ``(B, H, d)`` → ``(B,)``, differentiable w.r.t. ``chunk``; higher is better."""
        ...


@dataclass
class TermInputs:
    """What a term factory may use; built by :meth:`gaflow.guidance.Guidance.objective` once per chunk request."""

    critic: Any  # the guidance's critic (None when no term needs one)
    features: dict[str, torch.Tensor]  # critic features, (B, F) each, one row per sample
    context: dict[str, Any] | None  # per-request inputs, e.g. {"executed_actions": (B, k, d)}; rows as features
    config: Any  # the GuidanceConfig (aggregate, kappa, …)


TermFactory = Callable[..., ObjectiveTerm]  # factory(inputs: TermInputs, **params) -> ObjectiveTerm


@dataclass(frozen=True)
class TermSpec:
    factory: TermFactory
    needs_critic: bool
    check: Callable[..., Any] | None = None  # check(**params) raises ValueError on bad values (config time)


TERMS: dict[str, TermSpec] = {}


def register_term(name: str, factory: TermFactory, *, needs_critic: bool = False, replace: bool = False,
                  check: Callable[..., Any] | None = None) -> None:
    """Make ``name`` usable in ``GuidanceConfig.objectives``; ``factory(inputs, **params)`` builds the term.
    ``check(**params)``, when given, validates an entry's parameter values when the config is built."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"an objective term name must be a non-empty string, got {name!r}")
    if name in TERMS and not replace:
        raise ValueError(f"objective term {name!r} is already registered (pass replace=True to override it)")
    TERMS[name] = TermSpec(factory, needs_critic, check)


def check_objectives(entries: Any) -> list[dict[str, Any]]:
    """Validate ``GuidanceConfig.objectives`` entries; returns copies with ``weight`` filled in (default 1.0).

    Each error names the entry: ``objectives[1] ('smooth'): weight must be finite, got nan``.
    """
    if not isinstance(entries, (list, tuple)) or not entries:
        raise ValueError(f"objectives must be a non-empty list of {{'name': ..., 'weight': ...}}, got {entries!r}")
    out, seen = [], set()
    for i, entry in enumerate(entries):
        where = f"objectives[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ValueError(f"{where} must be a dict with a 'name', got {entry!r}")
        name = entry["name"]
        where = f"{where} ({name!r})"
        if name not in TERMS:
            raise ValueError(f"{where}: unknown objective term; registered: {', '.join(sorted(TERMS))}")
        if name in seen:
            raise ValueError(f"{where}: term listed twice (diagnostics are kept per name)")
        seen.add(name)
        entry = {"name": name, "weight": entry.get("weight", 1.0), **{k: v for k, v in entry.items()
                                                                       if k not in ("name", "weight")}}
        number(f"{where}: weight", entry["weight"], low=0)  # a penalty is a term whose value is −cost
        params = {k: v for k, v in entry.items() if k not in ("name", "weight")}
        for k, v in params.items():
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"{where}: parameter {k!r} must be finite, got {v!r}")
        try:
            inspect.signature(TERMS[name].factory).bind(None, **params)
        except TypeError as e:
            raise ValueError(f"{where}: bad parameters {sorted(params)} for this term: {e}") from e
        if TERMS[name].check is not None:
            try:
                TERMS[name].check(**params)
            except (TypeError, ValueError) as e:
                raise ValueError(f"{where}: {e}") from e
        out.append(entry)
    return out

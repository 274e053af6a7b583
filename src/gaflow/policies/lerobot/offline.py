"""Loading LeRobot checkpoints as gaflow flow policies: ``load_lerobot_policy("lerobot:<hub id or local dir>")``.

Loading goes through the policy class's own ``from_pretrained`` and LeRobot's ``make_pre_post_processors``
(which reads the saved ``policy_preprocessor.json`` / ``policy_postprocessor.json`` and their normalisation
statistics). A local directory is checked first so a broken checkpoint fails with an error naming the file, rather
than deep inside draccus — or, for π0/π0.5, not at all (their ``from_pretrained`` prints a warning and returns
random weights when ``model.safetensors`` cannot be loaded; we turn that into an error).

A checkpoint that cannot be loaded by LeRobot alone (the random-weight test models of
:mod:`gaflow.testing.lerobot_tiny`, whose architecture and tokenizer are stand-ins) names a *load hook* in a
:data:`LOAD_HOOK_FILE` next to ``config.json``. Code that knows such checkpoints registers the hook with
:func:`register_load_hook` when it is imported; the hook returns a :class:`LoadPlan` (patches to build and load the
model inside, a tokenizer, config fields to set). This module knows no hook by name: a checkpoint whose hook is not
registered fails with an error naming the file and the hook.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gaflow.policies.lerobot.adapter import LeRobotFlowPolicy
from gaflow.policies.lerobot.pi0 import PI0FlowPolicy
from gaflow.policies.lerobot.pi05 import PI05FlowPolicy
from gaflow.policies.lerobot.smolvla import SmolVLAFlowPolicy

PREFIX = "lerobot:"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PREPROCESSOR_NAME = "policy_preprocessor.json"
POSTPROCESSOR_NAME = "policy_postprocessor.json"
LOAD_HOOK_FILE = "gaflow_load_hook.json"  # {"hook": <registered name>, ...fields the hook reads}
ADAPTERS: dict[str, type[LeRobotFlowPolicy]] = {
    "smolvla": SmolVLAFlowPolicy,
    "pi0": PI0FlowPolicy,
    "pi05": PI05FlowPolicy,
}


class CheckpointError(ValueError):
    """A LeRobot checkpoint that cannot be used; the message names the offending file."""


@dataclass
class LoadPlan:
    """What a load hook adds to an ordinary load.

    ``patches``: a (single-use) context the policy is built and its weights loaded inside — ``from_pretrained``
    rebuilds the model from the config, so architecture stand-ins must be in place then too. ``tokenizer``: used
    unless the caller passes ``tokenizer=``. ``config_updates``: policy-config fields set after reading
    ``config.json`` (e.g. paths that must follow the checkpoint when it moves).
    """

    patches: contextlib.AbstractContextManager = field(default_factory=contextlib.nullcontext)
    tokenizer: Any = None
    config_updates: dict[str, Any] = field(default_factory=dict)


# A hook gets the checkpoint directory and the parsed LOAD_HOOK_FILE; it raises ValueError on a bad file.
LoadHook = Callable[[Path, dict[str, Any]], LoadPlan]
_LOAD_HOOKS: dict[str, LoadHook] = {}


def register_load_hook(name: str, hook: LoadHook) -> None:
    """Make checkpoints whose :data:`LOAD_HOOK_FILE` says ``{"hook": name}`` loadable (re-registering replaces).

    By convention ``name`` is the registering module's ``__name__``, so an unregistered hook's error can say what
    to import.
    """
    if not name:
        raise ValueError("register_load_hook: name must be a non-empty string")
    _LOAD_HOOKS[name] = hook


def wrap_lerobot_policy(policy, preprocessor, postprocessor, tokenizer=None) -> LeRobotFlowPolicy:
    """Adapter for an already-built LeRobot policy and its processors (picked by ``policy.config.type``)."""
    kind = getattr(policy.config, "type", None)
    if kind not in ADAPTERS:
        raise ValueError(f"no gaflow adapter for LeRobot policy type {kind!r}; supported: {', '.join(ADAPTERS)}")
    return ADAPTERS[kind](policy, preprocessor, postprocessor, tokenizer=tokenizer)


def load_lerobot_policy(
    source: str | os.PathLike, *, device: str | None = None, tokenizer: Any = None
) -> LeRobotFlowPolicy:
    """Load ``"lerobot:<hub id or local dir>"`` (the prefix is optional) as a frozen gaflow flow policy.

    ``device``: override the checkpoint's device (e.g. ``"cpu"``). ``tokenizer``: a tokenizer object to use
    instead of the one named in the preprocessor (offline use of π0/π0.5, whose processors name
    ``google/paligemma-3b-pt-224``).
    """
    from lerobot.configs import PreTrainedConfig
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    src = str(source)
    src = src[len(PREFIX):] if src.startswith(PREFIX) else src
    if not src:
        raise ValueError("empty LeRobot checkpoint: use 'lerobot:<hub id or local dir>'")
    local = Path(src).expanduser()
    is_local = local.exists() or src.startswith((".", "/", "~"))
    plan = LoadPlan()
    if is_local:
        _check_local_checkpoint(local)
        plan = _load_plan(local)
        src = str(local)
    if tokenizer is None:
        tokenizer = plan.tokenizer

    config_file = local / CONFIG_NAME if is_local else f"{src}/{CONFIG_NAME}"
    try:
        config = PreTrainedConfig.from_pretrained(src)
    except Exception as exc:  # draccus / hub errors: say which file
        raise CheckpointError(f"{config_file}: cannot read the LeRobot policy config ({exc})") from exc
    if config.type not in ADAPTERS:
        raise CheckpointError(
            f"{config_file}: policy type {config.type!r} is not a flow VLA gaflow supports "
            f"({', '.join(ADAPTERS)})"
        )
    for key, value in plan.config_updates.items():
        setattr(config, key, value)
    if device is not None:
        config.device = device

    cls = get_policy_class(config.type)
    weights = local / WEIGHTS_NAME if is_local else f"{src}/{WEIGHTS_NAME}"
    captured = io.StringIO()
    with plan.patches, contextlib.redirect_stdout(captured):
        try:
            policy = cls.from_pretrained(src, config=config, strict=True)
        except Exception as exc:
            raise CheckpointError(f"{weights}: cannot load the policy weights ({exc})") from exc
    log = captured.getvalue()
    if "Could not load state dict" in log:  # π0/π0.5 swallow loading errors and keep random weights
        detail = next(line for line in log.splitlines() if "Could not load state dict" in line)
        raise CheckpointError(f"{weights}: weights were not loaded ({detail.strip()})")

    overrides: dict[str, dict[str, Any]] = {}
    if tokenizer is not None:
        overrides["tokenizer_processor"] = {"tokenizer": tokenizer}
    if device is not None:
        overrides["device_processor"] = {"device": device}
    try:
        pre, post = make_pre_post_processors(
            config, pretrained_path=src, preprocessor_overrides=overrides, postprocessor_overrides={}
        )  # the postprocessor keeps its own device step: actions come back on the CPU
    except Exception as exc:
        names = f"{PREPROCESSOR_NAME} / {POSTPROCESSOR_NAME}"
        where = local if is_local else src
        raise CheckpointError(f"{where}/{names}: cannot build the policy's processors ({exc})") from exc
    return wrap_lerobot_policy(policy, pre, post, tokenizer=tokenizer)


def _load_plan(ckpt: Path) -> LoadPlan:
    """The plan of the hook ``ckpt`` names in :data:`LOAD_HOOK_FILE`; an empty plan when there is no such file."""
    path = ckpt / LOAD_HOOK_FILE
    if not path.is_file():
        return LoadPlan()
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    name = spec.get("hook") if isinstance(spec, dict) else None
    if not isinstance(name, str) or not name:
        raise CheckpointError(f"{path}: no 'hook' field naming the load hook this checkpoint needs")
    if name not in _LOAD_HOOKS:
        known = ", ".join(sorted(_LOAD_HOOKS)) or "none"
        raise CheckpointError(
            f"{path}: this checkpoint needs the load hook {name!r}, which is not registered in this process "
            f"(registered: {known}); import the module that registers it (e.g. `import {name}`) before loading"
        )
    try:
        return _LOAD_HOOKS[name](ckpt, spec)
    except (ValueError, KeyError, OSError) as exc:
        raise CheckpointError(f"{path}: load hook {name!r} failed ({exc})") from exc


def _check_local_checkpoint(path: Path) -> None:
    """Fail early, naming the file, on the usual ways a checkpoint directory is broken."""
    if not path.is_dir():
        raise CheckpointError(f"{path}: LeRobot checkpoint directory not found")
    cfg = path / CONFIG_NAME
    if not cfg.is_file():
        raise CheckpointError(f"{cfg}: missing — not a LeRobot policy checkpoint (expected config.json)")
    try:
        data = json.loads(cfg.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{cfg}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or "type" not in data:
        raise CheckpointError(f"{cfg}: no 'type' field (expected one of {', '.join(ADAPTERS)})")
    if data["type"] not in ADAPTERS:
        raise CheckpointError(
            f"{cfg}: policy type {data['type']!r} is not a flow VLA gaflow supports ({', '.join(ADAPTERS)})"
        )
    for name in (WEIGHTS_NAME, PREPROCESSOR_NAME, POSTPROCESSOR_NAME):
        if not (path / name).is_file():
            raise CheckpointError(f"{path / name}: missing from the checkpoint")

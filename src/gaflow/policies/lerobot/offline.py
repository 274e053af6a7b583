"""Loading LeRobot checkpoints as gaflow flow policies: ``load_lerobot_policy("lerobot:<hub id or local dir>")``.

Loading goes through the policy class's own ``from_pretrained`` and LeRobot's ``make_pre_post_processors``
(which reads the saved ``policy_preprocessor.json`` / ``policy_postprocessor.json`` and their normalisation
statistics). A local directory is checked first so a broken checkpoint fails with an error naming the file, rather
than deep inside draccus — or, for π0/π0.5, not at all (their ``from_pretrained`` prints a warning and returns
random weights when ``model.safetensors`` cannot be loaded; we turn that into an error).

Checkpoints written by :func:`gaflow.policies.lerobot.tiny.save_offline_checkpoint` carry a marker file; their
stand-in tokenizer and tiny-model patches are applied automatically.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
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
ADAPTERS: dict[str, type[LeRobotFlowPolicy]] = {
    "smolvla": SmolVLAFlowPolicy,
    "pi0": PI0FlowPolicy,
    "pi05": PI05FlowPolicy,
}


class CheckpointError(ValueError):
    """A LeRobot checkpoint that cannot be used; the message names the offending file."""


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
    plan = None
    if is_local:
        _check_local_checkpoint(local)
        from gaflow.policies.lerobot.tiny import offline_load_plan

        plan = offline_load_plan(local)
        src = str(local)
    if plan is not None and tokenizer is None:
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
    for key, value in (plan.config_updates if plan else {}).items():
        setattr(config, key, value)
    if device is not None:
        config.device = device

    cls = get_policy_class(config.type)
    weights = local / WEIGHTS_NAME if is_local else f"{src}/{WEIGHTS_NAME}"
    captured = io.StringIO()
    with plan.patches if plan else contextlib.nullcontext(), contextlib.redirect_stdout(captured):
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

"""Autograd inside ``no_grad`` / ``inference_mode`` callers: the critic's gradient is taken in a narrow scope.

Callers (gaflow's rollouts, LeRobot's ``predict_action_chunk``) run the policy without autograd; guidance needs
``∇Q`` anyway. :func:`autograd_enabled` re-enables it for one block (per flow step: ~5 µs, far less than taking
the policy out of inference mode would cost) and :func:`normal_tensors` clones inference tensors that autograd
must save (the critic features, once per chunk; the state of the estimators that differentiate through the
policy). Used by the sampler and by LeRobot hook mode — one implementation.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch


@contextlib.contextmanager
def autograd_enabled():
    """Re-enable autograd inside ``no_grad`` / ``inference_mode`` for the critic's gradient only."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def normal_tensors(x: Any) -> Any:
    """Clone inference tensors (in a tree) so autograd may save them; leaves normal tensors alone."""
    if isinstance(x, torch.Tensor):
        return x.clone() if x.is_inference() else x
    if isinstance(x, dict):
        return {k: normal_tensors(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(normal_tensors(v) for v in x)
    return x

"""Small shared builders for tests: toy velocity models and critics with known answers."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from torch import nn

from gaflow.policies import CallablePolicy, GaussianFlowPolicy, PolicySpec


def gaussian_policy(convention="lerobot", chunk_len=4, action_dim=2, padded_dim=3, std=1.0, num_steps=10):
    return GaussianFlowPolicy(PolicySpec(chunk_len, action_dim, padded_dim, convention, num_steps), std=std)


class LinearCritic(nn.Module):
    """Q(A) = <c, A> over the real dims; ``members`` copies with offsets form a disagreeing ensemble."""

    def __init__(self, c: torch.Tensor, offsets=(0.0,)):
        super().__init__()
        self.c = c
        self.offsets = torch.tensor(offsets)

    def forward(self, features, chunk):
        q = (chunk * self.c).sum((1, 2))
        return q.unsqueeze(0) + self.offsets.view(-1, 1)


class QuadraticCritic(nn.Module):
    """Q(A) = −‖A − target‖²: concave, so more guidance means closer to the target (up to overshoot)."""

    def __init__(self, target: torch.Tensor):
        super().__init__()
        self.target = target

    def forward(self, features, chunk):
        return -((chunk - self.target) ** 2).sum((1, 2))


def mlp_policy(convention="forward", chunk_len=4, action_dim=2, padded_dim=3, seed=0):
    """A nonlinear (random MLP) velocity field conditioned on an observation vector in the context."""
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(chunk_len * padded_dim + 1 + 5, 32), nn.Tanh(), nn.Linear(32, chunk_len * padded_dim))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    spec = PolicySpec(chunk_len, action_dim, padded_dim, convention, 10)

    def fn(x, t, ctx):
        inp = torch.cat([x.flatten(1), t.view(-1, 1), ctx["obs"]], dim=1)
        return net(inp).view_as(x)

    return CallablePolicy(fn, spec, features_fn=lambda ctx: {"observation": ctx["obs"]})


GOLDEN = Path(__file__).parent / "golden"


def golden_module():
    """tests/golden/record_episodes.py as a module (the fixed episodes recorded before the runtime existed)."""
    spec = importlib.util.spec_from_file_location("record_episodes", GOLDEN / "record_episodes.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def marked_pids(marker: str) -> list[int]:
    """Live (non-zombie) processes whose environment holds ``marker`` — what a killed job left running."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            if marker.encode() in (d / "environ").read_bytes():
                if (d / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    pids.append(int(d.name))
        except OSError:
            continue
    return pids

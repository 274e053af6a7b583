"""The guided-inference runtime: the only execution path reproduces the pre-runtime episodes bit for bit, keeps
per-row noise streams in a batch, and builds from plain specs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import GOLDEN, golden_module

from gaflow.policies.registry import load_policy
from gaflow.runtime import GuidedRuntime, RuntimeSpec, run_episode


def test_runtime_reproduces_episodes_recorded_before_the_runtime_existed():
    torch.set_num_threads(1)
    expected = json.loads((GOLDEN / "episodes.json").read_text())
    got = golden_module().record()
    assert got == expected  # outcomes and a SHA-256 of every chunk, toy (4 arms) and MetaWorld (2 arms)


def _toy_obs(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"observation.state": rng.uniform(-1, 1, 4).astype(np.float32), "task": "move the point to the goal"}


def test_a_batch_row_gets_exactly_the_chunk_it_gets_alone():
    policy = load_policy("toy:default")
    rt = GuidedRuntime(policy, critic=lambda f, a: -(a - 0.5).pow(2).sum((1, 2)), guidance={"relative": 0.4})
    alone = []
    for seed in (3, 4, 5):
        rt.start_episode(seed)
        alone.append(rt.infer(_toy_obs(seed)).chunk[0])
    rt.start_episode([3, 4, 5])
    batched = rt.infer([_toy_obs(s) for s in (3, 4, 5)]).chunk
    for i in range(3):
        assert torch.equal(batched[i], alone[i])


def test_start_episode_restarts_the_noise_stream_and_seeds_differ():
    rt = GuidedRuntime(load_policy("toy:default"))
    rt.start_episode(11)
    a = rt.infer(_toy_obs(0)).chunk
    rt.start_episode(11)
    b = rt.infer(_toy_obs(0)).chunk
    rt.start_episode(12)
    c = rt.infer(_toy_obs(0)).chunk
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_guidance_without_a_critic_is_refused_naming_the_option():
    with pytest.raises(ValueError, match="critic"):
        GuidedRuntime(load_policy("toy:default"), guidance={"relative": 0.3})
    with pytest.raises(ValueError, match="critic"):
        GuidedRuntime.from_spec(RuntimeSpec(policy="toy:default", select="best", num_candidates=4))


def test_from_spec_matches_a_hand_built_runtime():
    spec = RuntimeSpec(policy="toy:default", noise_seed=5, n_action_steps=2)
    rt = GuidedRuntime.from_spec(spec)
    by_hand = GuidedRuntime(load_policy("toy:default"), noise_seed=5, n_action_steps=2)
    from gaflow.envs.toy import ToyReachEnv

    a = run_episode(ToyReachEnv("toy-reach"), rt, seed=9)
    b = run_episode(ToyReachEnv("toy-reach"), by_hand, seed=9)
    assert a.summary() | {"mean_latency_s": 0} == b.summary() | {"mean_latency_s": 0}
    assert all(torch.equal(x.chunk, y.chunk) for x, y in zip(a.chunks, b.chunks, strict=True))
    assert all(e - s <= 2 for s, e in (c.executed for c in a.chunks))


def test_n_action_steps_outside_the_chunk_is_refused():
    with pytest.raises(ValueError, match="n_action_steps"):
        GuidedRuntime(load_policy("toy:default"), n_action_steps=99)

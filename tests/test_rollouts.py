"""Specifications of receding-horizon rollouts (the runtime's one episode loop): exactly n_action_steps per chunk, reproducible episodes from
(seed, noise seed), guidance=None identical to the zero control, stop at the first success."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gaflow.evaluation.splits import parse_seeds
from gaflow.policies.compact import CompactFlowPolicy, CompactPolicyConfig, Normalizer
from gaflow.runtime import GuidedRuntime, episode_noise_seed, run_episode
from gaflow.sampler import SamplerConfig

IMG = 16


class FakeEnv:
    """A deterministic point mass with the gaflow env interface; success when x passes a seed-dependent goal."""

    task = "fake"

    def __init__(self, max_steps: int = 30, goal: float | None = None) -> None:
        self.max_steps, self.goal = max_steps, goal
        self.actions: list[np.ndarray] = []

    def _obs(self):
        img = np.zeros((IMG, IMG, 3), np.uint8)
        img[..., 0] = np.uint8(np.clip(128 + 40 * self.pos[0], 0, 255))
        return {"observation.image": img, "observation.state": self.pos.astype(np.float32),
                "observation.environment_state": np.zeros(39, np.float32), "task": "move right"}

    def reset(self, seed: int):
        rng = np.random.default_rng(seed)
        self.pos = rng.uniform(-0.5, 0.5, 4)
        self.steps, self.actions = 0, []
        return self._obs()

    def step(self, action):
        a = np.clip(np.asarray(action, dtype=np.float64), -1, 1)
        self.actions.append(a)
        self.pos = self.pos + 0.1 * a
        self.steps += 1
        success = self.goal is not None and self.pos[0] > self.goal
        done = success or self.steps >= self.max_steps
        return self._obs(), bool(success), done, {"step": self.steps}


def make_policy(chunk_len: int = 5, n_action_steps: int = 3) -> CompactFlowPolicy:
    torch.manual_seed(0)
    cfg = CompactPolicyConfig(chunk_len=chunk_len, n_action_steps=n_action_steps, image_size=IMG,
                              cnn_channels=(8,), image_feature_dim=16, text_encoder="hashed", text_feature_dim=8,
                              state_feature_dim=8, hidden_dim=32, expert_layers=1, time_embed_dim=8)
    norm = Normalizer({"action": {"mean": torch.full((4,), 0.3), "std": torch.full((4,), 0.5)},
                       "observation.state": {"mean": torch.zeros(4), "std": torch.ones(4)}})
    return CompactFlowPolicy(cfg, norm).eval().requires_grad_(False)


def critic(features, chunk):
    return -(chunk - 1.0).pow(2).sum((1, 2)) + features["observation"].sum(1)


def test_receding_horizon_executes_exactly_n_action_steps_per_chunk():
    env, policy = FakeEnv(max_steps=23), make_policy(chunk_len=5)
    rec = run_episode(env, GuidedRuntime(policy, n_action_steps=3), seed=1)
    assert rec.length == 23 and not rec.success
    spans = [c.executed for c in rec.chunks]
    assert spans[0] == (0, 3)
    assert all(b - a == 3 for a, b in spans[:-1]) and spans[-1] == (21, 23)
    assert all(c.env_step == a for c, (a, _) in zip(rec.chunks, spans, strict=True))
    # the executed actions are the first n decoded actions of each recorded chunk
    for c in rec.chunks:
        decoded = policy.decode_actions(c.chunk.unsqueeze(0))[0].numpy()
        a, b = c.executed
        np.testing.assert_allclose(np.stack(env.actions[a:b]), np.clip(decoded[: b - a], -1, 1), atol=1e-6)
    assert rec.chunks[0].chunk.shape == (5, 4)
    assert rec.chunks[0].features["observation"].shape == (32,)
    assert rec.chunks[0].latency_s > 0


def test_default_n_action_steps_is_the_policys():
    rec = run_episode(FakeEnv(max_steps=8), GuidedRuntime(make_policy(chunk_len=5, n_action_steps=2)), seed=0)
    assert [c.executed for c in rec.chunks][:2] == [(0, 2), (2, 4)]


def test_same_seed_and_noise_seed_give_the_same_episode():
    policy = make_policy()
    a = run_episode(FakeEnv(), GuidedRuntime(policy, noise_seed=3), seed=7)
    b = run_episode(FakeEnv(), GuidedRuntime(policy, noise_seed=3), seed=7)
    c = run_episode(FakeEnv(), GuidedRuntime(policy, noise_seed=4), seed=7)
    assert a.length == b.length and len(a.chunks) == len(b.chunks)
    assert all(torch.equal(x.chunk, y.chunk) for x, y in zip(a.chunks, b.chunks, strict=True))
    assert not torch.equal(a.chunks[0].chunk, c.chunks[0].chunk)
    assert episode_noise_seed(7, 3) == episode_noise_seed(7, 3) != episode_noise_seed(7, 4)


def test_unguided_equals_zero_control():
    policy = make_policy()
    base = run_episode(FakeEnv(), GuidedRuntime(policy), seed=2)
    ctrl = run_episode(FakeEnv(), GuidedRuntime(policy, critic=critic, guidance={"scale": 5.0, "control": "zero"}),
                       seed=2)
    assert base.length == ctrl.length
    for x, y in zip(base.chunks, ctrl.chunks, strict=True):
        assert torch.equal(x.chunk, y.chunk)
        assert x.guidance is None and y.guidance is not None
        assert y.guidance["applied_norm_mean"] == 0.0 and y.guidance["raw_grad_norm_mean"] > 0
    # and real guidance with the same noise does change the chunks
    guided = run_episode(FakeEnv(), GuidedRuntime(policy, critic=critic, guidance={"scale": 5.0}), seed=2)
    assert not torch.equal(base.chunks[0].chunk, guided.chunks[0].chunk)


def test_episode_stops_at_first_success_even_mid_chunk():
    env = FakeEnv(max_steps=40, goal=-10.0)  # any first step succeeds
    rec = run_episode(env, GuidedRuntime(make_policy(), n_action_steps=3), seed=0)
    assert rec.success and rec.first_success_step == 1 and rec.length == 1
    assert rec.chunks[0].executed == (0, 1)


def test_best_of_n_records_the_selected_value():
    runtime = GuidedRuntime(make_policy(), critic=critic, sampler=SamplerConfig(num_candidates=4, select="best"))
    rec = run_episode(FakeEnv(max_steps=6), runtime, seed=0)
    assert all(c.value is not None and np.isfinite(c.value) for c in rec.chunks)


def test_seed_ranges_parse_and_bad_ranges_are_refused():
    assert parse_seeds("1000-1003,7") == [7, 1000, 1001, 1002, 1003]
    with pytest.raises(ValueError, match="seed range"):
        parse_seeds("5-2")


def test_eval_policy_groups_by_task_and_workers_do_not_change_episodes():
    """`gaflow eval-policy` on the shipped checkpoint: per-task, seed-sorted summaries, identical (timings aside)
    whether episodes run in this process or in two worker processes."""
    from gaflow.evaluation.policy import evaluate_policy
    from gaflow.policies.registry import builtin_compact_dir

    builtin = builtin_compact_dir()
    kw = dict(tasks=["push", "hand-insert"], seeds=[10001, 10000], max_steps=8, progress=False)
    one = evaluate_policy(builtin, workers=1, **kw)
    two = evaluate_policy(builtin, workers=2, **kw)
    timing = ("wall_s", "mean_latency_s")
    strip = {t: [{k: v for k, v in s.items() if k not in timing} for s in eps] for t, eps in one.items()}
    assert strip == {t: [{k: v for k, v in s.items() if k not in timing} for s in eps] for t, eps in two.items()}
    assert list(one) == ["push", "hand-insert"]
    assert [s["seed"] for s in one["push"]] == [10000, 10001] and all(s["task"] == "push" for s in one["push"])
    assert all(s["length"] == 8 for eps in one.values() for s in eps)

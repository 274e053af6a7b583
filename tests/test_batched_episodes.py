"""Lockstep episodes: M episodes stepped together with one batched policy call per round give every episode exactly
what it gets alone; rendering only where the policy looks reproduces the golden MetaWorld episodes."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import GOLDEN, golden_module

from gaflow.envs.toy import ToyReachEnv
from gaflow.policies.registry import load_policy
from gaflow.runtime import GuidedRuntime, run_episode
from gaflow.runtime.batched import rows_are_independent, run_episodes_batched

SEEDS = [0, 1, 2, 3, 4, 5, 6, 7]


def toy_critic(features, chunk):
    """Analytic: the first action should point from the position to the goal (the golden file's toy critic)."""
    state = features["state"]
    return -(chunk[:, 0, :] - (state[:, 2:] - state[:, :2])).pow(2).sum(1) - 0.1 * chunk.pow(2).sum((1, 2))


def _same_record(a, b) -> None:
    assert {**a.summary(), "mean_latency_s": 0} == {**b.summary(), "mean_latency_s": 0}
    assert len(a.chunks) == len(b.chunks)
    for x, y in zip(a.chunks, b.chunks, strict=True):
        assert (x.index, x.env_step, x.executed) == (y.index, y.env_step, y.executed)
        assert torch.equal(x.chunk, y.chunk)
        assert x.features.keys() == y.features.keys()
        assert all(torch.equal(x.features[k], y.features[k]) for k in x.features)
        # JSON text, because NaN != NaN (e.g. the zero control's cosine) and the diagnostics must match exactly
        assert json.dumps(x.guidance, sort_keys=True) == json.dumps(y.guidance, sort_keys=True)
        assert x.value == y.value


ARMS = {
    "unguided": {},
    "guided": {"guidance": {"relative": 0.5}},
    "zero": {"guidance": {"relative": 0.5, "control": "zero"}},
    "scaled+clip": {"guidance": {"scale": 0.3, "clip": 2.0}},
    "best-of-4": {"guidance": {"estimator": "none"}, "num_candidates": 4, "select": "best"},
}


@pytest.mark.parametrize("arm", list(ARMS))
def test_every_lockstep_episode_is_the_episode_it_is_alone(arm):
    policy = load_policy("toy:default")
    kw = ARMS[arm]
    runtime = GuidedRuntime(policy, critic=toy_critic if kw else None, noise_seed=7).with_guidance(
        kw.get("guidance"), num_candidates=kw.get("num_candidates", 1), select=kw.get("select", "first"))
    alone = [run_episode(ToyReachEnv("toy-reach-far"), runtime, seed=s) for s in SEEDS]
    together = run_episodes_batched([ToyReachEnv("toy-reach-far") for _ in SEEDS], runtime, SEEDS)
    assert len({r.length for r in alone}) > 2  # rows leave the batch at different rounds
    assert {r.success for r in alone} == {True, False}
    for a, b in zip(alone, together, strict=True):
        _same_record(a, b)


def test_a_random_control_runs_its_episodes_one_at_a_time_and_so_matches_them():
    policy = load_policy("toy:default")
    make = lambda: GuidedRuntime(policy, critic=toy_critic, guidance={"relative": 0.5, "control": "random"})  # noqa: E731
    assert not rows_are_independent(make()) and rows_are_independent(GuidedRuntime(policy))
    # other guidance batches: Guidance.start_episode reseeds only the random control
    assert rows_are_independent(GuidedRuntime(policy, critic=toy_critic, guidance={"relative": 0.5}))
    sequential = make()
    alone = [run_episode(ToyReachEnv(), sequential, seed=s) for s in SEEDS]
    together = run_episodes_batched([ToyReachEnv() for _ in SEEDS], make(), SEEDS)
    for a, b in zip(alone, together, strict=True):
        _same_record(a, b)


def test_record_false_keeps_summaries_only_and_bad_arguments_are_named():
    runtime = GuidedRuntime(load_policy("toy:default"))
    recs = run_episodes_batched([ToyReachEnv(), ToyReachEnv()], runtime, [3, 4], record=False)
    assert [r.chunks for r in recs] == [[], []] and [r.seed for r in recs] == [3, 4]
    assert [r.summary()["length"] for r in recs] == [run_episode(ToyReachEnv(), runtime, seed=s).length
                                                     for s in (3, 4)]
    with pytest.raises(ValueError, match="one seed per env"):
        run_episodes_batched([ToyReachEnv()], runtime, [1, 2])
    env = ToyReachEnv()
    with pytest.raises(ValueError, match="distinct env"):
        run_episodes_batched([env, env], runtime, [1, 2])
    assert run_episodes_batched([], runtime, []) == []




def test_rendering_only_where_the_policy_looks_reproduces_the_golden_metaworld_episodes():
    pytest.importorskip("metaworld")
    from gaflow.envs.registry import make_env

    torch.set_num_threads(1)
    golden, expected = golden_module(), json.loads((GOLDEN / "episodes.json").read_text())["metaworld"]
    policy = load_policy("compact:builtin")
    critic = golden.metaworld_critic(policy)
    env = make_env("metaworld", golden.METAWORLD_TASK, image_size=policy.config.image_size,
                   max_steps=golden.METAWORLD_MAX_STEPS)
    renders = {"n": 0}
    render = env.render

    def counting_render():
        renders["n"] += 1
        return render()

    env.render = counting_render
    try:
        for arm, g in golden.METAWORLD_ARMS.items():
            runtime = GuidedRuntime(policy, critic=critic if g else None, guidance=g)
            for seed in golden.METAWORLD_SEEDS:
                renders["n"] = 0
                (rec,) = run_episodes_batched([env], runtime, [seed])
                got = golden.outcome(rec.success, rec.length, rec.first_success_step, [c.chunk for c in rec.chunks])
                assert got == expected[f"{golden.METAWORLD_TASK}/{arm}/{seed}"]
                assert renders["n"] == len(rec.chunks)  # one image per chunk, not one per step
                assert rec.length > 2 * len(rec.chunks)
        assert env.render_images  # restored after the episodes
    finally:
        env.close()

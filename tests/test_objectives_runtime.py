"""Objective terms in execution (issue #17): the runtime fills the objective context from the episode, projects the
final chunk onto the hard constraints before decoding, and critic-only guidance takes none of these paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gaflow.envs.toy import ToyReachEnv
from gaflow.guidance import register_term
from gaflow.guidance.terms_space import parse_zone
from gaflow.policies.registry import load_policy
from gaflow.runtime import GuidedRuntime, run_episode
from gaflow.runtime.episode import RecordingEnv

SEEN: list[dict] = []


class _Spy:
    """Records the context it was built with; its value is 0 (weight 0 in the tests: it changes nothing)."""

    def __init__(self, context):
        SEEN.append({k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in (context or {}).items()})

    def value(self, chunk):
        return chunk.sum((1, 2)) * 0.0


register_term("objectives_spy", lambda inputs: _Spy(inputs.context), replace=True)


def _runtime(guidance, n_action_steps=None):
    return GuidedRuntime(load_policy("toy:default"), guidance=guidance, n_action_steps=n_action_steps)


def test_an_episode_passes_executed_actions_position_path_and_decode_to_the_terms():
    SEEN.clear()
    env = RecordingEnv(ToyReachEnv(), record_images=False)
    rt = _runtime({"scale": 0.0, "objectives": [{"name": "objectives_spy", "weight": 0.0}]}, n_action_steps=2)
    rec = run_episode(env, rt, seed=4)
    assert len(SEEN) == len(rec.chunks) >= 3
    assert SEEN[0]["executed_actions"] is None  # nothing executed before the first chunk
    for i in range(1, len(rec.chunks)):
        executed = torch.cat([c.chunk[: c.executed[1] - c.executed[0], :2] for c in rec.chunks[:i]])[-3:]
        assert torch.equal(SEEN[i]["executed_actions"][0], executed)
        start = rec.chunks[i].env_step
        np.testing.assert_array_equal(SEEN[i]["ee_position"][0].numpy(), env.frames[start]["state"][:2])
    assert SEEN[0]["action_path"] is env.action_path
    torch.testing.assert_close(SEEN[0]["action_scale"], torch.ones(1, 2))  # the toy decode: clamp, affine inside
    torch.testing.assert_close(SEEN[0]["action_offset"], torch.zeros(1, 2))


def test_critic_only_guidance_builds_no_context_and_no_constraints():
    critic = lambda f, a: -(a - 0.5).pow(2).sum((1, 2)).unsqueeze(0)  # noqa: E731
    rt = GuidedRuntime(load_policy("toy:default"), critic=critic, guidance={"relative": 0.4})
    assert not rt.wants_objective_context and rt._constraints is None and rt._decode_affine is None
    assert not _runtime(None).wants_objective_context
    # a zero-weight extra term (with its context) leaves every executed action as it was
    plain = run_episode(ToyReachEnv(), rt, seed=2)
    extra = GuidedRuntime(load_policy("toy:default"), critic=critic, guidance={
        "relative": 0.4, "objectives": [{"name": "critic"}, {"name": "smoothness", "weight": 0.0}]})
    assert extra.wants_objective_context
    other = run_episode(ToyReachEnv(), extra, seed=2)
    assert [torch.equal(a.chunk, b.chunk) for a, b in zip(plain.chunks, other.chunks, strict=True)] == \
        [True] * len(plain.chunks)


def _zone_on_the_unguided_path(seed):
    env = RecordingEnv(ToyReachEnv(), record_images=False)
    run_episode(env, _runtime(None), seed=seed)
    positions = np.array([f["state"][:2] for f in env.frames[1:]])
    centre = positions[len(positions) // 3]
    return {"type": "sphere", "center": [float(x) for x in centre], "radius": 0.1}, positions


def _executed_positions(env):
    return np.array([f["state"][:2] for f in env.frames[1:]] + [env._obs["observation.state"][:2]])


@pytest.mark.parametrize("seed", [1, 7])
def test_projection_keeps_the_executed_toy_path_out_of_a_zone_across_it(seed):
    """The toy's action path is exact, so no executed position may enter the zone; the unguided path does."""
    zone, unguided = _zone_on_the_unguided_path(seed)
    parsed = parse_zone(zone)
    assert (parsed.signed_distance(torch.from_numpy(unguided)) < 0).sum() > 0
    env = RecordingEnv(ToyReachEnv(), record_images=False)
    rt = _runtime({"estimator": "none", "objectives": [
        {"name": "keep_out", "weight": 0.0, "zones": [zone], "project": True}]})
    rec = run_episode(env, rt, seed=seed)
    executed = _executed_positions(env)
    assert (parsed.signed_distance(torch.from_numpy(executed.astype(np.float64))) >= 0).all()
    reports = [c.guidance for c in rec.chunks]
    assert sum(r["keep_out_violations_before"] for r in reports) > 0
    assert all(r["keep_out_violations_after"] == 0 for r in reports)
    # the executed actions are the decoded projected chunks: the record holds what ran
    assert all(r["projected_steps"] >= 0 for r in reports)


def test_soft_keep_out_guidance_leaves_the_projection_less_to_fix():
    zone, _ = _zone_on_the_unguided_path(1)
    before = {}
    for weight in (0.0, 300.0):
        rt = _runtime({"scale": 1.0, "objectives": [
            {"name": "keep_out", "weight": weight, "zones": [zone], "margin": 0.05, "project": True}]})
        before[weight] = sum(c.guidance["keep_out_violations_before"]
                             for seed in range(1, 6) for c in run_episode(ToyReachEnv(), rt, seed=seed).chunks)
    assert before[0.0] > 0 and before[300.0] < 0.5 * before[0.0]


def test_a_projected_term_without_an_action_path_fails_naming_it():
    rt = _runtime({"estimator": "none", "objectives": [
        {"name": "keep_out", "weight": 0.0, "project": True,
         "zones": [{"type": "sphere", "center": [0, 0], "radius": 0.1}]}]})
    rt.start_episode(0)
    obs = ToyReachEnv().reset(0)
    with pytest.raises(ValueError, match="'keep_out' needs 'action_path'"):
        rt.infer(obs)


def test_paired_evaluation_arms_get_the_episode_context_too():
    """`gaflow eval` runs every arm through the same loop as run_episode, so preset arms (gentle: smoothness across
    the executed boundary) see the executed actions — and several episodes given together run one at a time."""
    from gaflow.evaluation.runner import Arm, EvalConfig, evaluate_episodes
    from gaflow.runtime.batched import run_episodes_batched

    guidance = {"scale": 0.0, "objectives": [{"name": "objectives_spy", "weight": 0.0}]}
    cfg = EvalConfig(policy="toy:default", env="toy", tasks=["toy-reach"], seeds=[4], split="unsplit",
                     arms=[Arm("unguided"), Arm("spy", guidance)], n_action_steps=2)
    SEEN.clear()
    (record,) = evaluate_episodes(cfg.to_dict(), [("toy-reach", 4)])
    from_eval = list(SEEN)
    SEEN.clear()
    rec = run_episode(RecordingEnv(ToyReachEnv(), record_images=False), _runtime(guidance, n_action_steps=2), seed=4)
    assert len(from_eval) == len(rec.chunks) >= 3 and from_eval[1]["executed_actions"] is not None
    for a, b in zip(from_eval, SEEN, strict=True):
        assert (a["executed_actions"] is None) == (b["executed_actions"] is None)
        if a["executed_actions"] is not None:
            assert torch.equal(a["executed_actions"], b["executed_actions"])
    SEEN.clear()
    runs = run_episodes_batched([ToyReachEnv(), ToyReachEnv()], _runtime(guidance, n_action_steps=2), [4, 5])
    assert len(SEEN) == sum(len(r.chunks) for r in runs)  # one context per chunk: rows never share a batch
    assert record["arms"]["spy"]["success"] == rec.success

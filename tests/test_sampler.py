"""The sampler loop: conventions, noise handling, candidates, grad modes."""

import contextlib

import pytest
import torch
from helpers import LinearCritic, gaussian_policy, mlp_policy

from gaflow.convention import clean_estimate, interpolate, target_velocity, time_grid
from gaflow.critic import EnsembleMLPCritic
from gaflow.guidance import Guidance, GuidanceConfig, register_term
from gaflow.policies import ConventionFlip, TimeConvention
from gaflow.sampler import SamplerConfig, sample_chunks


def test_time_grid_runs_noise_to_data_in_each_convention():
    lr = time_grid(TimeConvention.LEROBOT, 10)
    fw = time_grid(TimeConvention.FORWARD, 10)
    assert lr[0] == 1.0 and abs(float(lr[-1])) < 1e-6 and (lr[1:] < lr[:-1]).all()
    assert fw[0] == 0.0 and fw[-1] == 1.0 and (fw[1:] > fw[:-1]).all()


@pytest.mark.parametrize("convention", ["lerobot", "forward"])
def test_clean_estimate_recovers_chunk_from_exact_velocity(convention):
    noise, chunk = torch.randn(3, 4, 2), torch.randn(3, 4, 2)
    t = torch.rand(3)
    x = interpolate(noise, chunk, t, convention)
    v = target_velocity(noise, chunk, convention)
    torch.testing.assert_close(clean_estimate(x, v, t, convention), chunk)


def test_same_gaussian_flow_in_both_conventions_gives_same_chunks():
    # The two velocity formulas are derived independently in GaussianFlowPolicy.
    mu = torch.randn(5, 4, 3)
    noise = torch.randn(5, 4, 3)
    for steps in (1, 10):
        a = sample_chunks(gaussian_policy("lerobot", std=0.7, num_steps=steps), mu, noise=noise).chunk
        b = sample_chunks(gaussian_policy("forward", std=0.7, num_steps=steps), mu, noise=noise).chunk
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_convention_flip_of_a_nonlinear_policy_gives_same_chunks_guided_and_unguided():
    policy = mlp_policy("forward")
    flipped = ConventionFlip(policy)
    assert flipped.spec.convention is TimeConvention.LEROBOT
    ctx = {"obs": torch.randn(6, 5)}
    noise = torch.randn(6, 4, 3)
    critic = LinearCritic(torch.randn(4, 2))
    for guidance in (None, Guidance(critic, GuidanceConfig(scale=0.3))):
        a = sample_chunks(policy, context=ctx, noise=noise, guidance=guidance).chunk
        b = sample_chunks(flipped, context=ctx, noise=noise, guidance=guidance).chunk
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["euler", "midpoint"])
def test_unguided_gaussian_samples_have_the_target_moments(method):
    policy = gaussian_policy("lerobot", std=0.5, num_steps=50)
    mu = torch.full((20000, 4, 3), 0.3)
    out = sample_chunks(policy, mu, config=SamplerConfig(method=method), generator=torch.Generator().manual_seed(0))
    assert abs(float(out.chunk.mean()) - 0.3) < 0.01
    # Euler shrinks the variance slightly at 50 steps; midpoint is closer.
    tol = 0.03 if method == "euler" else 0.01
    assert abs(float(out.chunk.std()) - 0.5) < tol


def test_noise_from_a_seeded_generator_is_reproducible_and_candidates_share_context():
    policy = gaussian_policy()
    mu = torch.randn(2, 4, 3)
    cfg = SamplerConfig(num_candidates=3)
    a = sample_chunks(policy, mu, config=cfg, generator=torch.Generator().manual_seed(5))
    b = sample_chunks(policy, mu, config=cfg, generator=torch.Generator().manual_seed(5))
    assert a.candidates.shape == (2, 3, 4, 3)
    torch.testing.assert_close(a.candidates, b.candidates)
    # candidate j of observation i equals a single-candidate run from the same noise
    noise = torch.randn(2, 3, 4, 3)
    many = sample_chunks(policy, mu, config=cfg, noise=noise)
    one = sample_chunks(policy, mu[1:2], noise=noise[1, 2:3])
    torch.testing.assert_close(many.candidates[1, 2], one.chunk[0])


def test_bad_inputs_give_clear_errors():
    policy = gaussian_policy()
    with pytest.raises(ValueError, match="obs"):
        sample_chunks(policy)
    with pytest.raises(ValueError, match="select='best' needs a critic"):
        sample_chunks(policy, torch.zeros(1, 4, 3), config=SamplerConfig(select="best"))
    with pytest.raises(ValueError, match="num_candidates"):
        SamplerConfig(num_candidates=0)
    with pytest.raises(ValueError, match="candidates per observation"):
        sample_chunks(policy, torch.zeros(1, 4, 3), noise=torch.zeros(1, 2, 4, 3), config=SamplerConfig(num_candidates=3))


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
@pytest.mark.parametrize("estimator", ["noisy_point", "clean_estimate", "clean_jacobian", "bptt"])
def test_guidance_works_inside_no_grad_and_inference_mode(mode, estimator):
    policy = mlp_policy("lerobot")
    critic = LinearCritic(torch.randn(4, 2))
    noise = torch.randn(3, 4, 3)
    obs = torch.randn(3, 5)
    guidance = Guidance(critic, GuidanceConfig(estimator=estimator, scale=0.5))
    expected = sample_chunks(policy, {"obs": obs}, noise=noise, guidance=guidance).chunk
    scope = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with scope:
        ctx = policy.encode({"obs": obs.clone()})
        got = sample_chunks(policy, context=ctx, noise=noise.clone(), guidance=guidance).chunk
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("estimator", ["noisy_point", "clean_estimate", "clean_jacobian", "bptt"])
def test_guided_chunks_and_diagnostics_are_bit_identical_in_every_grad_mode(estimator):
    """The guided step reads the caller's (inference) tensors without copying them out of inference mode; what
    it computes does not depend on the caller's grad mode, to the bit — candidates, best-of-N and diagnostics."""
    policy = mlp_policy("lerobot")
    critic = EnsembleMLPCritic({"observation": 5}, chunk_len=4, action_dim=2, hidden=(8,), num_members=3)
    noise, obs = torch.randn(3, 2, 4, 3), torch.randn(3, 5)
    guidance = Guidance(critic, GuidanceConfig(estimator=estimator, scale=0.5, clip=1.0, gate_k=2.0))
    cfg = SamplerConfig(num_candidates=2, select="best")
    outs = []
    for scope in (contextlib.nullcontext, torch.no_grad, torch.inference_mode):
        with scope():
            out = sample_chunks(policy, {"obs": obs.clone()}, noise=noise.clone(), guidance=guidance, config=cfg)
        outs.append(out)
    ref = outs[0]
    for out in outs[1:]:
        assert torch.equal(out.candidates, ref.candidates) and torch.equal(out.selected, ref.selected)
        assert torch.equal(out.values, ref.values)
        assert torch.equal(out.diagnostics.data.nan_to_num(-1.0), ref.diagnostics.data.nan_to_num(-1.0))


@pytest.mark.parametrize("field,value", [
    ("num_candidates", 0), ("num_candidates", 1.5), ("num_candidates", True), ("num_candidates", "2"),
    ("num_steps", 0), ("num_steps", 2.0), ("num_steps", False), ("num_steps", float("nan")),
    ("score_candidates", "yes"), ("score_candidates", 1), ("method", "rk4"), ("select", "worst"),
])
def test_sampler_config_values_are_checked_and_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplerConfig(**{field: value})


class ReachPrevious:
    """Objective term: the chunk's first action should repeat the action executed before (from the context)."""

    seen: list = []

    def __init__(self, inputs):
        self.previous = inputs.context["previous_action"]  # (B·N, d)
        ReachPrevious.seen.append(self.previous)

    def value(self, chunk):
        return -(chunk[:, 0] - self.previous).pow(2).sum(1)


register_term("reach_previous", ReachPrevious, replace=True)


def test_objective_context_reaches_the_terms_one_row_per_candidate():
    policy = gaussian_policy("lerobot")
    mu, noise = torch.zeros(2, 4, 3), torch.randn(2, 3, 4, 3)
    previous = torch.tensor([[2.0, -2.0], [-3.0, 1.0]])  # (B, d): one row per observation
    cfg = SamplerConfig(num_candidates=3)
    guidance = Guidance(None, GuidanceConfig(scale=0.3, objectives=[{"name": "reach_previous"}]))
    ReachPrevious.seen.clear()
    out = sample_chunks(policy, mu, config=cfg, noise=noise, guidance=guidance,
                        objective_context={"previous_action": previous})
    assert torch.equal(ReachPrevious.seen[-1], previous.repeat_interleave(3, dim=0))
    base = sample_chunks(policy, mu, config=cfg, noise=noise)
    gap = lambda c: (c[:, :, 0, :2] - previous[:, None]).norm(dim=-1)  # noqa: E731  (B, N)
    assert (gap(out.candidates) < gap(base.candidates)).all()

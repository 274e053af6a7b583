"""Guidance: sign, strength, estimators against ground truth, objective terms, controls, uncertainty, diagnostics,
config validation."""

import collections
import json
import math

import pytest
import torch
from helpers import LinearCritic, QuadraticCritic, gaussian_policy, mlp_policy
from torch.utils._python_dispatch import TorchDispatchMode

from gaflow.convention import clean_estimate, time_grid
from gaflow.critic import EnsembleMLPCritic
from gaflow.guidance import (
    ESTIMATORS,
    Control,
    CriticObjective,
    FlowStep,
    Gate,
    Guidance,
    GuidanceConfig,
    GuidanceDiagnostics,
    Strength,
    estimate,
    per_sample_norm,
    register_term,
)
from gaflow.guidance.controls import episode_control_seed
from gaflow.sampler import SamplerConfig, sample_chunks

CONVENTIONS = ["lerobot", "forward"]


def _q(critic, chunk, d=2):
    return critic(None, chunk[..., :d]).mean(0)


@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_scale_zero_and_zero_control_reproduce_unguided_exactly(convention, estimator):
    policy = mlp_policy(convention)
    ctx = {"obs": torch.randn(4, 5)}
    noise = torch.randn(4, 4, 3)
    critic = LinearCritic(torch.randn(4, 2))
    base = sample_chunks(policy, context=ctx, noise=noise).chunk
    for cfg in (GuidanceConfig(estimator=estimator, scale=0.0),
                GuidanceConfig(estimator=estimator, scale=3.0, control="zero")):
        out = sample_chunks(policy, context=ctx, noise=noise, guidance=Guidance(critic, cfg))
        assert torch.equal(out.chunk, base)
        # the critic did run: diagnostics are recorded at every step
        assert torch.isfinite(out.diagnostics.raw_grad_norm).all()


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_guidance_raises_q_monotonically_in_scale(convention):
    policy = mlp_policy(convention)
    ctx = {"obs": torch.randn(64, 5)}
    noise = torch.randn(64, 4, 3)
    critic = QuadraticCritic(torch.full((4, 2), 0.5))
    qs = []
    for scale in (0.0, 0.05, 0.1, 0.2, 0.4):
        out = sample_chunks(policy, context=ctx, noise=noise, guidance=Guidance(critic, GuidanceConfig(scale=scale)))
        qs.append(float(_q(critic, out.chunk).mean()))
    assert all(b > a for a, b in zip(qs, qs[1:], strict=False)), qs


@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_every_estimator_raises_q_and_never_touches_padded_dims(convention, estimator):
    policy = mlp_policy(convention)
    ctx = {"obs": torch.randn(16, 5)}
    noise = torch.randn(16, 4, 3)
    critic = LinearCritic(torch.randn(4, 2))
    base = sample_chunks(policy, context=ctx, noise=noise).chunk
    out = sample_chunks(policy, context=ctx, noise=noise,
                        guidance=Guidance(critic, GuidanceConfig(estimator=estimator, scale=0.2)))
    assert float(_q(critic, out.chunk).mean()) > float(_q(critic, base).mean()) + 0.1
    # Padded dims are never guided; on this nonlinear policy they still follow the guided trajectory, so
    # check the applied step directly: the guided velocity differs from the policy's only in real dims.
    gaussian = gaussian_policy(convention)
    mu = torch.randn(16, 4, 3)
    g_base = sample_chunks(gaussian, mu, noise=noise)
    g_out = sample_chunks(gaussian, mu, noise=noise,
                          guidance=Guidance(critic, GuidanceConfig(estimator=estimator, scale=0.5)))
    assert torch.equal(g_out.chunk[..., 2:], g_base.chunk[..., 2:])  # Gaussian dims are independent
    assert not torch.allclose(g_out.chunk[..., :2], g_base.chunk[..., :2])


def _step(policy, ctx, x, k=3, num_steps=10):
    grid = time_grid(policy.spec.convention, num_steps)
    return FlowStep(x=x, t=grid[k].expand(x.shape[0]), step=k, grid=grid, convention=policy.spec.convention,
                    action_dim=policy.spec.action_dim, velocity_fn=lambda x_, t_: policy.velocity(ctx, x_, t_))


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_jacobian_estimator_matches_finite_differences(convention):
    policy = mlp_policy(convention)
    ctx = {"obs": torch.randn(1, 5, dtype=torch.float32)}
    critic = QuadraticCritic(torch.full((4, 2), 0.3))
    obj = CriticObjective(critic, {})
    x = torch.randn(1, 4, 3)
    step = _step(policy, ctx, x)
    _, g, _ = estimate("clean_jacobian", step, obj)

    @torch.no_grad()
    def f(x_):
        v = policy.velocity(ctx, x_, step.t)
        return float(critic(None, clean_estimate(x_, v, step.t, convention)[..., :2]).sum())

    eps = 1e-3
    fd = torch.zeros(4, 2)
    for i in range(4):
        for j in range(2):
            e = torch.zeros_like(x)
            e[0, i, j] = eps
            fd[i, j] = (f(x + e) - f(x - e)) / (2 * eps)
    torch.testing.assert_close(g[0], fd, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_bptt_estimator_matches_finite_differences_of_the_remaining_rollout(convention):
    policy = mlp_policy(convention)
    ctx = {"obs": torch.randn(1, 5)}
    critic = QuadraticCritic(torch.full((4, 2), 0.3))
    obj = CriticObjective(critic, {})
    x = torch.randn(1, 4, 3)
    step = _step(policy, ctx, x, k=6)
    _, g, _ = estimate("bptt", step, obj)

    @torch.no_grad()
    def rollout_q(x_):
        for k in range(6, 10):
            t = step.grid[k].expand(1)
            x_ = x_ + (step.grid[k + 1] - step.grid[k]) * policy.velocity(ctx, x_, t)
        return float(critic(None, x_[..., :2]).sum())

    eps = 1e-3
    for i, j in [(0, 0), (2, 1), (3, 0)]:
        e = torch.zeros_like(x)
        e[0, i, j] = eps
        fd = (rollout_q(x + e) - rollout_q(x - e)) / (2 * eps)
        assert abs(float(g[0, i, j]) - fd) < 2e-2 * max(1.0, abs(fd))


def test_clean_estimate_gradient_is_the_critic_gradient_at_the_clean_estimate():
    policy = mlp_policy("lerobot")
    ctx = {"obs": torch.randn(2, 5)}
    c = torch.randn(4, 2)
    obj = CriticObjective(LinearCritic(c), {})
    step = _step(policy, ctx, torch.randn(2, 4, 3))
    v, g, _ = estimate("clean_estimate", step, obj)
    torch.testing.assert_close(g, c.expand(2, 4, 2))  # J = I: the raw gradient of a linear critic
    torch.testing.assert_close(v, policy.velocity(ctx, step.x, step.t))


# --- analytic ground truth: Gaussian base flow, linear critic ------------------------------------------------
# Exact KL-regularised target: N(μ + σ²c/β, σ²). Measured with scale = 1/β, 50 Euler steps, 4000 samples
# (documented in docs/guidance.md): every estimator only shifts the mean (the spread is unchanged);
# the J = I clean estimate (and the noisy point, identical for a linear critic) shifts it by ≈1.23·c/β whatever σ
# is, so it overshoots the tilted target by ≈1.23/σ²; the Jacobian estimator lands within a few % at σ = 1 and
# overshoots ≈1.9× at σ = 0.5; BPTT overshoots ≈1.5× (σ = 1).
PINNED = {  # estimator: {σ: (low, high)} of (guided mean shift) / (exact shift σ²/β)
    "clean_estimate": {1.0: (1.15, 1.30), 0.5: (3.2, 3.6)},
    "noisy_point": {1.0: (1.15, 1.30), 0.5: (3.2, 3.6)},
    "clean_jacobian": {1.0: (0.93, 1.03), 0.5: (1.8, 2.1)},
    "bptt": {1.0: (1.4, 1.65), 0.5: (2.8, 3.2)},
}


@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_estimators_against_the_exact_tilted_gaussian(convention, estimator):
    beta = 2.0
    for std, (lo, hi) in PINNED[estimator].items():
        policy = gaussian_policy(convention, padded_dim=2, std=std, num_steps=50)
        mu = torch.zeros(4000, 4, 2)
        c = torch.ones(4, 2)
        noise = torch.randn(4000, 4, 2, generator=torch.Generator().manual_seed(1))
        base = sample_chunks(policy, mu, noise=noise).chunk
        out = sample_chunks(policy, mu, noise=noise,
                            guidance=Guidance(LinearCritic(c), GuidanceConfig(estimator=estimator, scale=1 / beta)))
        exact_shift = float(policy.tilted_mean(mu[:1], c, beta).mean())
        ratio = float((out.chunk - base).mean()) / exact_shift
        assert lo <= ratio <= hi, (estimator, std, ratio)
        assert abs(float(out.chunk.std()) - float(base.std())) < 1e-3  # only the mean moves


def test_relative_strength_sets_the_applied_to_velocity_ratio():
    policy = mlp_policy("lerobot")
    out = sample_chunks(policy, context={"obs": torch.randn(8, 5)}, noise=torch.randn(8, 4, 3),
                        guidance=Guidance(LinearCritic(torch.randn(4, 2)), GuidanceConfig(relative=0.25)))
    torch.testing.assert_close(out.diagnostics.ratio, torch.full((10, 8), 0.25), atol=1e-5, rtol=1e-4)


def test_clip_caps_the_per_sample_gradient_norm_before_scaling():
    g = torch.randn(5, 4, 2) * 10
    g[0] *= 1e-3  # small gradient is left alone
    delta = Strength(scale=2.0, clip=1.0)(g, torch.ones_like(g))
    norms = torch.linalg.vector_norm(delta.flatten(1), dim=1)
    torch.testing.assert_close(norms[1:], torch.full((4,), 2.0))
    torch.testing.assert_close(delta[0], 2.0 * g[0])


def test_schedule_window_guides_only_inside_the_window():
    policy = mlp_policy("forward")
    cfg = GuidanceConfig(scale=0.5, schedule="window", schedule_start=0.5, schedule_end=1.0)
    out = sample_chunks(policy, context={"obs": torch.randn(3, 5)}, noise=torch.randn(3, 4, 3),
                        guidance=Guidance(LinearCritic(torch.randn(4, 2)), cfg))
    assert torch.isnan(out.diagnostics.applied_norm[:5]).all()
    assert (out.diagnostics.applied_norm[5:] > 0).all()
    ramp = Guidance(LinearCritic(torch.randn(4, 2)), GuidanceConfig(schedule="ramp"))
    assert [ramp.weight(k, 4) for k in range(4)] == [0.25, 0.5, 0.75, 1.0]


def test_trust_region_caps_distance_from_the_unguided_chunk():
    policy = mlp_policy("lerobot")
    ctx, noise = {"obs": torch.randn(8, 5)}, torch.randn(8, 4, 3)
    critic = LinearCritic(torch.randn(4, 2))
    base = sample_chunks(policy, context=ctx, noise=noise).chunk
    free = sample_chunks(policy, context=ctx, noise=noise, guidance=Guidance(critic, GuidanceConfig(scale=1.0)))
    capped = sample_chunks(policy, context=ctx, noise=noise,
                           guidance=Guidance(critic, GuidanceConfig(scale=1.0, trust_region=0.3)))
    dist = lambda a: torch.linalg.vector_norm((a - base)[..., :2].flatten(1), dim=1)  # noqa: E731
    assert (dist(free.chunk) > 0.3).all()
    assert (dist(capped.chunk) <= 0.3 + 1e-5).all()
    assert _q(critic, capped.chunk).mean() > _q(critic, base).mean()


def test_random_control_matches_real_norms_and_leaves_policy_noise_untouched():
    policy = mlp_policy("lerobot")
    ctx = {"obs": torch.randn(6, 5)}
    critic = LinearCritic(torch.randn(4, 2))
    gen_real, gen_rand = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    real = sample_chunks(policy, context=ctx, guidance=Guidance(critic, GuidanceConfig(scale=0.5)),
                         generator=gen_real, config=SamplerConfig(num_candidates=1))
    rand = sample_chunks(policy, context=ctx, guidance=Guidance(critic, GuidanceConfig(scale=0.5, control="random")),
                         generator=gen_rand)
    # first step: same state, so the same raw guidance norm; random applies exactly that norm
    torch.testing.assert_close(rand.diagnostics.applied_norm[0], real.diagnostics.applied_norm[0])
    torch.testing.assert_close(rand.diagnostics.applied_norm, 0.5 * rand.diagnostics.raw_grad_norm)
    # its direction is not the gradient's
    assert rand.diagnostics.cosine.abs().mean() < 0.6
    # the policy's noise stream advanced identically
    assert torch.equal(torch.randn(3, generator=gen_real), torch.randn(3, generator=gen_rand))
    # the control's own RNG is seeded: same control seed → same chunks, another seed → other chunks
    noise = torch.randn(6, 4, 3)

    def run(seed):
        cfg = GuidanceConfig(scale=0.5, control="random", control_seed=seed)
        return sample_chunks(policy, context=ctx, noise=noise, guidance=Guidance(critic, cfg)).chunk

    assert torch.equal(run(1), run(1)) and not torch.allclose(run(1), run(2))


def test_control_rejects_unknown_names_and_zero_applies_nothing():
    with pytest.raises(ValueError, match="control"):
        Control("nope")
    assert Control("zero")(torch.ones(2, 3, 1)) is None


class NaNCritic(torch.nn.Module):
    def forward(self, features, chunk):
        q = (chunk * 0.7).sum((1, 2))
        q = q.clone()
        q[1] = float("nan")
        return q


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_nan_from_the_critic_falls_back_to_unguided_and_is_counted(estimator):
    policy = gaussian_policy("lerobot")
    mu, noise = torch.randn(3, 4, 3), torch.randn(3, 4, 3)
    base = sample_chunks(policy, mu, noise=noise).chunk
    out = sample_chunks(policy, mu, noise=noise, guidance=Guidance(NaNCritic(), GuidanceConfig(estimator=estimator)))
    assert torch.equal(out.chunk[1], base[1])
    assert not torch.allclose(out.chunk[0], base[0])
    assert out.diagnostics.nonfinite == 10  # one sample × 10 steps
    assert torch.isfinite(out.chunk).all()


def test_ensemble_aggregates_and_gate():
    q = torch.tensor([[1.0, 2.0], [3.0, 2.0], [5.0, 2.0]])  # (K=3, B=2)
    critic = lambda f, a: q  # noqa: E731
    a = torch.zeros(2, 1, 1)
    assert CriticObjective(critic, {}, "mean").score(a).tolist() == [3.0, 2.0]
    assert CriticObjective(critic, {}, "min").score(a).tolist() == [1.0, 2.0]
    lcb = CriticObjective(critic, {}, "lcb", kappa=2.0).score(a)
    torch.testing.assert_close(lcb, torch.tensor([3.0 - 2 * (8 / 3) ** 0.5, 2.0]))
    gate, fell = Gate(k=20, g_min=0.1)(torch.tensor([0.0, 0.01, 1.0]))
    torch.testing.assert_close(gate, torch.tensor([1.0, float(torch.exp(torch.tensor(-0.2))), 0.1]))
    gate, fell = Gate(k=0, fallback_std=0.5)(torch.tensor([0.1, 0.9]))
    assert gate.tolist() == [1.0, 0.0] and fell.tolist() == [False, True]


def test_disagreement_fallback_returns_unguided_and_counts():
    policy = gaussian_policy("forward")
    mu, noise = torch.randn(4, 4, 3), torch.randn(4, 4, 3)
    base = sample_chunks(policy, mu, noise=noise).chunk
    critic = LinearCritic(torch.ones(4, 2), offsets=(0.0, 1.0, 2.0))  # std ≈ 0.816 everywhere
    out = sample_chunks(policy, mu, noise=noise, guidance=Guidance(critic, GuidanceConfig(fallback_std=0.5)))
    assert torch.equal(out.chunk, base) and out.diagnostics.fallback == 40
    gated = sample_chunks(policy, mu, noise=noise, guidance=Guidance(critic, GuidanceConfig(gate_k=1.0, gate_min=0.1)))
    torch.testing.assert_close(gated.diagnostics.gate, torch.full((10, 4), float(torch.exp(torch.tensor(-(2 / 3) ** 0.5)))))


def test_best_of_n_selects_the_highest_value_candidate():
    policy = gaussian_policy("lerobot")
    critic = LinearCritic(torch.ones(4, 2))
    cfg = SamplerConfig(num_candidates=8, select="best")
    out = sample_chunks(policy, torch.zeros(5, 4, 3), config=cfg, generator=torch.Generator().manual_seed(0),
                        guidance=Guidance(critic, GuidanceConfig(estimator="none")))
    assert out.values.shape == (5, 8)
    assert torch.equal(out.selected, out.values.argmax(1))
    torch.testing.assert_close(_q(critic, out.chunk), out.values.max(1).values)
    guided = sample_chunks(policy, torch.zeros(5, 4, 3), config=cfg, generator=torch.Generator().manual_seed(0),
                           guidance=Guidance(critic, GuidanceConfig(scale=0.3)))
    assert guided.values.max(1).values.mean() > out.values.max(1).values.mean()


def test_posthoc_ascent_raises_q_on_the_final_chunk():
    policy = gaussian_policy("lerobot")
    critic = QuadraticCritic(torch.full((4, 2), 2.0))
    mu, noise = torch.zeros(6, 4, 3), torch.randn(6, 4, 3)
    score = SamplerConfig(score_candidates=True)
    base = sample_chunks(policy, mu, noise=noise, config=score,
                         guidance=Guidance(critic, GuidanceConfig(estimator="none")))
    post = sample_chunks(policy, mu, noise=noise, config=score,
                         guidance=Guidance(critic, GuidanceConfig(estimator="none", posthoc_steps=3, posthoc_lr=0.05)))
    assert (post.values > base.values).all()
    assert torch.equal(post.chunk[..., 2:], base.chunk[..., 2:])


def test_ensemble_critic_batched_call_equals_each_member_alone():
    critic = EnsembleMLPCritic({"observation": 5}, chunk_len=4, action_dim=2, hidden=(16, 16), num_members=3)
    f, a = {"observation": torch.randn(7, 5)}, torch.randn(7, 4, 2)
    q = critic(f, a)
    inp = critic.inputs(f, a)
    for k in range(3):
        h = inp
        for i, (w, b) in enumerate(zip(critic.weights, critic.biases, strict=True)):
            h = h @ w[k] + b[k]
            h = torch.nn.functional.silu(h) if i < 2 else h
        torch.testing.assert_close(q[k], h.squeeze(-1))
    assert not torch.allclose(q[0], q[1])  # independent init
    with pytest.raises(KeyError, match="observation"):
        critic({}, a)
    with pytest.raises(ValueError, match="chunks of shape"):
        critic(f, torch.randn(7, 3, 2))


def test_guidance_config_round_trips_and_rejects_bad_fields():
    cfg = GuidanceConfig(relative=0.1, gate_k=20.0, control="random")
    assert GuidanceConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.config_hash() == GuidanceConfig.from_dict(cfg.to_dict()).config_hash()
    assert cfg.config_hash() != GuidanceConfig(relative=0.2).config_hash()
    with pytest.raises(ValueError, match="unknown guidance config field"):
        GuidanceConfig.from_dict({"scael": 1.0})
    with pytest.raises(ValueError, match="estimator"):
        GuidanceConfig(estimator="magic")
    with pytest.raises(ValueError, match="schedule"):
        GuidanceConfig(schedule="sometimes")
    with pytest.raises(ValueError, match="clip"):
        GuidanceConfig(clip=0.0)


def test_prepared_critic_path_equals_the_plain_forward():
    critic = EnsembleMLPCritic({"observation": 5, "task": 3}, chunk_len=4, action_dim=2, hidden=(16, 8),
                               num_members=3)
    f = {"observation": torch.randn(6, 5), "task": torch.randn(6, 3)}
    a = torch.randn(6, 4, 2)
    torch.testing.assert_close(critic.forward_prepared(critic.prepare(f), a), critic(f, a))
    obj = CriticObjective(critic, f)
    _, g = obj.value_and_grad(a)
    a2 = a.clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(critic(f, a2).mean(0).sum(), a2)
    torch.testing.assert_close(g, g_ref)


# --- objective terms (issue #12) ------------------------------------------------------------------------------
class LinearTerm:
    """J(A) = ⟨c, A⟩ over the real dims: its gradient is c everywhere."""

    def __init__(self, c: torch.Tensor):
        self.c = c

    def value(self, chunk):
        return (chunk * self.c).sum((1, 2))


C_A = torch.randn(4, 2, generator=torch.Generator().manual_seed(11))
C_B = torch.randn(4, 2, generator=torch.Generator().manual_seed(12))
register_term("linear_a", lambda inputs, gain=1.0: LinearTerm(gain * C_A), replace=True)
register_term("linear_b", lambda inputs: LinearTerm(C_B), replace=True)


def _objective(*entries, critic=None):
    return Guidance(critic, GuidanceConfig(objectives=list(entries))).objective({})


def test_weighted_terms_climb_the_weighted_sum_of_each_terms_gradient():
    both = _objective({"name": "linear_a", "weight": 0.3}, {"name": "linear_b", "weight": 2.0})
    only_a, only_b = _objective({"name": "linear_a"}), _objective({"name": "linear_b"})
    chunk = torch.randn(5, 4, 2)
    val, g = both.value_and_grad(chunk)
    (_, ga), (_, gb) = only_a.value_and_grad(chunk), only_b.value_and_grad(chunk)
    torch.testing.assert_close(g, 0.3 * ga + 2.0 * gb)
    torch.testing.assert_close(g, (0.3 * C_A + 2.0 * C_B).expand(5, 4, 2))
    torch.testing.assert_close(val.term_grads["linear_a"], 0.3 * ga)
    torch.testing.assert_close(val.total, 0.3 * val.terms["linear_a"] + 2.0 * val.terms["linear_b"])
    # the same holds through the policy's Jacobian (the gradient is taken w.r.t. x_t, not the chunk)
    policy = mlp_policy("lerobot")
    step = _step(policy, {"obs": torch.randn(3, 5)}, torch.randn(3, 4, 3))
    _, g, _ = estimate("clean_jacobian", step, both)
    (_, ga, _), (_, gb, _) = estimate("clean_jacobian", step, only_a), estimate("clean_jacobian", step, only_b)
    torch.testing.assert_close(g, 0.3 * ga + 2.0 * gb)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_zero_weight_extra_term_reproduces_the_critic_only_chunk_bit_for_bit(estimator):
    policy = mlp_policy("lerobot")
    ctx, noise = {"obs": torch.randn(4, 5)}, torch.randn(4, 4, 3)
    critic = EnsembleMLPCritic({"observation": 5}, chunk_len=4, action_dim=2, hidden=(8,), num_members=3)
    alone = GuidanceConfig(estimator=estimator, relative=0.3, gate_k=2.0)
    extra = GuidanceConfig(estimator=estimator, relative=0.3, gate_k=2.0,
                           objectives=[{"name": "critic", "weight": 1.0}, {"name": "linear_a", "weight": 0.0}])
    a = sample_chunks(policy, context=ctx, noise=noise, guidance=Guidance(critic, alone))
    b = sample_chunks(policy, context=ctx, noise=noise, guidance=Guidance(critic, extra))
    assert torch.equal(a.chunk, b.chunk)
    assert torch.equal(a.diagnostics.data, b.diagnostics.data)


class DisagreeingCritic(torch.nn.Module):
    """Three linear members with different directions: the ensemble std depends on the chunk."""

    def forward(self, features, chunk):
        return torch.stack([(chunk * c).sum((1, 2)) for c in (C_A, C_B, C_A - C_B)])


def test_a_non_critic_term_never_moves_the_gate_the_fallback_or_best_of_n():
    policy = mlp_policy("lerobot")
    x = torch.randn(16, 4, 3)
    step = _step(policy, {"obs": torch.randn(16, 5)}, x)
    strong_extra = [{"name": "critic", "weight": 1.0}, {"name": "linear_b", "weight": 50.0}]
    diags = []
    for objectives in (None, strong_extra):
        cfg = GuidanceConfig(gate_k=0.5, fallback_std=1.5, objectives=objectives)
        guidance = Guidance(DisagreeingCritic(), cfg)
        diag = GuidanceDiagnostics.empty(10, 16)
        guidance.guided_velocity(step, guidance.objective({}), 1.0, diag)
        diags.append(diag)
    alone, extra = diags
    for f in ("gate", "q_mean", "q_std"):
        assert torch.equal(getattr(alone, f)[3], getattr(extra, f)[3])
    assert 0 < alone.fallback == extra.fallback < 16
    assert not torch.equal(alone.raw_grad_norm[3], extra.raw_grad_norm[3])  # the extra term did pull
    # best-of-N ranks by the critic, even when the other term would rank the candidates the other way round
    critic = LinearCritic(C_A)
    reverse = [{"name": "critic", "weight": 1.0}, {"name": "linear_a", "weight": 5.0, "gain": -1.0}]
    cfg = SamplerConfig(num_candidates=8, select="best")
    outs = [sample_chunks(gaussian_policy("lerobot"), torch.zeros(5, 4, 3), config=cfg,
                          generator=torch.Generator().manual_seed(0),
                          guidance=Guidance(critic, GuidanceConfig(estimator="none", objectives=o)))
            for o in (None, reverse)]
    assert torch.equal(outs[0].selected, outs[1].selected) and torch.equal(outs[0].values, outs[1].values)
    torch.testing.assert_close(_q(critic, outs[1].chunk), outs[1].values.max(1).values)


def test_guidance_without_a_critic_runs_critic_free_terms_and_refuses_critic_ones():
    policy = gaussian_policy("lerobot")
    mu, noise = torch.randn(6, 4, 3), torch.randn(6, 4, 3)
    free = Guidance(None, GuidanceConfig(scale=0.5, objectives=[{"name": "linear_a"}]))
    out = sample_chunks(policy, mu, noise=noise, guidance=free)
    # a linear term guides exactly like a one-member linear critic with the same direction
    same = sample_chunks(policy, mu, noise=noise, guidance=Guidance(LinearCritic(C_A), GuidanceConfig(scale=0.5)))
    assert torch.equal(out.chunk, same.chunk)
    assert torch.isnan(out.diagnostics.q_mean).all() and torch.isnan(out.diagnostics.q_std).all()
    with pytest.raises(ValueError, match="'critic' need a critic"):
        Guidance(None, GuidanceConfig())
    with pytest.raises(ValueError, match="critic term"):
        sample_chunks(policy, mu, config=SamplerConfig(num_candidates=2, select="best"), guidance=free)
    with pytest.raises(ValueError, match="gate_k / fallback_std"):
        GuidanceConfig(gate_k=20.0, objectives=[{"name": "linear_a"}])


def test_diagnostics_report_each_terms_value_and_gradient_share():
    policy = gaussian_policy("forward")
    mu, noise = torch.randn(3, 4, 3), torch.randn(3, 4, 3)
    cfg = GuidanceConfig(scale=0.2, objectives=[{"name": "critic", "weight": 1.0}, {"name": "linear_a", "weight": 0.5}])
    d = sample_chunks(policy, mu, noise=noise, guidance=Guidance(LinearCritic(C_B), cfg)).diagnostics
    norm = lambda c: float(torch.linalg.vector_norm(c))  # noqa: E731
    torch.testing.assert_close(d.terms["linear_a"][1], torch.full((10, 3), 0.5 * norm(C_A)))
    torch.testing.assert_close(d.terms["critic"][1], torch.full((10, 3), norm(C_B)))
    torch.testing.assert_close(d.raw_grad_norm, torch.full((10, 3), norm(C_B + 0.5 * C_A)))
    torch.testing.assert_close(d.terms["critic"][0], d.q_mean)  # one member: the aggregate is the mean
    s = d.summary()
    assert s["term_linear_a_grad_norm_mean"] == pytest.approx(0.5 * norm(C_A), rel=1e-5)
    assert s["term_critic_value_mean"] == pytest.approx(s["q_mean_mean"], rel=1e-5)
    picked = d.select(torch.tensor([2]))
    assert torch.equal(picked.terms["linear_a"], d.terms["linear_a"][:, :, [2]])


def test_raw_ratio_is_measured_before_the_strength_rescale():
    policy = mlp_policy("lerobot")
    ctx, noise = {"obs": torch.randn(8, 5)}, torch.randn(8, 4, 3)
    critic = LinearCritic(torch.randn(4, 2))
    scaled = sample_chunks(policy, context=ctx, noise=noise,
                           guidance=Guidance(critic, GuidanceConfig(scale=0.3))).diagnostics
    torch.testing.assert_close(scaled.ratio, 0.3 * scaled.raw_ratio)
    rel = sample_chunks(policy, context=ctx, noise=noise,
                        guidance=Guidance(critic, GuidanceConfig(relative=0.25))).diagnostics
    torch.testing.assert_close(rel.ratio, torch.full((10, 8), 0.25), atol=1e-5, rtol=1e-4)
    # ‖g‖/‖v‖ with ‖v‖ = ‖Δv‖/ρ: the critic's own pull, which a relative strength hides in `ratio`
    torch.testing.assert_close(rel.raw_ratio, rel.raw_grad_norm * 0.25 / rel.applied_norm)
    assert not torch.allclose(rel.raw_ratio, rel.ratio)
    s = rel.summary()
    assert s["raw_ratio_median"] == float(rel.raw_ratio.flatten().median())
    assert s["raw_ratio_mean"] == pytest.approx(float(rel.raw_ratio.mean()), rel=1e-6)
    before = {"raw_grad_norm_mean", "applied_norm_mean", "ratio_mean", "gate_mean", "q_mean_mean", "q_std_mean",
              "cosine_mean", "ratio_median", "ratio_by_step", "gate_by_step", "nonfinite", "fallback",
              "posthoc_skipped"}  # the keys summary() had before raw_ratio: kept
    assert before <= set(s)


# --- the random control, episode by episode (issue #13) -------------------------------------------------------
def test_start_episode_gives_each_episode_its_own_reproducible_random_draws():
    policy = mlp_policy("lerobot")
    ctx, noise = {"obs": torch.randn(4, 5)}, torch.randn(4, 4, 3)
    critic = LinearCritic(torch.randn(4, 2))
    cfg = GuidanceConfig(scale=0.5, control="random", control_seed=3)

    def run(guidance, episode=None):
        if episode is not None:
            guidance.start_episode(episode)
        return sample_chunks(policy, context=ctx, noise=noise, guidance=guidance).chunk

    g = Guidance(critic, cfg)
    one, two, one_again = run(g, 1), run(g, 2), run(g, 1)
    assert torch.equal(one, one_again) and not torch.allclose(one, two)
    assert torch.equal(run(Guidance(critic, cfg), 1), one)  # another process, same episode: same draws
    # without a call the stream starts from control_seed, as before start_episode existed
    assert torch.equal(run(Guidance(critic, cfg)), run(Guidance(critic, cfg)))
    assert not torch.allclose(run(Guidance(critic, cfg)), one)
    # a stable SHA-256 derivation (Python's hash() is salted per process)
    assert episode_control_seed(3, 1) == 7713537296321359744
    c = Control("random", 3)
    c.start_episode(1)
    assert c.generator.initial_seed() == episode_control_seed(3, 1)
    Control("zero", 3).start_episode(1)  # a no-op for the other controls
    with pytest.raises(ValueError, match="episode_seed"):
        g.start_episode(1.5)


# --- config: the objectives field and the hash of existing configs ---------------------------------------------
PINNED_HASHES = [  # config_hash() of these configs before the objectives field existed (locks must still verify)
    ({}, "1015f2db3ef0cdac"),
    ({"relative": 0.1, "gate_k": 20.0, "control": "random"}, "48525ac4db7713c1"),
    ({"scale": 0.3, "clip": 2.0, "schedule": "window", "schedule_start": 0.5}, "a68725e09ce5e2db"),
]


def test_config_hash_of_existing_configs_is_unchanged_by_the_objectives_field():
    for fields, digest in PINNED_HASHES:
        assert GuidanceConfig(**fields).config_hash() == digest
        lock = {k: v for k, v in GuidanceConfig(**fields).to_dict().items() if k != "objectives"}
        assert GuidanceConfig.from_dict(lock).config_hash() == digest  # a lock written without the field
    assert GuidanceConfig(objectives=[{"name": "critic", "weight": 1.0}]).config_hash() == PINNED_HASHES[0][1]
    extra = GuidanceConfig(objectives=[{"name": "critic"}, {"name": "linear_a", "weight": 0.0}])
    assert extra.config_hash() != PINNED_HASHES[0][1]
    assert GuidanceConfig.from_dict(json.loads(json.dumps(extra.to_dict()))).config_hash() == extra.config_hash()


BAD_OBJECTIVES = [
    ({"name": "critic"}, "objectives must be a non-empty list"),
    ([], "objectives must be a non-empty list"),
    (["critic"], r"objectives\[0\] must be a dict with a 'name'"),
    ([{"weight": 1.0}], r"objectives\[0\] must be a dict with a 'name'"),
    ([{"name": "critic"}, {"name": "wobble"}], r"objectives\[1\] \('wobble'\): unknown objective term"),
    ([{"name": "critic", "weight": float("nan")}], r"objectives\[0\] \('critic'\): weight must be finite"),
    ([{"name": "critic", "weight": -1.0}], r"objectives\[0\] \('critic'\): weight must be >= 0"),
    ([{"name": "critic", "weight": "1"}], r"objectives\[0\] \('critic'\): weight must be a number"),
    ([{"name": "critic", "weight": True}], r"objectives\[0\] \('critic'\): weight must be a number"),
    ([{"name": "critic"}, {"name": "critic"}], r"objectives\[1\] \('critic'\): term listed twice"),
    ([{"name": "critic", "aggregate": "min"}], r"objectives\[0\] \('critic'\): bad parameters \['aggregate'\]"),
    ([{"name": "linear_a", "gain": float("inf")}], r"objectives\[0\] \('linear_a'\): parameter 'gain' must be finite"),
]


@pytest.mark.parametrize("objectives,message", BAD_OBJECTIVES)
def test_bad_objectives_entries_are_refused_naming_the_entry(objectives, message):
    with pytest.raises(ValueError, match=message):
        GuidanceConfig.from_dict({"objectives": objectives})


# --- config: every number is checked (issue #13) ---------------------------------------------------------------
NAN, INF = float("nan"), float("inf")
BAD_NUMBERS = [
    ("relative", NAN), ("relative", INF), ("relative", 0.0), ("relative", -0.1), ("relative", True),
    ("relative", "0.1"), ("clip", NAN), ("clip", INF), ("clip", 0.0), ("clip", -1.0), ("scale", NAN),
    ("scale", -INF), ("scale", False), ("scale", "1"), ("gate_min", -0.1), ("gate_min", 1.5), ("gate_min", NAN),
    ("gate_k", -1.0), ("gate_k", INF), ("kappa", -1.0), ("kappa", NAN), ("schedule_start", -0.1),
    ("schedule_start", NAN), ("schedule_end", 1.5), ("schedule_end", "1"), ("trust_region", -1.0),
    ("trust_region", NAN), ("fallback_std", NAN), ("fallback_std", -0.1), ("posthoc_lr", NAN), ("posthoc_lr", INF),
    ("posthoc_lr", -0.01), ("posthoc_steps", 1.5), ("posthoc_steps", True), ("posthoc_steps", -1),
    ("control_seed", 1.0), ("control_seed", True), ("control_seed", -1),
]


@pytest.mark.parametrize("field,value", BAD_NUMBERS)
def test_every_guidance_number_is_checked_and_the_error_names_its_field(field, value):
    with pytest.raises(ValueError, match=field):
        GuidanceConfig.from_dict({field: value})


def test_json_nan_and_infinity_are_refused_and_ints_are_accepted_where_floats_belong():
    with pytest.raises(ValueError, match="relative must be finite"):
        GuidanceConfig.from_dict(json.loads('{"relative": NaN}'))
    with pytest.raises(ValueError, match="clip must be finite"):
        GuidanceConfig.from_dict(json.loads('{"clip": Infinity}'))
    with pytest.raises(ValueError, match="schedule_start must be < schedule_end"):
        GuidanceConfig(schedule="window", schedule_start=0.6, schedule_end=0.4)
    with pytest.raises(ValueError, match="must be a dict"):
        GuidanceConfig.from_dict([("relative", 0.1)])
    ints = GuidanceConfig.from_dict({"scale": 2, "relative": 1, "clip": 3, "gate_k": 20, "gate_min": 0,
                                     "schedule_end": 1, "kappa": 2, "trust_region": 1, "posthoc_lr": 0})
    assert ints.to_dict()["relative"] == 1 and math.isfinite(ints.strength.relative)


def test_objectives_are_normalised_so_equal_objectives_are_equal_configs():
    short = GuidanceConfig(objectives=[{"name": "critic"}, {"name": "linear_a", "gain": 2}])
    full = GuidanceConfig(objectives=[{"name": "critic", "weight": 1.0}, {"name": "linear_a", "weight": 1.0, "gain": 2}])
    assert short == full and short.config_hash() == full.config_hash()
    assert GuidanceConfig.from_dict(short.to_dict()) == short


# ----------------------------------------------------------------------------------------------- cost (issue #18)
class _CountOps(TorchDispatchMode):
    """Counts every ATen op dispatched (forward and backward) — a machine-independent measure of per-step cost."""

    def __init__(self):
        super().__init__()
        self.ops: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


def _ops(fn) -> collections.Counter:
    with _CountOps() as c:
        fn()
    return c.ops


HOST_SYNCS = ("aten._local_scalar_dense.default", "aten.is_nonzero.default")  # .item(), int(), bool() of a tensor


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_guided_step_adds_few_tensor_ops_and_no_host_sync_beyond_the_critic(mode):
    """Beyond the critic's forward+backward (prepared, as guidance runs it) a guided step with clip, gate and
    diagnostics spends a few dozen (B,)-sized ops — before issue #18 it spent ~75 and two host syncs."""
    policy, ctx, noise = mlp_policy("lerobot"), {"obs": torch.randn(2, 5)}, torch.randn(2, 4, 3)
    critic = EnsembleMLPCritic({"observation": 5}, chunk_len=4, action_dim=2, hidden=(16, 16), num_members=3)
    guidance = Guidance(critic, GuidanceConfig(scale=0.5, clip=1.0, gate_k=5.0, fallback_std=10.0))
    with mode():
        unguided = sum(_ops(lambda: sample_chunks(policy, context=ctx, noise=noise)).values())
        guided = _ops(lambda: sample_chunks(policy, context=ctx, noise=noise, guidance=guidance))
    objective = CriticObjective(critic, {"observation": ctx["obs"]})
    critic_step = sum(_ops(lambda: objective.value_and_grad(noise[..., :2])).values())
    per_step = (sum(guided.values()) - unguided - 10 * critic_step) / 10
    assert per_step <= 40, f"{per_step} ops per guided step beyond the critic"
    assert not any(guided[s] for s in HOST_SYNCS)


def test_diagnostics_are_summarised_when_read_and_equal_the_per_step_formulas():
    """The step only stages tensors; the first read summarises every staged step at once. The values are the
    per-step formulas', bit for bit."""
    policy = mlp_policy("lerobot")
    ctx, x = {"obs": torch.randn(5, 5)}, torch.randn(5, 4, 3)
    critic = EnsembleMLPCritic({"observation": 5}, chunk_len=4, action_dim=2, hidden=(8,), num_members=3)
    for cfg in (GuidanceConfig(scale=0.7, clip=0.5, gate_k=3.0), GuidanceConfig(relative=0.3),
                GuidanceConfig(scale=0.2, control="zero")):
        guidance = Guidance(critic, cfg)
        objective = guidance.objective({"observation": ctx["obs"]})
        diag = GuidanceDiagnostics.empty(10, 5)
        steps = [_step(policy, ctx, x, k=k) for k in (2, 6)]
        outs = [guidance.guided_velocity(s, objective, 1.0, diag) for s in steps]
        assert diag._staged and len(diag._staged) == 2  # nothing summarised yet
        for step, v_out in zip(steps, outs, strict=True):
            v, g, val = estimate("clean_estimate", step, objective)
            g_norm, v_norm = per_sample_norm(g), per_sample_norm(v[..., :2]).clamp_min(1e-12)
            gate = Gate(cfg.gate_k, cfg.gate_min).apply(val.critic.std)[0] if cfg.gate_k else torch.ones(5)
            applied = cfg.strength(g, v[..., :2], g_norm, v_norm) * gate.view(-1, 1, 1)
            if cfg.control == "zero":
                applied_norm, cos = torch.zeros(5), torch.full((5,), float("nan"))
                assert torch.equal(v_out, v)
            else:
                applied_norm = per_sample_norm(applied)
                cos = (g * applied).flatten(1).sum(1) / (g_norm * applied_norm).clamp_min(1e-12)
                assert torch.equal(v_out[..., :2], v[..., :2] - applied) and torch.equal(v_out[..., 2:], v[..., 2:])
            expected = torch.stack([g_norm, applied_norm, applied_norm / v_norm, gate, val.critic.mean,
                                    val.critic.std, cos, g_norm / v_norm])
            assert _same(diag.data[:, step.step], expected)
            assert torch.equal(diag.terms["critic"][:2, step.step], torch.stack([val.total, g_norm]))
            assert torch.allclose(diag.terms["critic"][2, step.step], torch.ones_like(g_norm))  # the only term: all of g
        assert torch.isnan(diag.data[:, [0, 1, 3, 4, 5, 7, 8, 9]]).all()  # steps that did not run stay NaN
        assert not diag._staged and diag.nonfinite == 0 and diag.fallback == 0


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-equal, NaN where the other is NaN."""
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))


def test_guided_step_reads_inference_tensors_as_they_are():
    """x_t and v from a caller under inference_mode go into the step without being copied to normal tensors; the
    step gives the same velocity, bit for bit, for both estimators hook mode supports."""
    policy = mlp_policy("forward")
    ctx = {"obs": torch.randn(3, 5)}
    x = torch.randn(3, 4, 3)
    critic = EnsembleMLPCritic({"observation": 5}, chunk_len=4, action_dim=2, hidden=(8,), num_members=2)
    for estimator in ("clean_estimate", "noisy_point"):
        guidance = Guidance(critic, GuidanceConfig(estimator=estimator, scale=0.4, gate_k=1.0))
        objective = guidance.objective({"observation": ctx["obs"]})
        step = _step(policy, ctx, x)
        step.velocity = policy.velocity(ctx, x, step.t)
        expected = guidance.guided_velocity(step, objective, 1.0, None)
        with torch.inference_mode():
            x_inf, v_inf, t_inf = x.clone(), step.velocity.clone(), step.t.clone()
        assert x_inf.is_inference() and v_inf.is_inference()
        step_inf = FlowStep(x=x_inf, t=t_inf, step=3, grid=step.grid, convention=step.convention, action_dim=2,
                            velocity_fn=step.velocity_fn, velocity=v_inf)
        assert torch.equal(guidance.guided_velocity(step_inf, objective, 1.0, None), expected)

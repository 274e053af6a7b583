"""Hook mode: gaflow guidance installed as LeRobot's ``rtc_processor`` so ``predict_action_chunk`` runs guided."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from helpers import LinearCritic

from gaflow.critic import EnsembleMLPCritic
from gaflow.guidance import Guidance, GuidanceConfig
from gaflow.policies.registry import load_policy
from gaflow.runtime import LeRobotGuidanceHook
from gaflow.sampler import SamplerConfig, sample_chunks
from gaflow.testing.lerobot_tiny import (
    FAMILIES,
    OfflineModelConfig,
    example_observation,
    save_offline_checkpoint,
)

torch.set_num_threads(1)
B = 2


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    out = {}
    for f in FAMILIES:
        path = save_offline_checkpoint(OfflineModelConfig(family=f, seed=1), tmp_path_factory.mktemp(f))
        out[f] = load_policy(f"lerobot:{path}", device="cpu")
    return out


def _noise(ad, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((B, ad.spec.chunk_len, ad.spec.padded_dim), generator=g)


def _critic(ad, seed=0):
    c = torch.randn(ad.spec.chunk_len, ad.spec.action_dim, generator=torch.Generator().manual_seed(seed))
    return LinearCritic(c)


@pytest.mark.parametrize("family", FAMILIES)
def test_hook_guidance_raises_critic_value_in_lerobot_predict_action_chunk(adapters, family):
    ad = adapters[family]
    critic = _critic(ad, 1)
    obs, noise = example_observation(ad.config, B, seed=2), _noise(ad, 3)
    base = ad.lerobot_chunk(obs, noise=noise.clone())
    with LeRobotGuidanceHook(ad, Guidance(critic, GuidanceConfig(scale=0.3))) as hook:
        guided = ad.lerobot_chunk(obs, noise=noise.clone())
    q = lambda a: critic({}, a)[0]  # noqa: E731
    assert (q(guided) > q(base) + 1.0).all()  # sign right in LeRobot's t: 1 → 0 convention
    assert hook.chunks == 1 and torch.isfinite(hook.diagnostics.ratio).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_hook_features_equal_explicit_loop_features(adapters, family):
    ad = adapters[family]
    obs = example_observation(ad.config, B, seed=4)
    with LeRobotGuidanceHook(ad, Guidance(_critic(ad), GuidanceConfig(estimator="none"))) as hook:
        ad.lerobot_chunk(obs, noise=_noise(ad))
    expected = ad.encode(obs).features
    assert set(hook.features) == set(expected)
    for k, v in expected.items():
        torch.testing.assert_close(hook.features[k], v, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("family", ["smolvla", "pi05"])
def test_hook_and_explicit_loop_give_the_same_guided_chunks(adapters, family):
    ad = adapters[family]
    obs, noise = example_observation(ad.config, B, seed=5), _noise(ad, 6)
    feats = ad.encode(obs).features
    critic = EnsembleMLPCritic({k: feats[k].shape[-1] for k in ("task", "observation", "state")},
                               ad.spec.chunk_len, ad.spec.action_dim, hidden=(16,), num_members=3)
    guidance = Guidance(critic, GuidanceConfig(estimator="clean_estimate", relative=0.5, gate_k=1.0))
    explicit = sample_chunks(ad, context=ad.encode(obs), noise=noise, guidance=guidance)
    with LeRobotGuidanceHook(ad, guidance) as hook:
        hooked = ad.lerobot_chunk(obs, noise=noise.clone())
    unguided = ad.lerobot_chunk(obs, noise=noise.clone())
    assert (hooked - unguided).abs().max() > 1e-2  # guidance did something
    torch.testing.assert_close(hooked, explicit.chunk[..., : ad.spec.action_dim], atol=1e-4, rtol=0)
    torch.testing.assert_close(hook.diagnostics.q_mean, explicit.diagnostics.q_mean, atol=1e-4, rtol=1e-4)


def test_hook_zero_control_and_inactive_guidance_leave_lerobot_output_bit_identical(adapters):
    ad = adapters["smolvla"]
    obs, noise = example_observation(ad.config, B, seed=7), _noise(ad, 8)
    base = ad.lerobot_chunk(obs, noise=noise.clone())
    for cfg in (GuidanceConfig(control="zero"), GuidanceConfig(estimator="none"), GuidanceConfig(scale=0.0)):
        with LeRobotGuidanceHook(ad, Guidance(_critic(ad), cfg)):
            assert torch.equal(ad.lerobot_chunk(obs, noise=noise.clone()), base)


@pytest.mark.parametrize("family", FAMILIES)
def test_unguided_zero_and_scale_zero_chunks_equal_lerobots_own_under_inference_mode(adapters, family):
    """As a policy server calls it (inference_mode): the explicit loop unguided, with the zero control and with
    scale 0, and hook mode with the zero control and scale 0, all give LeRobot's predict_action_chunk bit for bit
    (the guided step reads LeRobot's inference tensors without copying them)."""
    ad = adapters[family]
    critic = EnsembleMLPCritic({"state": ad.state_dim}, ad.spec.chunk_len, ad.spec.action_dim, hidden=(16,),
                               num_members=3)
    obs, noise = example_observation(ad.config, B, seed=15), _noise(ad, 16)
    d = ad.spec.action_dim
    with torch.inference_mode():
        ref = ad.lerobot_chunk(obs, noise=noise.clone())
        ctx = ad.encode(obs)
        assert torch.equal(sample_chunks(ad, context=ctx, noise=noise).chunk[..., :d], ref)
        for cfg in (GuidanceConfig(control="zero", gate_k=20.0, clip=1.0), GuidanceConfig(scale=0.0)):
            guidance = Guidance(critic, cfg)
            out = sample_chunks(ad, context=ctx, noise=noise, guidance=guidance)
            assert torch.equal(out.chunk[..., :d], ref)
            assert torch.isfinite(out.diagnostics.raw_grad_norm).all()  # the critic ran at every step
            with LeRobotGuidanceHook(ad, guidance) as hook:
                assert torch.equal(ad.lerobot_chunk(obs, noise=noise.clone()), ref)
            assert torch.isfinite(hook.diagnostics.raw_grad_norm).all()


def test_hook_guidance_adds_no_host_sync_to_lerobots_sampler(adapters):
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountSyncs(TorchDispatchMode):
        syncs = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if str(func) in ("aten._local_scalar_dense.default", "aten.is_nonzero.default"):
                CountSyncs.syncs += 1
            return func(*args, **(kwargs or {}))

    ad = adapters["smolvla"]
    critic = EnsembleMLPCritic({"state": ad.state_dim}, ad.spec.chunk_len, ad.spec.action_dim, hidden=(16,),
                               num_members=3)
    batch = ad.preprocess(example_observation(ad.config, B, seed=17))
    counts = []
    for guidance in (None, Guidance(critic, GuidanceConfig(scale=0.5, clip=1.0, gate_k=20.0, fallback_std=5.0))):
        hook = contextlib.nullcontext() if guidance is None else LeRobotGuidanceHook(ad, guidance)
        CountSyncs.syncs = 0
        with torch.inference_mode(), hook, CountSyncs():
            ad.policy.predict_action_chunk(batch, noise=_noise(ad, 18))
        counts.append(CountSyncs.syncs)
    assert counts[1] == counts[0]


def test_hook_never_changes_padded_velocity_dims(adapters):
    ad = adapters["pi0"]
    d = ad.spec.action_dim
    calls = []

    class Recording(Guidance):
        def guided_velocity(self, step, objective, weight, diag):
            out = super().guided_velocity(step, objective, weight, diag)
            calls.append((step.velocity.clone(), out.clone()))
            return out

    with LeRobotGuidanceHook(ad, Recording(_critic(ad, 9), GuidanceConfig(scale=1.0))):
        ad.lerobot_chunk(example_observation(ad.config, B, seed=10), noise=_noise(ad, 11))
    assert len(calls) == ad.spec.num_steps
    for v_in, v_out in calls:
        assert torch.equal(v_out[..., d:], v_in[..., d:])
        assert not torch.equal(v_out[..., :d], v_in[..., :d])


def test_hook_works_when_caller_uses_inference_mode(adapters):
    ad = adapters["pi05"]
    critic = _critic(ad, 12)
    obs, noise = example_observation(ad.config, B, seed=13), _noise(ad, 14)
    with torch.inference_mode():
        base = ad.lerobot_chunk(obs, noise=noise.clone())
        with LeRobotGuidanceHook(ad, Guidance(critic, GuidanceConfig(scale=0.3))):
            guided = ad.lerobot_chunk(obs, noise=noise.clone())
    assert (critic({}, guided)[0] > critic({}, base)[0]).all()


def test_detach_restores_the_policy(adapters):
    ad = adapters["smolvla"]
    model, backbone = ad.model, ad.backbone
    before = (ad.config.rtc_config, model.rtc_processor, dict(model.__dict__), dict(backbone.__dict__))
    hook = LeRobotGuidanceHook(ad, Guidance(_critic(ad), GuidanceConfig()))
    with hook:
        assert model.rtc_processor is hook and ad.config.rtc_config.enabled
    assert ad.config.rtc_config is before[0] and model.rtc_processor is before[1]
    assert "sample_actions" not in model.__dict__ and "forward" not in backbone.__dict__
    assert set(model.__dict__) == set(before[2]) and set(backbone.__dict__) == set(before[3])


@pytest.mark.parametrize("cfg", [dict(estimator="clean_jacobian"), dict(estimator="bptt"),
                                 dict(trust_region=1.0), dict(posthoc_steps=2)])
def test_hook_rejects_what_only_the_explicit_loop_can_do(adapters, cfg):
    ad = adapters["pi0"]
    with pytest.raises(ValueError, match="sample_chunks"):
        LeRobotGuidanceHook(ad, Guidance(_critic(ad), GuidanceConfig(**cfg)))


def test_hook_refuses_a_critic_for_another_action_dim(adapters):
    ad = adapters["smolvla"]
    critic = EnsembleMLPCritic({"state": 6}, ad.spec.chunk_len, ad.spec.action_dim + 2, hidden=(8,), num_members=1)
    with pytest.raises(ValueError, match="action_dim"):
        LeRobotGuidanceHook(ad, Guidance(critic, GuidanceConfig()))


@pytest.mark.parametrize("family", FAMILIES[:1])
def test_runtime_hook_mode_is_lerobots_own_sampler_with_the_hook(adapters, family):
    """GuidedRuntime(mode="hook") runs LeRobot's predict_action_chunk: unguided it is LeRobot's chunk bit for bit,
    guided it is exactly what the hook gives by hand."""
    from gaflow.runtime import GuidedRuntime

    ad = adapters[family]
    critic = _critic(ad, 1)
    obs, noise = example_observation(ad.config, B, seed=2), _noise(ad, 3)
    plain = GuidedRuntime(ad, mode="hook").infer_batch(obs, B, noise=noise.clone())
    assert torch.equal(plain.chunk, ad.lerobot_chunk(obs, noise=noise.clone()))
    guided = GuidedRuntime(ad, critic=critic, guidance={"scale": 0.3}, mode="hook").infer_batch(
        obs, B, noise=noise.clone())
    with LeRobotGuidanceHook(ad, Guidance(critic, GuidanceConfig(scale=0.3))):
        by_hand = ad.lerobot_chunk(obs, noise=noise.clone())
    assert torch.equal(guided.chunk, by_hand) and not torch.equal(guided.chunk, plain.chunk)
    assert np.array_equal(guided.actions, ad.decode_actions(by_hand).numpy())
    assert len(guided.diagnostics) == B and guided.diagnostics[0]["ratio_mean"] > 0
    with pytest.raises(ValueError, match="one chunk per observation"):
        GuidedRuntime(ad, critic=critic, guidance={"scale": 0.3}, mode="hook",
                      sampler=SamplerConfig(num_candidates=2))

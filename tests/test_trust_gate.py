"""The trust gate: guidance scales down where an observation's features lie outside the critic's training data,
calibrated on the critic's validation episodes (never on test)."""

from __future__ import annotations

import math

import pytest
import torch

from gaflow.critic.models import EnsembleMLPCritic, feature_distance
from gaflow.guidance import Guidance, GuidanceConfig
from gaflow.policies import GaussianFlowPolicy, PolicySpec
from gaflow.sampler import sample_chunks

SPEC = PolicySpec(chunk_len=4, action_dim=2, padded_dim=2, convention="lerobot")


def _critic(q95: float = 1.0) -> EnsembleMLPCritic:
    torch.manual_seed(0)
    stats = {"state": {"mean": torch.zeros(3), "std": torch.ones(3)}}
    critic = EnsembleMLPCritic({"state": 3}, SPEC.chunk_len, SPEC.action_dim, hidden=(16,), num_members=2,
                               feature_stats=stats)
    critic.trust_calibration = {"q95": q95}
    return critic


def test_feature_distance_is_the_rms_z_score_against_the_training_stats():
    critic = _critic()
    d = feature_distance(critic, {"state": torch.tensor([[0.0, 0.0, 0.0], [3.0, 0.0, 0.0], [2.0, 2.0, 2.0]])})
    assert torch.allclose(d, torch.tensor([0.0, math.sqrt(3.0), 2.0]))


def test_trust_is_one_inside_the_support_and_decays_outside_it():
    g = Guidance(_critic(q95=1.0), GuidanceConfig(relative=0.5, trust_scale=0.5, trust_min=0.05))
    trust = g.trust({"state": torch.tensor([[0.5, 0.5, 0.5], [2.0, 2.0, 2.0], [40.0, 0.0, 0.0]])})
    # d = 0.5 (inside), 2 (excess 1 → exp(−2)), 40/√3 (far: clamped at trust_min)
    assert torch.allclose(trust, torch.tensor([1.0, math.exp(-2.0), 0.05]))


def test_the_applied_guidance_is_scaled_by_the_trust_of_each_observation():
    critic = _critic(q95=1.0)
    policy = GaussianFlowPolicy(SPEC)
    feats = {"state": torch.tensor([[0.2, 0.1, 0.0], [2.0, 2.0, 2.0]])}
    policy_ctx = policy.encode(torch.zeros(2, SPEC.chunk_len, SPEC.action_dim))
    noise = torch.randn(2, SPEC.chunk_len, SPEC.padded_dim, generator=torch.Generator().manual_seed(1))

    class WithFeatures:  # the Gaussian flow with fixed critic features
        spec = policy.spec

        def encode(self, obs):
            return policy_ctx

        def velocity(self, ctx, x, t):
            return policy.velocity(ctx, x, t)

        def critic_features(self, ctx):
            return feats

        def decode_actions(self, chunk):
            return chunk

    runs = {}
    for name, cfg in {"plain": GuidanceConfig(scale=0.3), "trust": GuidanceConfig(scale=0.3, trust_scale=0.5)}.items():
        runs[name] = sample_chunks(WithFeatures(), context=policy_ctx, guidance=Guidance(critic, cfg),
                                   noise=noise.clone()).diagnostics
    ratio = runs["trust"].applied_norm[0] / runs["plain"].applied_norm[0]  # first flow step: same state
    assert torch.allclose(ratio, torch.tensor([1.0, math.exp(-2.0)]), rtol=1e-5)
    assert torch.allclose(runs["trust"].gate[0], torch.tensor([1.0, math.exp(-2.0)]))


def test_trust_needs_a_calibrated_critic_and_a_positive_scale():
    critic = _critic()
    critic.trust_calibration = None
    with pytest.raises(ValueError, match="trust calibration"):
        Guidance(critic, GuidanceConfig(trust_scale=1.0)).objective({"state": torch.zeros(1, 3)})
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="trust_scale"):
            GuidanceConfig(trust_scale=bad)
    assert GuidanceConfig().config_hash() == GuidanceConfig(trust_scale=None, trust_min=0.0).config_hash()


def test_training_calibrates_trust_on_validation_episodes_and_loading_restores_it(tmp_path):
    from gaflow.collect import CollectConfig, collect
    from gaflow.critic.data import ChunkTable
    from gaflow.critic.train import CriticTrainConfig, load_critic, train_critic
    from gaflow.evaluation.splits import DEFAULT_SPLITS

    collect(CollectConfig(policy="toy:default", env="toy", tasks=["toy-reach"], seeds=DEFAULT_SPLITS.seeds("critic", 16)),
            tmp_path / "c", workers=1, progress=False, write_dataset=False)
    table = ChunkTable.load(tmp_path / "c" / "chunks.safetensors")
    critic, _, split = train_critic(table, CriticTrainConfig(features=("state",), hidden=(16,), epochs=2),
                                    out_dir=tmp_path / "critic", progress=False)
    cal = critic.trust_calibration
    assert cal["split"] == "validation" and 0 < cal["q50"] <= cal["q95"] <= cal["q99"]
    from gaflow.critic.train import rows_of

    va = rows_of(table, split.validation)
    d = feature_distance(critic, {"state": table.features["state"][va].float()})
    assert cal["rows"] == len(va) and cal["q95"] == pytest.approx(float(torch.quantile(d, 0.95)))
    assert load_critic(tmp_path / "critic").trust_calibration == cal

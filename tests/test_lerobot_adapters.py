"""LeRobot SmolVLA / π0 / π0.5 adapters on tiny random-weight checkpoints built offline.

The adapters must reproduce LeRobot's own sampler exactly when unguided, keep guidance to the real action dims in
the normalised space, expose the documented features and fail clearly on broken checkpoints.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from helpers import LinearCritic

from gaflow.convention import time_grid
from gaflow.critic import EnsembleMLPCritic
from gaflow.guidance import Guidance, GuidanceConfig
from gaflow.policies import TimeConvention
from gaflow.policies.lerobot import CheckpointError, LoadPlan, load_lerobot_policy, register_load_hook
from gaflow.policies.lerobot.offline import LOAD_HOOK_FILE
from gaflow.policies.registry import load_policy
from gaflow.sampler import SamplerConfig, sample_chunks
from gaflow.testing.lerobot_tiny import (
    FAMILIES,
    OfflineModelConfig,
    byte_level_tokenizer,
    example_observation,
    save_offline_checkpoint,
)

torch.set_num_threads(1)
B = 2


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return {f: save_offline_checkpoint(OfflineModelConfig(family=f), tmp_path_factory.mktemp(f)) for f in FAMILIES}


@pytest.fixture(scope="module")
def adapters(checkpoints):
    return {f: load_policy(f"lerobot:{path}", device="cpu") for f, path in checkpoints.items()}


def _noise(adapter, *lead, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((*lead, adapter.spec.chunk_len, adapter.spec.padded_dim), generator=g)


def test_lerobot_time_grid_reproduces_euler_integrate_times():
    # flow_matching.euler_integrate: time = 1.0 + step * dt in Python floats, then a float32 tensor.
    for n in range(1, 41):
        grid = time_grid(TimeConvention.LEROBOT, n)
        expected = torch.tensor([1.0 + k * (-1.0 / n) for k in range(n)], dtype=torch.float32)
        assert torch.equal(grid[:-1], expected), n
        assert grid[-1] == 0.0


@pytest.mark.parametrize("family", FAMILIES)
def test_spec_has_real_action_dim_padded_to_max_action_dim(adapters, family):
    spec = adapters[family].spec
    assert (spec.chunk_len, spec.action_dim, spec.padded_dim, spec.num_steps) == (10, 5, 32, 10)
    assert spec.convention is TimeConvention.LEROBOT


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_velocity_in_lerobot_euler_loop_is_bit_exact(adapters, family):
    from lerobot.policies.common.flow_matching import euler_integrate

    ad = adapters[family]
    obs, noise = example_observation(ad.config, B, seed=1), _noise(ad, B)
    ref = ad.lerobot_chunk(obs, noise=noise.clone())
    ctx = ad.encode(obs)
    with torch.no_grad():
        ours = euler_integrate(lambda x, t: ad.velocity(ctx, x, t), noise.clone(), ad.spec.num_steps)
    assert torch.equal(ours[..., : ad.spec.action_dim], ref)


@pytest.mark.parametrize("family", FAMILIES)
def test_unguided_sample_chunks_match_predict_action_chunk(adapters, family):
    ad = adapters[family]
    obs, noise = example_observation(ad.config, B, seed=2), _noise(ad, B)
    ref = ad.lerobot_chunk(obs, noise=noise.clone())
    out = sample_chunks(ad, context=ad.encode(obs), noise=noise)
    # gaflow's one sampler reproduces LeRobot's sampler to the bit (same time grid, same float step -1/n)
    assert torch.equal(out.chunk[..., : ad.spec.action_dim], ref)
    torch.testing.assert_close(ad.decode_actions(out.chunk), ad.postprocessor(ref), atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", ["smolvla", "pi05"])  # MEAN_STD and QUANTILES
def test_decode_actions_crops_padding_and_unnormalises_with_dataset_stats(adapters, checkpoints, family):
    ad = adapters[family]
    chunk = torch.randn(B, ad.spec.chunk_len, ad.spec.padded_dim)
    from safetensors.torch import load_file

    stats_file = next(checkpoints[family].glob("policy_postprocessor_step_*unnormalizer*.safetensors"))
    stats = load_file(stats_file)
    a = chunk[..., : ad.spec.action_dim]
    if family == "smolvla":
        expected = a * stats["action.std"] + stats["action.mean"]
    else:
        expected = (a + 1.0) * (stats["action.q99"] - stats["action.q01"]) / 2.0 + stats["action.q01"]
    decoded = ad.decode_actions(chunk)
    torch.testing.assert_close(decoded, expected, atol=1e-5, rtol=1e-5)
    chunk[..., ad.spec.action_dim:] = 123.0  # padded dims never reach the environment
    torch.testing.assert_close(ad.decode_actions(chunk), decoded)


def _round_trip(ad, actions: torch.Tensor, seed: int = 3) -> torch.Tensor:
    """decode_actions(normalize_actions(actions)) on one observation batch (the reference of relative actions)."""
    ad.encode(example_observation(ad.config, actions.shape[0], seed=seed))
    chunk = torch.zeros(actions.shape[0], ad.spec.chunk_len, ad.spec.padded_dim)
    chunk[..., : ad.spec.action_dim] = ad.normalize_actions(actions)
    return ad.decode_actions(chunk)


@pytest.mark.parametrize("family", FAMILIES)
def test_normalize_actions_inverts_decode_actions(adapters, family):
    ad = adapters[family]
    actions = torch.randn(B, ad.spec.chunk_len, ad.spec.action_dim)
    torch.testing.assert_close(_round_trip(ad, actions), actions, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"actions must be \(B, H, 5\)"):
        ad.normalize_actions(torch.zeros(B, ad.spec.chunk_len, 4))


@pytest.mark.parametrize("family, extra", [("pi0", {"use_relative_actions": True, "relative_exclude_joints": []}),
                                           ("smolvla", {"adapt_to_pi_aloha": True})])
def test_normalize_actions_inverts_relative_actions_and_pi_aloha_targets(family, extra, tmp_path):
    dims = {"action_dim": 14, "state_dim": 14} if family == "smolvla" else {}  # ALOHA's two 7-dof arms
    ad = load_policy(f"lerobot:{save_offline_checkpoint(OfflineModelConfig(family, extra=extra, **dims), tmp_path)}",
                     device="cpu")
    actions = torch.rand(B, ad.spec.chunk_len, ad.spec.action_dim) * 0.5  # inside ALOHA's gripper range
    torch.testing.assert_close(_round_trip(ad, actions), actions, atol=1e-5, rtol=1e-5)
    if family == "pi0":  # relative to the state of the batch encoded last: another state, another chunk
        ad.encode(example_observation(ad.config, B, seed=3))
        first = ad.normalize_actions(actions)
        ad.encode(example_observation(ad.config, B, seed=4))
        assert not torch.allclose(first, ad.normalize_actions(actions))


@pytest.mark.parametrize("family", FAMILIES)
def test_critic_features_have_documented_shapes(adapters, family):
    ad = adapters[family]
    feats = ad.critic_features(ad.encode(example_observation(ad.config, B, seed=3)))
    width = ad.backbone.embed_language_tokens(torch.zeros(1, 1, dtype=torch.long)).shape[-1]
    expected = {"task_embed": width, "task": width, "observation": width, "state": 6}
    if family == "smolvla":
        expected["state_token"] = width
    assert {k: tuple(v.shape) for k, v in feats.items()} == {k: (B, d) for k, d in expected.items()}
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in feats.values())


@pytest.mark.parametrize("family", FAMILIES)
def test_task_embed_depends_on_task_only(adapters, family):
    ad = adapters[family]
    a = example_observation(ad.config, B, seed=4, tasks="stack the blocks")
    b = example_observation(ad.config, B, seed=5, tasks="stack the blocks")  # new images and states
    c = example_observation(ad.config, B, seed=4, tasks="close the microwave door")
    fa, fb, fc = (ad.encode(o).features for o in (a, b, c))
    torch.testing.assert_close(fa["task_embed"], fb["task_embed"])
    assert not torch.allclose(fa["observation"], fb["observation"])
    assert not torch.allclose(fa["task_embed"], fc["task_embed"])


def test_pi05_task_span_excludes_discretised_state_and_state_feature_is_bin_centre(adapters):
    ad = adapters["pi05"]
    obs = example_observation(ad.config, B, seed=6, tasks="wipe the table")
    obs2 = dict(obs, **{"observation.state": obs["observation.state"] + 0.7})
    f1, f2 = ad.encode(obs).features, ad.encode(obs2).features
    # The prompt differs only in the state digits; the "Task: …" span must not see them.
    torch.testing.assert_close(f1["task_embed"], f2["task_embed"])
    normalised = ad.preprocess(obs)["observation.state"].clamp(-1.0, 1.0 - 1e-6)
    assert (f1["state"] - normalised).abs().max() <= 1.0 / 256 + 1e-6


@pytest.mark.parametrize("family", ["smolvla", "pi0"])
def test_expand_context_gives_each_candidate_its_separate_chunk(adapters, family):
    ad = adapters[family]
    n = 3
    obs, noise = example_observation(ad.config, B, seed=7), _noise(ad, B, n)
    ctx = ad.encode(obs)
    together = sample_chunks(ad, context=ctx, noise=noise, config=SamplerConfig(num_candidates=n)).candidates
    for j in range(n):
        alone = sample_chunks(ad, context=ctx, noise=noise[:, j]).chunk
        torch.testing.assert_close(together[:, j], alone, atol=2e-6, rtol=0)


def _recording_guidance(critic, **cfg):
    class Recording(Guidance):
        calls: list = []

        def guided_velocity(self, step, objective, weight, diag):
            out = super().guided_velocity(step, objective, weight, diag)
            self.calls.append((step.velocity.detach().clone(), out.detach().clone()))
            return out

    g = Recording(critic, GuidanceConfig(**cfg))
    g.calls = []
    return g


@pytest.mark.parametrize("family", FAMILIES)
def test_explicit_guidance_raises_critic_value_and_leaves_padding_alone(adapters, family):
    ad = adapters[family]
    d = ad.spec.action_dim
    c = torch.randn(ad.spec.chunk_len, d, generator=torch.Generator().manual_seed(8))
    critic = LinearCritic(c)
    obs, noise = example_observation(ad.config, B, seed=9), _noise(ad, B)
    ctx = ad.encode(obs)
    base = sample_chunks(ad, context=ctx, noise=noise).chunk
    guidance = _recording_guidance(critic, scale=0.3)
    guided = sample_chunks(ad, context=ctx, noise=noise, guidance=guidance)
    q = lambda chunk: critic({}, chunk[..., :d])[0]  # noqa: E731
    assert (q(guided.chunk) > q(base) + 1.0).all()
    assert len(guidance.calls) == ad.spec.num_steps
    for v_in, v_out in guidance.calls:
        assert torch.equal(v_out[..., d:], v_in[..., d:])
        assert not torch.equal(v_out[..., :d], v_in[..., :d])
    assert guided.diagnostics.summary()["ratio_mean"] > 0


def test_ensemble_critic_on_features_guides_under_inference_mode(adapters):
    ad = adapters["smolvla"]
    obs, noise = example_observation(ad.config, B, seed=10), _noise(ad, B)
    dims = {k: ad.encode(obs).features[k].shape[-1] for k in ("task", "observation", "state")}
    critic = EnsembleMLPCritic(dims, ad.spec.chunk_len, ad.spec.action_dim, hidden=(32,), num_members=3)
    with torch.inference_mode():
        ctx = ad.encode(obs)
        guidance = Guidance(critic, GuidanceConfig(estimator="clean_estimate", relative=0.5))
        scored = SamplerConfig(score_candidates=True)
        base = sample_chunks(ad, context=ctx, noise=noise, config=scored,
                             guidance=Guidance(critic, GuidanceConfig(control="zero")))
        guided = sample_chunks(ad, context=ctx, noise=noise, config=scored, guidance=guidance)
    assert (guided.values > base.values).all()


@pytest.mark.parametrize("estimator", ["clean_jacobian", "bptt"])
def test_estimators_through_the_policy_work_under_inference_mode(adapters, estimator):
    ad = adapters["smolvla"]  # its denoise_step appends to and crops the shared prefix cache
    critic = LinearCritic(torch.ones(ad.spec.chunk_len, ad.spec.action_dim))
    obs, noise = example_observation(ad.config, 1, seed=11), _noise(ad, 1)
    scored = SamplerConfig(score_candidates=True)
    # A window schedule mixes unguided steps (inference tensors) and graph steps on one cache.
    cfg = GuidanceConfig(estimator=estimator, scale=0.2, schedule="window", schedule_start=0.3)
    with torch.inference_mode():
        ctx = ad.encode(obs)
        base = sample_chunks(ad, context=ctx, noise=noise, config=scored,
                             guidance=Guidance(critic, GuidanceConfig(estimator="none")))
        out = sample_chunks(ad, context=ctx, noise=noise, config=scored, guidance=Guidance(critic, cfg))
        again = sample_chunks(ad, context=ctx, noise=noise).chunk
    assert (out.values > base.values).all()
    torch.testing.assert_close(again, base.chunk)  # the prefix cache is intact afterwards


@pytest.mark.parametrize("family", FAMILIES)
def test_saved_checkpoint_loads_back_with_the_built_weights(checkpoints, adapters, family, tmp_path):
    from gaflow.testing.lerobot_tiny import build_offline_policy

    built, _, _ = build_offline_policy(OfflineModelConfig(family=family), tmp_path)
    loaded = adapters[family].policy.state_dict()
    for key, value in built.state_dict().items():
        assert torch.equal(loaded[key], value), key


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_missing_config_error_names_the_file(checkpoints, tmp_path):
    ckpt = _copy(checkpoints["smolvla"], tmp_path / "ckpt")
    (ckpt / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"ckpt/config\.json"):
        load_lerobot_policy(f"lerobot:{ckpt}")


def test_wrong_policy_type_error_names_the_file(checkpoints, tmp_path):
    ckpt = _copy(checkpoints["pi0"], tmp_path / "ckpt")
    cfg = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps(dict(cfg, type="act")))
    with pytest.raises(CheckpointError, match=r"config\.json.*'act'"):
        load_lerobot_policy(str(ckpt))


def test_broken_config_field_error_names_the_file(checkpoints, tmp_path):
    ckpt = _copy(checkpoints["pi05"], tmp_path / "ckpt")
    cfg = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps(dict(cfg, chunk_size="fifty")))
    with pytest.raises(CheckpointError, match=r"config\.json"):
        load_lerobot_policy(str(ckpt))


def test_missing_weights_error_names_the_file(checkpoints, tmp_path):
    ckpt = _copy(checkpoints["pi0"], tmp_path / "ckpt")
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_lerobot_policy(str(ckpt))


def test_checkpoint_naming_an_unregistered_load_hook_fails_naming_the_file_and_the_hook(checkpoints, tmp_path):
    ckpt = _copy(checkpoints["smolvla"], tmp_path / "ckpt")
    (ckpt / LOAD_HOOK_FILE).write_text(json.dumps({"hook": "no.such.fixture"}))
    with pytest.raises(CheckpointError, match=r"ckpt/gaflow_load_hook\.json.*'no\.such\.fixture'.*import"):
        load_lerobot_policy(str(ckpt))


def test_load_hook_error_is_reported_against_the_hook_file(checkpoints, tmp_path):
    ckpt = _copy(checkpoints["pi0"], tmp_path / "ckpt")
    spec = json.loads((ckpt / LOAD_HOOK_FILE).read_text())
    del spec["pi_dims"]
    (ckpt / LOAD_HOOK_FILE).write_text(json.dumps(spec))
    with pytest.raises(CheckpointError, match=r"gaflow_load_hook\.json.*pi_dims"):
        load_lerobot_policy(str(ckpt))


def test_registered_load_hook_plan_is_applied_when_loading(checkpoints, tmp_path):
    """A hook gets the folder and its file; its config updates and tokenizer reach the loaded policy, and the
    caller's tokenizer= still wins."""
    ckpt = _copy(checkpoints["smolvla"], tmp_path / "ckpt")
    hooked, calls = byte_level_tokenizer(), []

    def hook(path, spec):
        calls.append((path, spec["note"]))
        return LoadPlan(tokenizer=hooked, config_updates={"vlm_model_name": str(path / "vlm"), "n_action_steps": 3})

    register_load_hook("tests.test_lerobot_adapters", hook)
    (ckpt / LOAD_HOOK_FILE).write_text(json.dumps({"hook": "tests.test_lerobot_adapters", "note": "seen"}))
    policy = load_lerobot_policy(str(ckpt), device="cpu")
    assert calls == [(ckpt, "seen")]
    assert policy.config.n_action_steps == 3 and policy.config.vlm_model_name == str(ckpt / "vlm")
    assert policy.tokenizer is hooked
    mine = byte_level_tokenizer()
    assert load_lerobot_policy(str(ckpt), device="cpu", tokenizer=mine).tokenizer is mine


def test_library_loaders_import_no_test_fixture():
    code = ("import sys, gaflow.policies.registry, gaflow.policies.lerobot, gaflow.policies.compact; "
            "print(sorted(m for m in sys.modules if m.startswith('gaflow.testing')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.strip() == "[]"


def test_load_policy_rejects_unknown_scheme():
    with pytest.raises(ValueError, match="lerobot:"):
        load_policy("hub:lerobot/smolvla_base")

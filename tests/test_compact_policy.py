"""Specifications of the built-in compact flow policy: it learns, it round-trips through checkpoints, it refuses
broken checkpoints and mismatched datasets with clear errors, and training resumes where it stopped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gaflow.policies import FlowPolicy
from gaflow.policies.compact import CheckpointError, CompactFlowPolicy, CompactPolicyConfig, Normalizer
from gaflow.policies.compact.data import load_demo_frames
from gaflow.policies.compact.text import HashedTextEncoder
from gaflow.policies.compact.train import TrainConfig, Trainer
from gaflow.sampler import SamplerConfig, sample_chunks

IMG = 16
TASKS = ["push the puck to the goal", "open the drawer"]


def tiny_policy_config(**kw) -> CompactPolicyConfig:
    base = dict(chunk_len=4, n_action_steps=2, image_size=IMG, cnn_channels=(8, 8), image_feature_dim=32,
                text_encoder="hashed", text_feature_dim=16, state_feature_dim=16, hidden_dim=64, expert_layers=1,
                time_embed_dim=16, augment_shift=0)
    base.update(kw)
    return CompactPolicyConfig(**base)


def demo_action(state: np.ndarray, task_id: int, t: int) -> np.ndarray:
    """A deterministic expert: the action depends on the task, the state and time (learnable exactly)."""
    sign = 1.0 if task_id == 0 else -1.0
    return np.array([sign * 0.8, 0.5 * np.sin(0.3 * t), -0.4 * state[0], sign * 0.6], dtype=np.float32)


def make_dataset(root: Path, episodes_per_task: int = 2, length: int = 12, action_dim: int = 4) -> Path:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    features = {
        "observation.image": {"dtype": "image", "shape": (IMG, IMG, 3), "names": ["height", "width", "channel"]},
        "observation.state": {"dtype": "float32", "shape": (4,), "names": None},
        "observation.environment_state": {"dtype": "float32", "shape": (39,), "names": None},
        "action": {"dtype": "float32", "shape": (action_dim,), "names": None},
        "episode.seed": {"dtype": "int64", "shape": (1,), "names": None},
        "episode.success": {"dtype": "bool", "shape": (1,), "names": None},
    }
    ds = LeRobotDataset.create("local/tiny", fps=80, features=features, root=root, use_videos=False)
    rng = np.random.default_rng(0)
    for ep in range(episodes_per_task * len(TASKS)):
        task_id = ep % len(TASKS)
        state = rng.uniform(-1, 1, 4).astype(np.float32)
        for t in range(length):
            img = np.full((IMG, IMG, 3), 40 + 150 * task_id, np.uint8)
            img[:, : 1 + t % IMG] = 255  # a moving bar: the image carries the time step
            a = demo_action(state, task_id, t)
            ds.add_frame({"observation.image": img, "observation.state": state.copy(),
                          "observation.environment_state": np.zeros(39, np.float32),
                          "action": a[:action_dim], "episode.seed": np.array([ep]),
                          "episode.success": np.array([True]), "task": TASKS[task_id]})
            state = state + 0.05 * np.concatenate([a[:3], [0.0]]).astype(np.float32)
        ds.save_episode()
    ds.finalize()
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("demos") / "tiny")


@pytest.fixture(scope="module")
def frames(dataset):
    return load_demo_frames(dataset)


def unit_normalizer(action_dim: int = 4) -> Normalizer:
    return Normalizer({k: {"mean": torch.zeros(d), "std": torch.ones(d)}
                       for k, d in [("action", action_dim), ("observation.state", 4)]})


def obs_batch(b: int = 3) -> dict:
    return {"observation.image": torch.rand(b, 3, IMG, IMG), "observation.state": torch.randn(b, 4),
            "task": [TASKS[i % 2] for i in range(b)]}


def test_policy_implements_flow_protocol_with_documented_shapes():
    torch.manual_seed(0)
    policy = CompactFlowPolicy(tiny_policy_config(), unit_normalizer())
    assert isinstance(policy, FlowPolicy)
    assert policy.spec.padded_dim == policy.spec.action_dim == 4
    assert policy.spec.convention.value == "lerobot"
    ctx = policy.encode(obs_batch(3))
    v = policy.velocity(ctx, torch.randn(3, 4, 4), torch.rand(3))
    assert v.shape == (3, 4, 4)
    feats = policy.critic_features(ctx)
    assert feats["observation"].shape == (3, 64)
    assert feats["task"].shape == (3, 384)
    assert feats["state"].shape == (3, 4)
    assert feats["image"].shape == (3, 32)
    out = sample_chunks(policy, context=ctx, config=SamplerConfig(num_candidates=2),
                        generator=torch.Generator().manual_seed(0))
    assert out.chunk.shape == (3, 4, 4)
    assert policy.decode_actions(out.chunk).shape == (3, 4, 4)


def test_env_state_policy_exposes_the_normalised_simulator_state_as_a_critic_feature():
    """A critic can read the privileged state the policy consumes (LIBERO object poses), normalised by the
    policy's own statistics; policies without it do not expose the key."""
    norm = Normalizer({"action": {"mean": torch.zeros(4), "std": torch.ones(4)},
                       "observation.state": {"mean": torch.zeros(4), "std": torch.ones(4)},
                       "observation.environment_state": {"mean": torch.full((39,), 2.0),
                                                         "std": torch.full((39,), 4.0)}})
    policy = CompactFlowPolicy(tiny_policy_config(use_env_state=True, env_state_dim=39), norm)
    batch = obs_batch(3)
    env = torch.randn(3, 39)
    batch["observation.environment_state"] = env
    feats = policy.critic_features(policy.encode(batch))
    assert torch.allclose(feats["env_state"], (env - 2.0) / 4.0, atol=1e-6)
    plain = CompactFlowPolicy(tiny_policy_config(), unit_normalizer())
    assert "env_state" not in plain.critic_features(plain.encode(obs_batch(3)))


def test_encode_rejects_wrong_image_size_naming_the_feature():
    policy = CompactFlowPolicy(tiny_policy_config(), unit_normalizer())
    batch = obs_batch(2)
    batch["observation.image"] = torch.rand(2, 3, IMG + 2, IMG + 2)
    with pytest.raises(ValueError, match="observation.image"):
        policy.encode(batch)


def test_hashed_text_encoder_is_deterministic_and_cached():
    a, b = HashedTextEncoder(), HashedTextEncoder()
    x = a.embed(TASKS)
    assert torch.equal(x, b.embed(TASKS))
    assert torch.allclose(x.norm(dim=-1), torch.ones(2))
    assert set(a.cache) == set(TASKS)
    assert not torch.allclose(x[0], x[1])


def test_frames_build_chunks_that_pad_past_the_episode_end(frames):
    idx, pad = frames.chunk_indices(4)
    ep = frames.episode_index
    last = len(frames) - 1
    assert not pad[0].any() and torch.equal(idx[0], torch.arange(4))
    assert pad[last].tolist() == [False, True, True, True]
    assert (idx[last] == last).all()
    # chunks never cross into the next episode
    assert (ep[idx] == ep.unsqueeze(1)).all()


def test_tiny_policy_overfits_tiny_dataset_and_samples_demonstrated_actions(tmp_path, frames):
    cfg = TrainConfig(out=str(tmp_path / "run"), steps=500, batch_size=32, flow_samples=4, lr=3e-3,
                      warmup_steps=20, checkpoint_every=500, log_every=25, num_threads=1, progress=False,
                      policy=tiny_policy_config())
    trainer = Trainer(cfg, frames)
    idx = torch.arange(len(frames))
    batch, chunk, pad = trainer.make_batch(idx, augment=False)
    torch.manual_seed(0)
    with torch.no_grad():
        start = float(trainer.loss(batch, chunk, pad, k=16))
    policy = trainer.run()
    with torch.no_grad():
        end = float(trainer.loss(batch, chunk, pad, k=16))
    assert end < 0.2 * start, (start, end)
    # Sampled chunks approach the demonstrated ones (unpadded steps), far better than the data's own spread.
    with torch.no_grad():
        out = sample_chunks(policy, batch, generator=torch.Generator().manual_seed(1))
        sampled = policy.decode_actions(out.chunk)
    demo = frames.actions[trainer.chunk_index[idx]]
    real = ~pad
    err = (sampled - demo).abs().mean(-1)[real].mean()
    spread = (demo - frames.actions.mean(0)).abs().mean(-1)[real].mean()
    assert err < 0.25 * spread, (float(err), float(spread))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, frames):
    out = tmp_path_factory.mktemp("run") / "policy"
    cfg = TrainConfig(out=str(out), steps=6, batch_size=8, flow_samples=2, checkpoint_every=3, warmup_steps=2,
                      num_threads=1, progress=False, policy=tiny_policy_config())
    Trainer(cfg, frames).run()
    return out


def _velocities(policy):
    g = torch.Generator().manual_seed(3)
    torch.manual_seed(0)
    batch = obs_batch(4)
    x, t = torch.randn(4, 4, 4, generator=g), torch.rand(4, generator=g)
    with torch.no_grad():
        return policy.velocity(policy.encode(batch), x, t)


def test_checkpoint_roundtrip_gives_identical_velocities(tmp_path, trained_run):
    policy = CompactFlowPolicy.from_pretrained(trained_run)
    assert not any(p.requires_grad for p in policy.parameters())  # a base policy is frozen
    policy.save_pretrained(tmp_path / "copy")
    again = CompactFlowPolicy.from_pretrained(tmp_path / "copy")
    assert torch.equal(_velocities(policy), _velocities(again))
    assert torch.equal(policy.decode_actions(torch.ones(1, 4, 4)), again.decode_actions(torch.ones(1, 4, 4)))
    # the task embeddings travel with the checkpoint: known tasks need no text model
    assert set(TASKS) <= set(again.text_encoder.cache)


def test_run_folder_without_final_export_loads_latest_checkpoint(trained_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run / "checkpoints", run / "checkpoints")
    policy = CompactFlowPolicy.from_pretrained(run)
    assert policy.checkpoint_metadata["step"] == 6


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoints"))
    return dst


def test_truncated_weights_give_a_clear_error(trained_run, tmp_path):
    d = _copy(trained_run, tmp_path / "bad")
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        CompactFlowPolicy.from_pretrained(d)


def test_missing_config_gives_a_clear_error(trained_run, tmp_path):
    d = _copy(trained_run, tmp_path / "bad")
    (d / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json"):
        CompactFlowPolicy.from_pretrained(d)


def test_config_that_disagrees_with_weights_gives_a_clear_error(trained_run, tmp_path):
    d = _copy(trained_run, tmp_path / "bad")
    meta = json.loads((d / "config.json").read_text())
    meta["policy"]["hidden_dim"] = 32
    (d / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not match"):
        CompactFlowPolicy.from_pretrained(d)


def test_resume_with_dataset_of_other_action_dim_gives_a_clear_error(trained_run, tmp_path, frames):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    frames3 = load_demo_frames(make_dataset(tmp_path / "ds3", episodes_per_task=1, length=5, action_dim=3))
    cfg = TrainConfig(out=str(out), steps=8, resume=True, num_threads=1, progress=False)
    with pytest.raises(ValueError, match="action_dim=4"):
        Trainer(cfg, frames3)


def test_existing_run_without_resume_is_refused(trained_run, frames):
    cfg = TrainConfig(out=str(trained_run), steps=8, num_threads=1, progress=False, policy=tiny_policy_config())
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(cfg, frames)


def test_resume_continues_from_saved_step_and_matches_uninterrupted_training(tmp_path, frames):
    def cfg(out, resume=False):
        return TrainConfig(out=str(tmp_path / out), steps=8, batch_size=8, flow_samples=2, checkpoint_every=4,
                           warmup_steps=2, num_threads=1, progress=False, resume=resume, policy=tiny_policy_config())

    full = Trainer(cfg("full"), frames).run()
    Trainer(cfg("split"), frames).run(stop_at=4)  # "interrupted" after the step-4 checkpoint
    resumed = Trainer(cfg("split", resume=True), frames)
    assert resumed.step == 4
    policy = resumed.run()
    assert resumed.step == 8
    for (name, a), b in zip(full.state_dict().items(), policy.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


def test_several_dataset_folders_concatenate_with_tasks_matched_by_string(dataset, frames):
    both = load_demo_frames(f"{dataset},{dataset}")
    assert len(both) == 2 * len(frames) and both.num_episodes == 2 * frames.num_episodes
    assert both.tasks == sorted(frames.tasks)
    for i in (0, len(frames) + 3):
        j = i % len(frames)
        assert both.tasks[int(both.task_index[i])] == frames.tasks[int(frames.task_index[j])]
    idx, pad = both.chunk_indices(4)
    assert (both.episode_index[idx] == both.episode_index.unsqueeze(1)).all()


def test_dataset_entry_can_keep_only_some_tasks(dataset, frames):
    only = load_demo_frames(f"{dataset}::{TASKS[1]}")
    assert only.tasks == [TASKS[1]]
    assert len(only) == int((frames.task_index == frames.tasks.index(TASKS[1])).sum())
    assert (only.task_index == 0).all()
    with pytest.raises(ValueError, match="has no task"):
        load_demo_frames(f"{dataset}::no such task")


def test_task_filter_names_that_are_not_task_strings_resolve_through_the_callers_describe_task(tmp_path, dataset):
    describe = {"drawer": TASKS[1]}.__getitem__  # unknown names raise KeyError: no match, not a crash
    assert load_demo_frames(f"{dataset}::drawer", describe_task=describe).tasks == [TASKS[1]]
    with pytest.raises(ValueError, match="has no task 'drawer'"):
        load_demo_frames(f"{dataset}::drawer")  # the loader itself knows no environment's task names
    with pytest.raises(ValueError, match="has no task 'push'"):
        load_demo_frames(f"{dataset}::push", describe_task=describe)
    cfg = TrainConfig(dataset=f"{dataset}::drawer", out=str(tmp_path / "run"), num_threads=1, progress=False,
                      policy=tiny_policy_config())
    assert Trainer(cfg, describe_task=describe).frames.tasks == [TASKS[1]]


def test_train_policy_cli_filters_datasets_by_metaworld_task_name(dataset):
    """`gaflow train-policy --dataset demos::push` (or push-v3) keeps MetaWorld's push demos, as before the policy
    stopped importing the env: the CLI supplies MetaWorld's task descriptions."""
    from gaflow.cli.train_policy import metaworld_task_string

    assert TASKS[0] == "push the puck to the goal"  # MetaWorld's description of push
    for name in ("push", "push-v3"):
        assert load_demo_frames(f"{dataset}::{name}", describe_task=metaworld_task_string).tasks == [TASKS[0]]
    with pytest.raises(ValueError, match="has no task 'no-such-task'"):
        load_demo_frames(f"{dataset}::no-such-task", describe_task=metaworld_task_string)


def test_shipped_builtin_checkpoint_loads_and_knows_its_six_tasks():
    """compact:builtin is the policy `gaflow demo` uses: it must load offline, use the inputs its README states, and
    carry the embedding of every task it was trained on (so no text model is needed at run time)."""
    from gaflow.envs.metaworld import TASK_DESCRIPTIONS
    from gaflow.policies.registry import load_policy

    policy = load_policy("compact:builtin")
    assert isinstance(policy, CompactFlowPolicy)
    cfg = policy.config
    assert (cfg.use_image, cfg.use_env_state, cfg.image_size, cfg.action_dim) == (True, True, 84, 4)
    for task in ("push", "pick-place", "push-wall", "hand-insert", "disassemble", "shelf-place"):
        assert TASK_DESCRIPTIONS[task] in policy.text_encoder.cache, task
    assert not any(p.requires_grad for p in policy.parameters())

"""Critic data, targets, episode split, training and quality metrics."""

import json

import numpy as np
import pytest
import torch

from gaflow.critic.data import ChunkTable
from gaflow.critic.quality import critic_quality, roc_auc
from gaflow.critic.targets import success_to_go
from gaflow.critic.train import CriticTrainConfig, episode_split, load_critic, rows_of, train_critic


def hand_table():
    # episode 0: chunks at steps 0, 4, 8; first success at step 10. episode 1: fails.
    return ChunkTable(
        chunk=torch.zeros(5, 4, 2), features={"state": torch.zeros(5, 3)},
        episode=torch.tensor([0, 0, 0, 1, 1]), step=torch.tensor([0, 4, 8, 0, 4]),
        executed=torch.tensor([4, 4, 3, 4, 4]), next_row=torch.tensor([1, 2, -1, 4, -1]),
        success=torch.tensor([1, 1, 1, 0, 0]), steps_to_success=torch.tensor([10, 6, 2, -1, -1]),
        reward=torch.tensor([0, 0, 1, 0, 0]),
        episodes=[{"task": "push", "seed": 0, "success": True}, {"task": "push", "seed": 1, "success": False}],
    )


def test_success_to_go_targets_on_hand_made_episodes():
    y = success_to_go(hand_table(), gamma=0.9)
    torch.testing.assert_close(y, torch.tensor([0.9**10, 0.9**6, 0.9**2, 0.0, 0.0]))


def test_chunk_table_round_trips_and_rejects_bad_files(tmp_path):
    t = hand_table()
    t.save(tmp_path / "chunks.safetensors")
    back = ChunkTable.load(tmp_path / "chunks.safetensors")
    assert torch.equal(back.chunk, t.chunk) and back.episodes == t.episodes
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="bad.safetensors"):
        ChunkTable.load(tmp_path / "bad.safetensors")
    with pytest.raises(FileNotFoundError, match="gaflow collect"):
        ChunkTable.load(tmp_path / "missing.safetensors")
    sub = t.select(torch.tensor([1, 2, 4]))
    assert sub.next_row.tolist() == [1, -1, -1]


def synthetic_table(n_episodes=400, chunks_per_episode=3, seed=0, tasks=("push", "pick")):
    """Success depends on the chunk: episodes whose chunks point along +u succeed more often."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(4, 2, generator=g)
    rows = n_episodes * chunks_per_episode
    chunk = torch.randn(rows, 4, 2, generator=g)
    episode = torch.arange(n_episodes).repeat_interleave(chunks_per_episode)
    score = (chunk * u).sum((1, 2)).view(n_episodes, chunks_per_episode).mean(1)
    success_ep = (score + 0.3 * torch.randn(n_episodes, generator=g)) > 0
    step = torch.arange(chunks_per_episode).repeat(n_episodes) * 4
    last = step == 4 * (chunks_per_episode - 1)
    next_row = torch.where(last, -1, torch.arange(rows) + 1)
    succ = success_ep[episode]
    sts = torch.where(succ, 4 * chunks_per_episode - step, -1)
    reward = (succ & last).long()
    eps = [{"task": tasks[i % len(tasks)], "seed": i, "success": bool(success_ep[i])} for i in range(n_episodes)]
    task_feat = torch.tensor([[1.0, 0.0] if e["task"] == tasks[0] else [0.0, 1.0] for e in eps])[episode]
    return ChunkTable(chunk=chunk, features={"observation": torch.randn(rows, 6, generator=g), "task": task_feat},
                      episode=episode, step=step, executed=torch.full((rows,), 4), next_row=next_row,
                      success=succ.long(), steps_to_success=sts, reward=reward, episodes=eps)


def test_episode_split_never_leaks_an_episode_and_holds_out_tasks():
    t = synthetic_table(60)
    s = episode_split(t, 0.25, seed=1, held_out_tasks=("pick",))
    assert not set(s.train) & set(s.validation)
    assert all(t.episodes[e]["task"] == "pick" for e in s.held_out)
    assert all(t.episodes[e]["task"] == "push" for e in s.train + s.validation)
    tr, va = rows_of(t, s.train), rows_of(t, s.validation)
    assert not set(t.episode[tr].tolist()) & set(t.episode[va].tolist())
    with pytest.raises(ValueError, match="held-out task"):
        episode_split(t, 0.25, 0, held_out_tasks=("nope",))


@pytest.mark.parametrize("target,arch", [("success_to_go", "mlp"), ("binary", "mlp"), ("iql", "mlp"),
                                         pytest.param("success_to_go", "transformer", marks=pytest.mark.slow)])
def test_ensemble_learns_chunk_dependent_success(tmp_path, target, arch):
    table = synthetic_table(300, chunks_per_episode=2)
    cfg = CriticTrainConfig(target=target, arch=arch, features=("observation", "task"), hidden=(64, 64),
                            members=3 if arch == "mlp" else 2, epochs=25, batch_size=64, lr=2e-3, patience=5)
    critic, metrics, split = train_critic(table, cfg, out_dir=tmp_path, progress=False)
    q = critic_quality(critic, table, rows_of(table, split.validation), target)
    assert q["auc"] > (0.75 if arch == "mlp" else 0.65), q["auc"]  # held-out episodes; chance is 0.5
    assert metrics["best_val_loss"] <= metrics["history"][0]["val_loss"]
    loaded = load_critic(tmp_path)
    f = {k: table.features[k][:7] for k in ("observation", "task")}
    torch.testing.assert_close(loaded(f, table.chunk[:7]), critic(f, table.chunk[:7]))


def test_transformer_critic_trains_saves_and_loads(tmp_path):
    table = synthetic_table(40, chunks_per_episode=2)
    cfg = CriticTrainConfig(arch="transformer", features=("observation", "task"), hidden=(64,), members=2, epochs=2)
    critic, metrics, _ = train_critic(table, cfg, out_dir=tmp_path, progress=False)
    f = {k: table.features[k][:5] for k in ("observation", "task")}
    assert critic(f, table.chunk[:5]).shape == (2, 5)
    torch.testing.assert_close(load_critic(tmp_path)(f, table.chunk[:5]), critic(f, table.chunk[:5]))


def test_bad_tables_give_clear_errors():
    t = synthetic_table(20)
    with pytest.raises(ValueError, match="feature column"):
        train_critic(t, CriticTrainConfig(features=("observation", "image")), progress=False)
    empty = t.select(torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError, match="empty"):
        train_critic(empty, CriticTrainConfig(features=("observation",)), progress=False)


def test_roc_auc_known_values():
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    assert np.isnan(roc_auc(np.array([0.1, 0.2]), np.array([1, 1])))


def test_progress_spearman_ranks_closeness_to_success_and_ignores_failed_episodes():
    from gaflow.critic.quality import progress_spearman

    steps = np.array([30, 20, 10, 0, -1, -1, 5])
    success = np.array([1, 1, 1, 1, 0, 0, 1], bool)
    tracks = np.array([0.1, 0.2, 0.3, 0.9, 5.0, -5.0, 0.5])  # rises as success nears; failed rows are ignored
    assert progress_spearman(tracks, steps, success) == pytest.approx(1.0)
    assert progress_spearman(-tracks, steps, success) == pytest.approx(-1.0)
    assert np.isnan(progress_spearman(tracks[:2], steps[:2], success[:2]))


def test_wrong_action_dim_and_single_outcome_data_are_reported():
    import warnings

    from gaflow.critic import EnsembleMLPCritic
    from gaflow.guidance import Guidance, GuidanceConfig
    from gaflow.policies import GaussianFlowPolicy, PolicySpec
    from gaflow.sampler import sample_chunks

    a, b = synthetic_table(10), synthetic_table(10)
    b.chunk = torch.zeros(len(b), 4, 3)
    with pytest.raises(ValueError, match="chunk shapes"):
        ChunkTable.concat([a, b])
    policy = GaussianFlowPolicy(PolicySpec(4, 3, 3, "lerobot"))
    critic = EnsembleMLPCritic({}, chunk_len=4, action_dim=2, hidden=(8,))
    with pytest.raises(ValueError, match="action_dim 2"):
        sample_chunks(policy, torch.zeros(1, 4, 3), guidance=Guidance(critic, GuidanceConfig()))
    t = synthetic_table(30)
    t.success = torch.ones_like(t.success)
    t.steps_to_success = torch.full_like(t.steps_to_success, 4)
    for e in t.episodes:
        e["success"] = True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_critic(t, CriticTrainConfig(features=("task",), hidden=(8,), epochs=1), progress=False)
    assert any("every episode in the chunk table succeeded" in str(w.message) for w in caught)


def test_critic_report_command_prints_auc_and_progress_on_toy_rollouts(tmp_path):
    from typer.testing import CliRunner

    from gaflow.cli import app
    from gaflow.collect import CollectConfig, collect

    data = tmp_path / "collect"
    collect(CollectConfig(policy="toy:default", env="toy", tasks=["toy-reach", "toy-reach-far"],
                          seeds=list(range(20))), data, workers=1, progress=False)
    res = CliRunner().invoke(app, ["train-critic", "--data", str(data), "--out", str(tmp_path / "critic"),
                                   "--features", "state", "--hidden", "32", "--epochs", "5"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["critic-report", "--critic", str(tmp_path / "critic"), "--data", str(data),
                                   "--out", str(tmp_path / "report")], env={"COLUMNS": "160"})
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "report" / "critic_report.json").read_text())
    assert "progress_spearman" in res.output and -1.0 <= rep["progress_spearman"] <= 1.0
    assert 0.0 <= rep["auc"] <= 1.0

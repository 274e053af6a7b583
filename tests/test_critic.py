"""Critic data, targets, episode split, training and quality metrics."""

import json

import numpy as np
import pytest
import torch

from gaflow.critic.data import ChunkTable
from gaflow.critic.quality import critic_quality, roc_auc
from gaflow.critic.targets import success_to_go
from gaflow.critic.train import (
    CriticTrainConfig,
    build_critic,
    episode_split,
    iql_targets,
    load_critic,
    rows_of,
    save_critic,
    train_critic,
)


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


@pytest.mark.parametrize("field,column", [("chunk", "chunk"), ("features", "feature.state")])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_chunk_table_with_nonfinite_values_is_refused_naming_file_and_field(tmp_path, field, column, bad):
    t = hand_table()
    (t.chunk if field == "chunk" else t.features["state"])[2].view(-1)[0] = bad
    t.save(tmp_path / "chunks.safetensors")
    with pytest.raises(ValueError, match=rf"chunks\.safetensors has NaN/inf values in \['{column}'\]"):
        ChunkTable.load(tmp_path / "chunks.safetensors")
    # an in-memory table never reaches the optimiser either
    with pytest.raises(ValueError, match=rf"NaN/inf values in \['{column}'\]"):
        train_critic(t, CriticTrainConfig(features=("state",), epochs=1), progress=False)


def test_chunk_table_with_dangling_row_links_is_refused_naming_the_file(tmp_path):
    t = hand_table()
    t.next_row[0] = 7  # a 5-row table
    t.save(tmp_path / "chunks.safetensors")
    with pytest.raises(ValueError, match=r"chunks\.safetensors: column 'next_row'"):
        ChunkTable.load(tmp_path / "chunks.safetensors")
    t = hand_table()
    t.episode[4] = 2  # two episodes
    t.save(tmp_path / "chunks.safetensors")
    with pytest.raises(ValueError, match=r"chunks\.safetensors: column 'episode'"):
        ChunkTable.load(tmp_path / "chunks.safetensors")


def test_iql_targets_each_member_bootstraps_from_its_own_value_net():
    t = hand_table()
    t.features["state"] = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    cfg = CriticTrainConfig(features=("state",), hidden=(8,), members=2)
    torch.manual_seed(0)
    value_net = build_critic(cfg, {"state": 3}, 4, 2, use_chunk=False)
    rows = torch.tensor([[0, 1, 3], [1, 2, 0]])  # member k trains on rows[k]
    reward, discount = t.reward.float(), torch.tensor([0.5, 0.25, 0.125, 0.5, 0.5])
    targets = iql_targets(value_net, t.features, rows, reward, t.next_row, discount)
    with torch.no_grad():
        v = value_net(t.features, None)  # (K, N)
    # next rows of [0, 1, 3] are [1, 2, 4]; of [1, 2, 0]: [2, end, 1]
    expected = torch.stack([torch.stack([0.5 * v[0, 1], 0.25 * v[0, 2], 0.5 * v[0, 4]]),
                            torch.stack([0.25 * v[1, 2], torch.tensor(1.0), 0.5 * v[1, 1]])])
    torch.testing.assert_close(targets, expected)
    with torch.no_grad():  # change member 1's value network only
        for w in value_net.weights:
            w[1] += 1.0
    moved = iql_targets(value_net, t.features, rows, reward, t.next_row, discount)
    assert torch.equal(moved[0], targets[0])
    assert not torch.equal(moved[1, [0, 2]], targets[1, [0, 2]]) and moved[1, 1] == 1.0  # terminal: r only


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
    s = episode_split(t, 0.25, seed=1, held_out_tasks=("pick",), report_fraction=0.2)
    sides = [set(s.train), set(s.validation), set(s.report), set(s.held_out)]
    assert sum(map(len, sides)) == len(set().union(*sides)) == 60  # every episode on exactly one side
    assert all(t.episodes[e]["task"] == "pick" for e in s.held_out)
    assert all(t.episodes[e]["task"] == "push" for e in s.train + s.validation + s.report)
    for outcome in (True, False):  # report and validation take their share of each (task, outcome) group
        group = [e for e in range(60) if t.episodes[e]["task"] == "push" and t.episodes[e]["success"] == outcome]
        assert len(set(s.validation) & set(group)) == round(0.25 * len(group))
        assert len(set(s.report) & set(group)) == round(0.2 * len(group))
    # without a report split, the split is the two-way split of earlier versions
    two_way = episode_split(t, 0.25, seed=1, held_out_tasks=("pick",))
    assert two_way.report == [] and two_way.validation == s.validation
    assert two_way.train == sorted(s.train + s.report)
    tr, va = rows_of(t, s.train), rows_of(t, s.validation)
    assert not set(t.episode[tr].tolist()) & set(t.episode[va].tolist())
    with pytest.raises(ValueError, match="held-out task"):
        episode_split(t, 0.25, 0, held_out_tasks=("nope",))


def test_too_few_episodes_for_a_report_split_warn_and_leave_it_empty():
    t = hand_table()  # two episodes: one trains, one validates
    with pytest.warns(UserWarning, match="too few for a report split"):
        s = episode_split(t, 0.2, seed=0, report_fraction=0.2)
    assert (len(s.train), len(s.validation), s.report) == (1, 1, [])
    with pytest.raises(ValueError, match="report_fraction"):
        CriticTrainConfig(val_fraction=0.5, report_fraction=0.5)


@pytest.mark.parametrize("target,arch", [("success_to_go", "mlp"), ("binary", "mlp"), ("iql", "mlp"),
                                         pytest.param("success_to_go", "transformer", marks=pytest.mark.slow)])
def test_ensemble_learns_chunk_dependent_success(tmp_path, target, arch):
    table = synthetic_table(300, chunks_per_episode=2)
    cfg = CriticTrainConfig(target=target, arch=arch, features=("observation", "task"), hidden=(64, 64),
                            members=3 if arch == "mlp" else 2, epochs=25, batch_size=64, lr=2e-3, patience=5)
    critic, metrics, split = train_critic(table, cfg, out_dir=tmp_path, progress=False)
    q = critic_quality(critic, table, rows_of(table, split.report), target)
    assert q["auc"] > (0.75 if arch == "mlp" else 0.65), q["auc"]  # report episodes; chance is 0.5
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


def save_small_critic(folder):
    cfg = CriticTrainConfig(features=("state",), hidden=(8,), members=2)
    torch.manual_seed(0)
    critic = build_critic(cfg, {"state": 3}, 4, 2, {"state": {"mean": torch.zeros(3), "std": torch.ones(3)}})
    save_critic(critic, folder, cfg, {"split": {"train": [0], "validation": [1], "held_out": [], "report": []}})
    return critic


def test_critic_checkpoint_changed_after_saving_is_refused_naming_the_file(tmp_path):
    from safetensors.torch import load_file, save_file

    critic = save_small_critic(tmp_path)
    x = ({"state": torch.randn(3, 3)}, torch.randn(3, 4, 2))
    torch.testing.assert_close(load_critic(tmp_path)(*x), critic(*x))
    weights = load_file(str(tmp_path / "critic.safetensors"))
    weights["param.weights.0"][0, 0, 0] += 1e-3
    save_file(weights, str(tmp_path / "critic.safetensors"))
    with pytest.raises(ValueError, match=r"critic\.safetensors were changed after saving .*sha256 mismatch"):
        load_critic(tmp_path)


def test_critic_with_nonfinite_weights_is_refused_even_with_a_matching_checksum(tmp_path):
    import hashlib

    from safetensors.torch import load_file, save_file

    save_small_critic(tmp_path)
    weights = load_file(str(tmp_path / "critic.safetensors"))
    weights["param.biases.1"][1, 0, 0] = float("nan")
    save_file(weights, str(tmp_path / "critic.safetensors"))
    info = json.loads((tmp_path / "critic.json").read_text())
    info["files"]["critic.safetensors"] = hashlib.sha256((tmp_path / "critic.safetensors").read_bytes()).hexdigest()
    (tmp_path / "critic.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"critic\.safetensors hold NaN/inf values in \['param\.biases\.1'\]"):
        load_critic(tmp_path)
    nan_critic = build_critic(CriticTrainConfig(hidden=(8,)), {"state": 3}, 4, 2)
    with torch.no_grad():
        nan_critic.weights[0][0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"refusing to save a critic with NaN/inf in \['param\.weights\.0'\]"):
        save_critic(nan_critic, tmp_path / "other", CriticTrainConfig(hidden=(8,)))


def test_critic_saved_before_checksums_loads_with_a_warning(tmp_path):
    critic = save_small_critic(tmp_path)
    info = json.loads((tmp_path / "critic.json").read_text())
    del info["files"]
    (tmp_path / "critic.json").write_text(json.dumps({**info, "format": "gaflow-critic-v1"}))
    with pytest.warns(UserWarning, match="saved before checkpoints carried checksums"):
        old = load_critic(tmp_path)
    x = ({"state": torch.randn(3, 3)}, torch.randn(3, 4, 2))
    torch.testing.assert_close(old(*x), critic(*x))
    (tmp_path / "critic.json").write_text(json.dumps({**info, "format": "something-else"}))
    with pytest.raises(ValueError, match="format 'something-else'"):
        load_critic(tmp_path)


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


def test_critic_report_measures_quality_on_report_episodes_only(tmp_path):
    from typer.testing import CliRunner

    from gaflow.cli import app
    from gaflow.collect import CollectConfig, collect
    from gaflow.critic.quality import critic_values, progress_spearman
    from gaflow.critic.report import heldout_rows

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
    info = json.loads((tmp_path / "critic" / "critic.json").read_text())
    table = ChunkTable.load(data / "chunks.safetensors")
    report_eps = info["split"]["report"]
    assert report_eps and not set(report_eps) & set(info["split"]["train"] + info["split"]["validation"])
    rows = rows_of(table, report_eps)
    assert rep["quality_split"] == "report" and rep["n_episodes"] == len(report_eps) and rep["n_chunks"] == len(rows)
    values = critic_values(load_critic(tmp_path / "critic"), table, rows).mean(0).numpy()
    labels = table.success[rows].bool().numpy()
    assert rep["auc"] == pytest.approx(roc_auc(values, labels), nan_ok=True)
    assert rep["progress_spearman"] == pytest.approx(
        progress_spearman(values, table.steps_to_success[rows].numpy(), labels), nan_ok=True)
    assert "progress_spearman" in res.output and "report/held-out-task episodes" in res.output
    # a critic trained before the report split falls back to its validation episodes, and says so
    del info["split"]["report"]
    (tmp_path / "critic" / "critic.json").write_text(json.dumps(info))
    fallback, label = heldout_rows(table, tmp_path / "critic", same_data=True)
    assert torch.equal(fallback, rows_of(table, info["split"]["validation"]))
    assert "VALIDATION CHOSE THE CHECKPOINT" in label

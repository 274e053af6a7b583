"""gaflow import-rollouts: a LeRobotDataset v3 + a frozen policy → the chunk table `gaflow collect` would have built.

The reference is collect itself: its own LeRobotDataset, imported, must give its chunk table's labels and features,
and a critic trained on either must rank held-out episodes alike.
"""

import json

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from typer.testing import CliRunner

from gaflow.cli import app
from gaflow.collect import CollectConfig, collect
from gaflow.critic.data import ChunkTable
from gaflow.critic.quality import critic_values, roc_auc
from gaflow.critic.train import CriticTrainConfig, rows_of, train_critic
from gaflow.importing import ImportConfig, action_windows, chunk_starts, import_rollouts

torch.set_num_threads(1)
# A low-noise toy policy: whether an episode succeeds depends mostly on its start state, so a state-only critic
# learns something on 48 training episodes; 3 of the 6 chunk steps run, so windows span the next chunk's actions.
TOY_POLICY = "toy:std=0.3,gain=0.35"
N_SEEDS, N_ACTION_STEPS = 32, 3
LABELS = ("episode", "step", "executed", "next_row", "success", "steps_to_success", "reward")


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy_collect")
    collect(CollectConfig(policy=TOY_POLICY, env="toy", tasks=["toy-reach", "toy-reach-far"],
                          seeds=list(range(N_SEEDS)), n_action_steps=N_ACTION_STEPS), root, workers=1,
            progress=False)
    return root


def toy_import(run, out, **kw) -> tuple[dict, ChunkTable]:
    cfg = ImportConfig(dataset=str(run / "dataset"), policy=TOY_POLICY, n_action_steps=N_ACTION_STEPS, **kw)
    summary = import_rollouts(cfg, out, progress=False)
    return summary, ChunkTable.load(out / "chunks.safetensors")


def test_importing_collects_dataset_gives_collects_labels_features_and_executed_actions(toy_run, tmp_path):
    ref = ChunkTable.load(toy_run / "chunks.safetensors")
    summary, table = toy_import(toy_run, tmp_path / "imported")
    assert summary["labels"] == "column:next.success" and summary["chunks"] == len(ref)
    assert 0 < sum(e["success"] for e in ref.episodes) < len(ref.episodes)  # both outcomes are compared
    for name in LABELS:
        assert torch.equal(getattr(table, name), getattr(ref, name)), name
    assert table.features.keys() == ref.features.keys() == {"state"}
    torch.testing.assert_close(table.features["state"], ref.features["state"], atol=1e-6, rtol=0)
    for mine, theirs in zip(table.episodes, ref.episodes, strict=True):
        for key in ("seed", "success", "first_success_step", "length"):
            assert mine[key] == theirs[key], key
        assert mine["task"] == theirs["description"]  # a dataset knows the instruction, not collect's task name
    # the executed steps of each chunk are the actions collect executed (the toy env clips them to [-1, 1])
    executed = torch.arange(table.chunk.shape[1])[None, :] < table.executed[:, None]  # (N, H)
    assert torch.equal(table.chunk[executed], ref.chunk.clamp(-1, 1)[executed])


def test_a_chunk_is_the_recorded_actions_from_its_start_frame_on(toy_run, tmp_path):
    _, table = toy_import(toy_run, tmp_path / "imported")
    h = table.chunk.shape[1]
    assert h == 6 and set(table.executed.tolist()) <= {1, 2, 3}
    for r in range(len(table)):
        nxt = int(table.next_row[r])
        if nxt >= 0:  # steps past this chunk's executed ones are the next chunk's executed actions
            assert torch.equal(table.chunk[r, N_ACTION_STEPS:], table.chunk[nxt, :h - N_ACTION_STEPS])
        else:  # past the episode's last frame the last recorded action repeats (LeRobot's padding)
            last = table.chunk[r, int(table.executed[r]) - 1]
            assert (table.chunk[r, int(table.executed[r]):] == last).all()


def test_action_windows_repeat_the_last_action_past_the_end():
    actions = torch.arange(5.0)[:, None]  # (T=5, d=1)
    w = action_windows(actions, chunk_starts(5, 2), 3)
    assert w[..., 0].tolist() == [[0, 1, 2], [2, 3, 4], [4, 4, 4]]


def test_critics_trained_on_collected_or_imported_data_rank_held_out_episodes_alike(toy_run, tmp_path):
    _, imported = toy_import(toy_run, tmp_path / "imported")
    collected = ChunkTable.load(toy_run / "chunks.safetensors")
    # train-critic splits by task name; give both tables the instruction as the name so both critics see the same
    # training/validation episodes and any difference comes from the data
    collected.episodes = [dict(e, task=e["description"]) for e in collected.episodes]
    held = [e for e, ep in enumerate(collected.episodes) if ep["seed"] >= N_SEEDS - N_SEEDS // 4]
    train = [e for e in range(len(collected.episodes)) if e not in held]
    # binary target: with 48 training episodes the success-to-go critic's early-stopping epoch is fragile; its
    # labels (steps_to_success) are compared exactly above
    cfg = CriticTrainConfig(target="binary", features=("state",), hidden=(64, 64), batch_size=32, lr=1e-3, epochs=60,
                            patience=10, report_fraction=0.0, seed=0)
    episode_values, aucs = [], []
    for table in (collected, imported):
        critic, _, _ = train_critic(table.select(rows_of(table, train)), cfg, progress=False)
        rows = rows_of(table, held)
        values = critic_values(critic, table, rows).mean(0)
        aucs.append(roc_auc(values.numpy(), table.success[rows].numpy()))
        episode_values.append([float(values[table.episode[rows] == e].mean()) for e in held])
    assert aucs[0] > 0.6 and abs(aucs[0] - aucs[1]) < 0.05
    assert spearmanr(*episode_values).statistic > 0.9


def test_episode_labels_from_a_file_or_an_episode_column_match_the_per_frame_labels(toy_run, tmp_path):
    # gaflow's episodes stop at the first success, so placing success at the episode's end is exact here
    _, frame_labels = toy_import(toy_run, tmp_path / "frames")
    outcomes = {e: ep["success"] for e, ep in enumerate(frame_labels.episodes)}
    (tmp_path / "labels.json").write_text(json.dumps({str(e): ok for e, ok in outcomes.items()}))
    (tmp_path / "labels.csv").write_text("episode_index,success\n" + "".join(f"{e},{int(ok)}\n"
                                                                           for e, ok in outcomes.items()))
    runs = {"json": {"labels": str(tmp_path / "labels.json")}, "csv": {"labels": str(tmp_path / "labels.csv")},
            "column": {"success_key": "episode.success"}}
    sources = {"json": f"file:{tmp_path / 'labels.json'}", "csv": f"file:{tmp_path / 'labels.csv'}",
               "column": "column:episode.success"}
    for name, kw in runs.items():
        summary, table = toy_import(toy_run, tmp_path / name, **kw)
        assert summary["labels"] == sources[name]
        for col in LABELS:
            assert torch.equal(getattr(table, col), getattr(frame_labels, col)), (name, col)


def test_flipped_file_label_relabels_the_episode(toy_run, tmp_path):
    ref = ChunkTable.load(toy_run / "chunks.safetensors")
    win = next(e for e, ep in enumerate(ref.episodes) if ep["success"])
    labels = {str(e): bool(ep["success"]) for e, ep in enumerate(ref.episodes)}
    labels[str(win)] = False
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    _, table = toy_import(toy_run, tmp_path / "out", labels=str(tmp_path / "labels.json"))
    rows = table.episode == win
    assert (table.success[rows] == 0).all() and (table.steps_to_success[rows] == -1).all()
    assert not table.episodes[win]["success"] and table.episodes[win]["first_success_step"] is None


def test_a_resumed_import_encodes_only_missing_episodes_and_equals_a_fresh_one(toy_run, tmp_path):
    out = tmp_path / "out"
    _, fresh = toy_import(toy_run, out)
    (out / "episodes" / "5.safetensors").unlink()
    (out / "episodes" / "9.safetensors").write_bytes(b"truncated by a crash")
    (out / "chunks.safetensors").unlink()
    summary, resumed = toy_import(toy_run, out)
    assert summary["imported_now"] == 2
    for name in (*LABELS, "chunk"):
        assert torch.equal(getattr(resumed, name), getattr(fresh, name)), name
    assert torch.equal(resumed.features["state"], fresh.features["state"])
    with pytest.raises(ValueError, match="n_action_steps"):  # one folder, one job
        import_rollouts(ImportConfig(dataset=str(toy_run / "dataset"), policy=TOY_POLICY, n_action_steps=2), out,
                        progress=False)


def test_only_the_chosen_episodes_are_imported(toy_run, tmp_path):
    summary, table = toy_import(toy_run, tmp_path / "out", episodes=[3, 40])
    assert summary["episodes"] == 2 and [e["episode_index"] for e in table.episodes] == [3, 40]
    assert [e["seed"] for e in table.episodes] == [3, 40 - N_SEEDS]


# ----------------------------------------------------------------------------------------------- errors
def test_missing_labels_name_the_file_or_episode(toy_run, tmp_path):
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"0": True, "1": False}))
    with pytest.raises(ValueError, match=r"partial\.json has no label for 62 episode\(s\).*\[2, 3, 4"):
        toy_import(toy_run, tmp_path / "a", labels=str(partial))
    bad = tmp_path / "bad.csv"
    bad.write_text("episode_index,success\n0,maybe\n")
    with pytest.raises(ValueError, match=r"bad\.csv line 2: success label 'maybe' is not a boolean"):
        toy_import(toy_run, tmp_path / "b", labels=str(bad))
    with pytest.raises(ValueError, match=r"success column 'next.reward' is not a feature of .*info\.json"):
        toy_import(toy_run, tmp_path / "c", success_key="next.reward")
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        toy_import(toy_run, tmp_path / "d", labels=str(tmp_path / "nowhere.json"))


def test_a_dataset_without_success_columns_asks_for_a_labels_file(tmp_path):
    from gaflow.data.writer import DatasetWriter
    from gaflow.envs.toy import env_info

    root = tmp_path / "unlabelled"
    with DatasetWriter(root, env_info("toy-reach"), columns=()) as writer:
        for _ in range(2):
            for t in range(4):
                writer.add_frame({"observation.state": np.full(4, t, np.float32),
                                  "observation.environment_state": np.zeros(4, np.float32),
                                  "action": np.zeros(2, np.float32), "task": "move the point to the goal"})
            writer.save_episode({})
    cfg = ImportConfig(dataset=str(root), policy=TOY_POLICY)
    with pytest.raises(ValueError, match=r"no success label: .*info\.json has neither 'next\.success' nor "
                                         r"'episode\.success'; pass --labels"):
        import_rollouts(cfg, tmp_path / "out", progress=False)
    (tmp_path / "labels.json").write_text(json.dumps({"0": True, "1": False}))
    summary = import_rollouts(ImportConfig(dataset=str(root), policy=TOY_POLICY, labels=str(tmp_path / "labels.json")),
                              tmp_path / "out", progress=False)
    table = ChunkTable.load(tmp_path / "out" / "chunks.safetensors")
    assert summary["success_rate"] == 0.5
    # episode 0's success is placed at its last frame: steps_to_success = length − step
    assert table.steps_to_success[table.episode == 0].tolist() == [4 - s for s in table.step[table.episode == 0]]


def test_a_dataset_lacking_a_policy_input_names_the_key(tmp_path):
    from gaflow.data.writer import DatasetWriter
    from gaflow.envs.toy import env_info

    root = tmp_path / "no_state"
    info = env_info("toy-reach").select(["observation.environment_state"])
    with DatasetWriter(root, info, columns=("next.success",)) as writer:
        for t in range(3):
            writer.add_frame({"observation.environment_state": np.zeros(4, np.float32),
                              "action": np.zeros(2, np.float32), "next.success": t == 2, "task": "reach"})
        writer.save_episode({})
    with pytest.raises(ValueError, match=r"cannot compute its critic features from .*no_state episode 0 \(frame 0\): "
                                         r"it needs 'observation\.state'; the dataset gives it "
                                         r"observation\.environment_state, task"):
        import_rollouts(ImportConfig(dataset=str(root), policy=TOY_POLICY), tmp_path / "out", progress=False)


def test_mismatched_action_dims_and_a_policy_without_an_action_normaliser_are_refused(toy_run, tmp_path):
    from gaflow.policies.gaussian import GaussianFlowPolicy
    from gaflow.policies.toy import ToyReachPolicy
    from gaflow.protocol import PolicySpec

    wide = ToyReachPolicy()
    wide.spec = PolicySpec(6, 3, 3, "lerobot")  # a policy acting in 3 dims, the dataset's actions have 2
    with pytest.raises(ValueError, match=r"info\.json: 'action' has shape \(2,\), but policy wide acts in 3 dim"):
        import_rollouts(ImportConfig(dataset=str(toy_run / "dataset"), policy="wide"), tmp_path / "a",
                        progress=False, policy=wide)
    plain = GaussianFlowPolicy(PolicySpec(6, 2, 2, "lerobot"))
    with pytest.raises(ValueError, match="has no normalize_actions"):
        import_rollouts(ImportConfig(dataset=str(toy_run / "dataset"), policy="gauss"), tmp_path / "b",
                        progress=False, policy=plain)


def test_cli_imports_and_reports_a_mistake_in_one_line(toy_run, tmp_path):
    res = CliRunner().invoke(app, ["import-rollouts", "--dataset", str(toy_run / "dataset"), "--policy", TOY_POLICY,
                                   "--out", str(tmp_path / "out"), "--n-action-steps", "3", "--episodes", "0-3"])
    assert res.exit_code == 0, res.output
    assert "import-rollouts: 4 episodes" in res.output
    assert len(ChunkTable.load(tmp_path / "out" / "chunks.safetensors").episodes) == 4
    res = CliRunner().invoke(app, ["import-rollouts", "--dataset", str(toy_run / "dataset"), "--policy", TOY_POLICY,
                                   "--out", str(tmp_path / "bad"), "--episodes", "3-1"])
    assert res.exit_code == 2 and "error: --episodes '3-1': bad episode range '3-1'" in res.output


def test_critic_report_strength_check_on_an_imported_folder_says_it_needs_collects_files(toy_run, tmp_path):
    from gaflow.evaluation.critic_check import critic_report_with_strength
    from gaflow.guidance import GuidanceConfig

    toy_import(toy_run, tmp_path / "imported")
    train_critic(ChunkTable.load(tmp_path / "imported" / "chunks.safetensors"),
                 CriticTrainConfig(features=("state",), epochs=1, members=1), out_dir=tmp_path / "critic",
                 progress=False)
    with pytest.raises(ValueError, match=r"written by `gaflow import-rollouts`.*without --policy"):
        critic_report_with_strength(tmp_path / "critic", tmp_path / "imported", tmp_path / "report",
                                    policy_spec=TOY_POLICY, guidance_cfg=GuidanceConfig())


# ----------------------------------------------------------------------------------------------- MetaWorld
@pytest.mark.slow
def test_importing_a_metaworld_collection_reencodes_images_to_the_same_features(tmp_path):
    pytest.importorskip("metaworld")
    run = tmp_path / "collect"
    collect(CollectConfig(policy="compact:builtin", env="metaworld", tasks=["push"], seeds=[0, 1], max_steps=24),
            run, workers=1, progress=False)
    ref = ChunkTable.load(run / "chunks.safetensors")
    import_rollouts(ImportConfig(dataset=str(run / "dataset"), policy="compact:builtin"), tmp_path / "imported",
                    progress=False)
    table = ChunkTable.load(tmp_path / "imported" / "chunks.safetensors")
    for name in LABELS:
        assert torch.equal(getattr(table, name), getattr(ref, name)), name
    assert {"observation", "image", "task", "state"} <= set(table.features) == set(ref.features)
    for key in table.features:  # images were stored losslessly; the CNN sees the same pixels
        torch.testing.assert_close(table.features[key], ref.features[key], atol=1e-5, rtol=1e-5)
    n = int(table.executed.max())  # the executed steps: normalise(unnormalise(chunk)) = chunk
    torch.testing.assert_close(table.chunk[:, :n], ref.chunk[:, :n], atol=1e-5, rtol=1e-5)

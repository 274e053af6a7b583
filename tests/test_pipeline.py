"""`gaflow demo` end to end at a tiny size on MetaWorld (plumbing; the numbers mean nothing at this size)."""

import json

from rich.console import Console

from gaflow.evaluation.splits import DEFAULT_SPLITS
from gaflow.experiments import preset
from gaflow.pipeline import run_pipeline


def test_tiny_demo_pipeline_runs_end_to_end_and_resumes(tmp_path):
    cfg = preset("tiny", workers=1)
    console = Console(quiet=True)
    out = run_pipeline(cfg, tmp_path, console=console)
    for path in ("demos/meta/info.json", "policy/model.safetensors", "collect/chunks.safetensors",
                 "collect/dataset/meta/info.json", "critic/critic.json", "critic/report/critic_report.png",
                 "sweep/locked.json", "test/report.md", "test/metrics.json", "test/success_by_task.png"):
        assert (tmp_path / path).exists(), path
    metrics = json.loads((tmp_path / "test" / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["locked"]["split"] == "validation"
    assert set(metrics["pooled"]) == {"unguided", "guided", "zero", "random"}
    assert metrics["unpaired_episodes"] == []
    sweep_seeds = json.loads((tmp_path / "sweep" / "locked.json").read_text())["seeds"]
    assert all(DEFAULT_SPLITS.which(s) == "validation" for s in sweep_seeds)
    assert metrics["pooled"]["zero"]["successes"] == metrics["pooled"]["unguided"]["successes"]
    # a second run resumes: every stage is found complete and the result is unchanged
    again = run_pipeline(cfg, tmp_path, console=console)
    assert again["metrics"]["pooled"]["unguided"] == out["metrics"]["pooled"]["unguided"]


def test_heldout_task_critic_is_trained_without_those_tasks_and_tested_only_on_them(tmp_path):
    cfg = preset("toy", critic_episodes=40, validation_episodes=20, test_episodes=30, critic_epochs=10,
                 heldout_tasks=["toy-reach-far"], workers=1)
    out = run_pipeline(cfg, tmp_path, console=Console(quiet=True))
    info = json.loads((tmp_path / "critic_heldout" / "critic.json").read_text())
    assert info["config"]["held_out_tasks"] == ["toy-reach-far"] and info["split"]["held_out"]
    from gaflow.critic.data import ChunkTable

    table = ChunkTable.load(tmp_path / "collect" / "chunks.safetensors")
    trained_on = {table.episodes[e]["task"] for e in info["split"]["train"] + info["split"]["validation"]}
    assert trained_on == {"toy-reach"}
    metrics = json.loads((tmp_path / "test_heldout" / "metrics.json").read_text())
    assert set(metrics["per_task"]) == {"toy-reach-far"} and set(metrics["pooled"]) == {"unguided", "guided"}
    assert metrics["split"] == "test" and metrics["critic_trained_without"] == ["toy-reach-far"]
    # the held-out arms run at the strength the main sweep locked, under a lock bound to the held-out critic, on
    # test seeds the main test stage never read (each test episode is read once)
    h_lock = json.loads((tmp_path / "sweep_heldout" / "locked.json").read_text())
    main_choice = out["locked"]["guidance"] or max(out["locked"]["candidates"], key=lambda r: r["lcb"])["config"]
    assert h_lock["guidance"] == main_choice and h_lock["rule"].startswith("fixed")
    assert metrics["config"]["arms"][1]["guidance"]["relative"] == main_choice["relative"]
    assert h_lock["binding"]["tasks"] == ["toy-reach-far"] and h_lock["critic"].endswith("critic_heldout")
    main = json.loads((tmp_path / "test" / "metrics.json").read_text())
    assert not set(metrics["config"]["seeds"]) & set(main["config"]["seeds"])
    assert metrics["test_read"]["read_index"] == 1 and main["test_read"]["read_index"] == 1
    assert 0.0 <= out["heldout"]["critic_auc_unseen"]["toy-reach-far"] <= 1.0


def test_heldout_tasks_must_be_pipeline_tasks_and_leave_one_to_train_on():
    import pytest

    with pytest.raises(ValueError, match="heldout_tasks"):
        preset("toy", heldout_tasks=["push"])
    with pytest.raises(ValueError, match="every task"):
        preset("toy", heldout_tasks=["toy-reach", "toy-reach-far"])


def test_overriding_tasks_keeps_only_heldout_tasks_among_them():
    assert preset("libero", tasks=["0"]).heldout_tasks == []  # single-task LIBERO: no held-out stage
    assert preset("libero", tasks=["0", "5"]).heldout_tasks == ["5"]
    assert preset("libero", tasks=["0", "5"], heldout_tasks=[]).heldout_tasks == []
    assert preset("study").heldout_tasks == ["push-wall", "shelf-place"]


def test_demo_command_passes_grid_and_critic_features_and_rejects_bad_ones(tmp_path, monkeypatch):
    import pytest
    from typer.testing import CliRunner

    import gaflow.pipeline
    from gaflow.cli import app

    seen = {}
    monkeypatch.setattr(gaflow.pipeline, "run_pipeline", lambda cfg, out, **kw: seen.update(cfg=cfg, out=out, **kw))
    res = CliRunner().invoke(app, ["demo", "--preset", "libero", "--tasks", "0", "--grid", "0.2, 0.8",
                                   "--critic-features", "observation,env_state", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert seen["cfg"].grid == [0.2, 0.8] and seen["cfg"].critic_features == ["observation", "env_state"]
    assert seen["cfg"].tasks == ["0"] and seen["out"] == tmp_path
    res = CliRunner().invoke(app, ["demo", "--preset", "toy", "--grid", "0.2,strong", "--out", str(tmp_path)])
    assert res.exit_code != 0 and "--grid" in res.output
    with pytest.raises(ValueError, match="grid"):
        preset("toy", grid=[0.0])

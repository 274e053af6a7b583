"""`gaflow demo` end to end at a tiny size on MetaWorld (plumbing; the numbers mean nothing at this size)."""

import json

from rich.console import Console

from gaflow.evaluation.splits import DEFAULT_SPLITS
from gaflow.pipeline import preset, run_pipeline


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

"""``gaflow demo`` — the whole pipeline on an embedded default, resumable."""

from __future__ import annotations

from pathlib import Path

import typer

from gaflow.cli import app


@app.command()
def demo(
    preset: str = typer.Option("default", help="toy (minutes, no simulator) | tiny (CI plumbing) | default (shipped policy, ≤20 min) | scratch (demos + training) | study (six tasks, held-out-task critic) | libero (LIBERO study) | libero-tiny"),
    out: Path = typer.Option(None, help="run folder (default: runs/demo-<preset>); re-running resumes"),
    tasks: str = typer.Option(None, help="override the preset's tasks (comma-separated)"),
    heldout_tasks: str = typer.Option(None, help="tasks for a second critic that never sees them (comma-separated; "
                                      "'' for none; default: the preset's, if among the tasks)"),
    policy: str = typer.Option(None, help="use this base policy instead of training one (e.g. compact:<dir>)"),
    test_episodes: int = typer.Option(None, help="locked test episodes per task"),
    validation_episodes: int = typer.Option(None, help="validation episodes per task (the sweep)"),
    critic_episodes: int = typer.Option(None, help="rollouts per task for the critic"),
    workers: int = typer.Option(None, help="worker processes"),
) -> None:
    """Demonstrations → base policy → rollouts → critic → validation sweep → locked test evaluation → report."""
    from gaflow.pipeline import preset as make_preset
    from gaflow.pipeline import run_pipeline

    held = None if heldout_tasks is None else [t.strip() for t in heldout_tasks.split(",") if t.strip()]
    cfg = make_preset(preset, tasks=[t.strip() for t in tasks.split(",")] if tasks else None, policy=policy,
                      heldout_tasks=held,
                      test_episodes=test_episodes, validation_episodes=validation_episodes,
                      critic_episodes=critic_episodes, workers=workers)
    run_pipeline(cfg, out or Path("runs") / f"demo-{preset}")

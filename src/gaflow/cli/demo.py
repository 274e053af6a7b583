"""``gaflow demo`` — the whole pipeline on an embedded default, resumable."""

from __future__ import annotations

from pathlib import Path

import typer

from gaflow.cli import BACKEND_HELP, RAY_ADDRESS_HELP, app, comma_list


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
    grid: str = typer.Option(None, help="relative strengths ρ tried on validation (comma-separated, e.g. 0.2,0.4)"),
    critic_features: str = typer.Option(None, help="policy features the critic reads (comma-separated, e.g. "
                                        "observation,task,state,env_state)"),
    workers: int = typer.Option(None, help="worker processes"),
    force_reread: bool = typer.Option(False, help="read test episodes an earlier run already read (the report says "
                                                  "so); otherwise refused"),
    backend: str = typer.Option("local", help=BACKEND_HELP),
    ray_address: str = typer.Option(None, help=RAY_ADDRESS_HELP),
) -> None:
    """Demonstrations → base policy → rollouts → critic → validation sweep → locked test evaluation → report."""
    from gaflow.experiments import preset as make_preset
    from gaflow.pipeline import run_pipeline
    from gaflow.runtime.executor import make_executor

    def given(text: str | None) -> list[str] | None:  # None: keep the preset's value
        return None if text is None else comma_list(text)

    try:
        rhos = None if grid is None else [float(r) for r in comma_list(grid)]
    except ValueError:
        raise typer.BadParameter(f"--grid must be comma-separated numbers, got {grid!r}") from None
    cfg = make_preset(preset, tasks=comma_list(tasks) or None, policy=policy, heldout_tasks=given(heldout_tasks),
                      test_episodes=test_episodes, validation_episodes=validation_episodes,
                      critic_episodes=critic_episodes, workers=workers, grid=rhos,
                      critic_features=given(critic_features))
    run_pipeline(cfg, out or Path("runs") / f"demo-{preset}", force_reread=force_reread,
                 executor=make_executor(cfg.workers, backend, ray_address))

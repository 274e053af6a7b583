"""``gaflow libero-demos`` — scripted-expert demonstrations of LIBERO tasks as a LeRobotDataset (v3).

The recording itself is :mod:`gaflow.demos.libero` (episode naming, features, atomic writing); this module only
turns flags into a :class:`~gaflow.demos.libero.LiberoDemoConfig` and prints the summary.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from gaflow.cli import app


def _parse_tasks(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter(f"--tasks must be comma-separated integers, got {text!r}") from None


@app.command("libero-demos")
def libero_demos(
    suite: str = typer.Option("libero_spatial", help="libero_spatial | libero_object | libero_goal | ..."),
    tasks: str = typer.Option("0,1", help="comma-separated task ids"),
    episodes_per_task: int = typer.Option(20, help="episodes per task (cycling through the init states)"),
    inits: str = typer.Option(None, help="init-state indices to use, e.g. 0-24 (default and limit: the critic "
                              "split's 0-24; validation/test inits of LIBERO_SPLITS are refused)"),
    noise: float = typer.Option(0.3, help="Gaussian action-noise σ added to the expert"),
    noise_seed: int = typer.Option(0, help="base noise seed"),
    out: Path = typer.Option(Path("data/libero_demos"), help="dataset folder (LeRobotDataset v3)"),
    cameras: bool = typer.Option(False, "--cameras", help="record agentview + wrist images (slow: ~40 s/episode)"),
    image_size: int = typer.Option(128, help="image height = width"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing dataset"),
) -> None:
    """Record scripted-expert demonstrations of LIBERO pick-and-place tasks as a LeRobotDataset."""
    from gaflow.demos.libero import LiberoDemoConfig, record_libero_demos
    from gaflow.evaluation.splits import parse_seeds

    console = Console()
    cfg = LiberoDemoConfig(suite=suite, tasks=_parse_tasks(tasks), episodes_per_task=episodes_per_task,
                           noise=noise, noise_seed=noise_seed, out=out,
                           inits=tuple(parse_seeds(inits)) if inits else None, cameras=cameras, image_size=image_size,
                           overwrite=overwrite)
    try:
        summary = record_libero_demos(cfg, console)
    except (ValueError, FileExistsError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    console.print(
        f"[bold]libero-demos[/bold]: {summary['episodes']} episodes ({summary['successes']} successful), "
        f"{summary['frames']} frames → {summary['out']} in {summary['seconds']:.0f} s"
    )


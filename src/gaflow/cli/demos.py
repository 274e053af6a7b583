"""``gaflow demos`` — record scripted MetaWorld demonstrations as a LeRobotDataset v3.

The recording is :mod:`gaflow.demos.metaworld`; this module turns flags into a
:class:`~gaflow.demos.metaworld.DemoConfig`, draws the progress bar and prints the per-task table.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from gaflow.cli import app, comma_list


@app.command()
def demos(
    tasks: str = typer.Option("push,pick-place", help="comma-separated MetaWorld v3 tasks (push or push-v3)"),
    episodes_per_task: int = typer.Option(50, help="episodes per task; seeds seed_start … seed_start+N−1"),
    noise: float = typer.Option(0.3, help="σ of Gaussian noise added to the expert action (then clipped to [−1, 1])"),
    seed_start: int = typer.Option(0, help="first episode seed"),
    out: Path = typer.Option(Path("data/demos"), help="dataset folder to create"),
    image_size: int = typer.Option(84, help="side of the square camera image"),
    max_steps: int | None = typer.Option(None, help="step cap per episode (default: the task's own cap)"),
    camera: str = typer.Option("corner4", help="MetaWorld camera"),
    steps_after_success: int = typer.Option(10, help="steps recorded after the first success"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing dataset at --out"),
) -> None:
    """Run MetaWorld's scripted expert with action noise and write a LeRobotDataset v3 (images in parquet)."""
    from gaflow.demos.metaworld import DemoConfig, write_demos

    cfg = DemoConfig(
        tasks=comma_list(tasks),
        episodes_per_task=episodes_per_task,
        noise=noise,
        seed_start=seed_start,
        out=out,
        image_size=image_size,
        max_steps=max_steps,
        camera=camera,
        steps_after_success=steps_after_success,
        overwrite=overwrite,
    )
    console = Console()
    t0 = time.perf_counter()
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TimeRemainingColumn(), console=console) as progress:
            records = write_demos(cfg, progress=progress)
    except (FileExistsError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=2) from None
    elapsed = time.perf_counter() - t0
    by_task = defaultdict(list)
    for r in records:
        by_task[r.task].append(r)
    table = Table(title=f"demonstrations σ={cfg.noise} → {cfg.out}")
    for col in ("task", "episodes", "success", "mean length", "frames"):
        table.add_column(col)
    for task, rs in by_task.items():
        n_ok = sum(r.success for r in rs)
        frames = sum(r.length for r in rs)
        table.add_row(task, str(len(rs)), f"{n_ok}/{len(rs)} ({100 * n_ok / len(rs):.0f}%)",
                      f"{frames / len(rs):.1f}", str(frames))
    console.print(table)
    frames = sum(r.length for r in records)
    console.print(f"wrote {len(records)} episodes, {frames} frames in {elapsed:.1f} s "
                  f"({frames / elapsed:.1f} frames/s) to {cfg.out}")

"""``gaflow import-rollouts`` — critic training data from a recorded LeRobotDataset v3 (e.g. a real robot's)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from gaflow.cli import app


@app.command("import-rollouts")
def import_rollouts_cmd(
    dataset: Path = typer.Option(..., help="LeRobotDataset v3 folder (recorded episodes: observations + actions)"),
    policy: str = typer.Option(..., help="the frozen base policy to re-encode them with: compact:<dir>, "
                                         "lerobot:<dir>, toy:default"),
    out: Path = typer.Option(..., help="output folder, trained on like a collect folder (re-running resumes it)"),
    labels: Path = typer.Option(None, help="JSON {\"<episode_index>\": true|false} or CSV 'episode_index,success' "
                                           "(default: the dataset's next.success, else episode.success)"),
    success_key: str = typer.Option(None, help="dataset column holding success (per frame, or 'episode.*' per "
                                               "episode)"),
    n_action_steps: int = typer.Option(None, help="frames between chunk starts (default: the policy's)"),
    episodes: str = typer.Option(None, help="episode indices to import, e.g. '0-49,60' (default: all)"),
    batch_size: int = typer.Option(32, help="frames encoded per policy call"),
) -> None:
    """Re-encode DATASET's episodes with POLICY and write a chunk table (features, normalised action chunks,
    success labels) to OUT for `gaflow train-critic`."""
    from gaflow.evaluation.splits import parse_seeds
    from gaflow.importing import ImportConfig, import_rollouts

    try:
        episode_list = parse_seeds(episodes) if episodes else None  # the same 'a-b,c' ranges as --seeds
    except ValueError as e:
        raise ValueError(f"--episodes {episodes!r}: {str(e).replace('seed', 'episode')}") from None
    cfg = ImportConfig(dataset=str(dataset), policy=policy, labels=str(labels) if labels else None,
                       success_key=success_key, n_action_steps=n_action_steps, episodes=episode_list)
    s = import_rollouts(cfg, out, batch_size=batch_size)
    Console().print(f"[bold]import-rollouts[/bold]: {s['episodes']} episodes ({s['imported_now']} encoded now), "
                    f"success {s['success_rate']:.1%} ({s['labels']}), {s['chunks']} chunks every "
                    f"{s['n_action_steps']} frames, {s['seconds']:.1f} s → {out}")

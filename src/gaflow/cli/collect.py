"""``gaflow collect`` — record labelled rollouts of a base policy (the critic's training data)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from gaflow.cli import BACKEND_HELP, RAY_ADDRESS_HELP, app, comma_list, read_json_file


@app.command()
def collect(
    policy: str = typer.Option(..., help="base policy: compact:<dir>, lerobot:<hub id or dir>, toy:default"),
    out: Path = typer.Option(..., help="output folder (re-running the same command resumes it)"),
    tasks: str = typer.Option(..., help="comma-separated task names (LIBERO: task ids)"),
    seeds: str = typer.Option("critic:100", help="'<split>:<count>' (demos/critic/validation/test) or '0-99,120'"),
    env: str = typer.Option("metaworld", help="metaworld | libero:<suite> | toy"),
    guidance: Path = typer.Option(None, help="guidance config JSON (collect guided rollouts); needs --critic"),
    critic: Path = typer.Option(None, help="critic folder for guided collection or best-of-N"),
    n_action_steps: int = typer.Option(None, help="actions executed per chunk (default: the policy's)"),
    num_steps: int = typer.Option(None, help="flow steps (default: the policy's)"),
    num_candidates: int = typer.Option(1, help="chunks sampled per observation"),
    select: str = typer.Option("first", help="first | best (best-of-N by the critic)"),
    noise_seed: int = typer.Option(0, help="seed of the per-episode policy-noise streams"),
    image_size: int = typer.Option(None, help="camera image size (default: the policy's)"),
    max_steps: int = typer.Option(None, help="episode step cap (default: the env's)"),
    workers: int = typer.Option(2, help="worker processes (each single-threaded)"),
    images: bool = typer.Option(True, help="keep camera images in the dataset"),
    dataset: bool = typer.Option(True, help="also write a LeRobotDataset v3 of the executed frames"),
    backend: str = typer.Option("local", help=BACKEND_HELP),
    ray_address: str = typer.Option(None, help=RAY_ADDRESS_HELP),
) -> None:
    """Run POLICY on (task, seed) episodes and write episodes, a chunk table and a LeRobotDataset to OUT."""
    from gaflow.collect import CollectConfig
    from gaflow.collect import collect as run_collect
    from gaflow.evaluation.splits import resolve_seeds, split_for_env
    from gaflow.runtime.executor import make_executor

    seed_list, split_name = resolve_seeds(seeds, split_for_env(env))
    cfg = CollectConfig(
        policy=policy, env=env, tasks=comma_list(tasks), seeds=seed_list,
        guidance=read_json_file(guidance, "--guidance") if guidance else None, critic=str(critic) if critic else None,
        n_action_steps=n_action_steps, num_steps=num_steps, num_candidates=num_candidates, select=select,
        noise_seed=noise_seed, image_size=image_size, max_steps=max_steps, record_images=images,
    )
    summary = run_collect(cfg, out, workers=workers, write_dataset=dataset,
                          executor=make_executor(workers, backend, ray_address))
    Console().print(f"[bold]collect[/bold]: {summary['episodes']} episodes ({summary['collected_now']} run now, "
                    f"split '{split_name}'), success {summary['success_rate']:.1%}, {summary['chunks']} chunks, "
                    f"{summary['seconds']:.1f} s → {out}")

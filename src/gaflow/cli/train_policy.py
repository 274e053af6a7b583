"""``gaflow train-policy`` and ``gaflow eval-policy`` — the built-in compact flow policy.

train-policy: load the demos into memory → build the policy (normaliser from the frames) → flow-matching loop with a
progress bar → atomic checkpoints under ``<out>/checkpoints`` → final policy at ``<out>``.
eval-policy: unguided receding-horizon rollouts of a saved policy on MetaWorld tasks × seeds → per-task success
with a Wilson 95 % interval.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from gaflow.cli import BACKEND_HELP, RAY_ADDRESS_HELP, app, comma_list


@app.command("train-policy")
def train_policy_cmd(
    dataset: Path = typer.Option(Path("data/demos"), help="LeRobotDataset v3 folder of demonstrations; "
                                 "'a,b::push+pick-place' joins folders and keeps only those tasks of b "
                                 "(MetaWorld names or task strings)"),
    out: Path = typer.Option(Path("runs/policy"), help="run folder (checkpoints + final policy)"),
    steps: int = typer.Option(20_000, help="total optimiser steps"),
    batch_size: int = typer.Option(64, help="observations per step"),
    flow_samples: int = typer.Option(4, help="(noise, t) draws per observation per step"),
    lr: float = typer.Option(3e-4, help="peak AdamW learning rate (warm-up, then cosine decay)"),
    weight_decay: float = typer.Option(1e-4),
    warmup_steps: int = typer.Option(500),
    checkpoint_every: int = typer.Option(1000, help="steps between atomic checkpoints"),
    resume: bool = typer.Option(False, help="continue from <out>/checkpoints/LATEST"),
    seed: int = typer.Option(0),
    num_threads: int = typer.Option(2, help="torch CPU threads"),
    max_episodes_per_task: int = typer.Option(None, help="use only the first k episodes of each task"),
    successful_only: bool = typer.Option(False, help="train only on episodes that succeeded"),
    chunk_len: int = typer.Option(8, help="H, actions per chunk"),
    n_action_steps: int = typer.Option(4, help="default actions executed per chunk at rollout time"),
    text_encoder: str = typer.Option("minilm", help="minilm (frozen all-MiniLM-L6-v2) | hashed"),
    use_image: bool = typer.Option(True, help="condition on the camera image"),
    use_env_state: bool = typer.Option(False, help="also condition on the privileged 39-d simulator state"),
    image_size: int = typer.Option(84, help="image side the dataset and env use"),
    hidden_dim: int = typer.Option(256, help="context and action-expert width"),
    expert_layers: int = typer.Option(2, help="FiLM residual blocks in the action expert"),
    augment_shift: int = typer.Option(4, help="random-shift augmentation in pixels (0 = off)"),
    state_std_floor: float = typer.Option(0.0, help="floor on the state normaliser's std (LIBERO: 0.01 — objects the "
                                          "expert never touches barely move in the demonstrations)"),
    progress: bool = typer.Option(True, help="show the progress bar"),
) -> None:
    """Train the compact flow policy on a demonstrations dataset (flow matching, LeRobot time convention)."""
    from gaflow.policies.compact import CompactPolicyConfig
    from gaflow.policies.compact.train import TrainConfig, Trainer

    console = Console()
    pcfg = CompactPolicyConfig(
        chunk_len=chunk_len, n_action_steps=n_action_steps, text_encoder=text_encoder, use_image=use_image,
        use_env_state=use_env_state, image_size=image_size, hidden_dim=hidden_dim, expert_layers=expert_layers,
        augment_shift=augment_shift,
    )
    cfg = TrainConfig(
        dataset=str(dataset), out=str(out), steps=steps, batch_size=batch_size, flow_samples=flow_samples, lr=lr,
        weight_decay=weight_decay, warmup_steps=warmup_steps, checkpoint_every=checkpoint_every, resume=resume,
        seed=seed, num_threads=num_threads, max_episodes_per_task=max_episodes_per_task,
        successful_only=successful_only, progress=progress, policy=pcfg, state_std_floor=state_std_floor,
    )
    trainer = Trainer(cfg, describe_task=metaworld_task_string)
    f = trainer.frames
    console.print(f"dataset {f.root}: {len(f)} frames, {f.num_episodes} episodes, tasks {f.tasks}")
    console.print(f"policy: {trainer.policy.num_parameters():,} parameters; starting at step {trainer.step}")
    trainer.run()
    console.print(f"[bold]train-policy[/bold]: step {trainer.step}, final loss {trainer.log[-1]['loss']:.4f}; "
                  f"policy saved to {out}")


def metaworld_task_string(name: str) -> str:
    """The task string MetaWorld demos store for task ``name`` (``"push"`` or ``"push-v3"``), so a ``--dataset``
    filter can say ``demos::push``; raises ``ValueError`` on a name MetaWorld does not know."""
    from gaflow.envs.metaworld import TASK_DESCRIPTIONS, task_name

    return TASK_DESCRIPTIONS[task_name(name)]


@app.command("eval-policy")
def eval_policy_cmd(
    policy: Path = typer.Option(Path("runs/policy"), help="policy folder (or run folder)"),
    tasks: str = typer.Option("push", help="comma-separated MetaWorld tasks"),
    seeds: str = typer.Option("1000-1049", help="episode seeds, e.g. 1000-1049 or 1,2,5"),
    n_action_steps: int = typer.Option(None, help="actions executed per chunk (default: the policy's)"),
    num_steps: int = typer.Option(None, help="flow steps (default: the policy's)"),
    noise_seed: int = typer.Option(0, help="policy-noise seed shared by arms"),
    camera: str = typer.Option(None, help="MetaWorld camera (default: the env's default)"),
    max_steps: int = typer.Option(None, help="step cap (default: the env's per-task default)"),
    workers: int = typer.Option(1, help="episode worker processes"),
    out: Path = typer.Option(None, help="write per-episode summaries to this JSON file"),
    force_reread: bool = typer.Option(False, help="read test seeds an earlier run already read; otherwise refused"),
    backend: str = typer.Option("local", help=BACKEND_HELP),
    ray_address: str = typer.Option(None, help=RAY_ADDRESS_HELP),
) -> None:
    """Unguided success of a saved compact policy, per task, with Wilson 95 % intervals."""
    from gaflow.evaluation.policy import evaluate_policy
    from gaflow.evaluation.splits import parse_seeds
    from gaflow.evaluation.stats import wilson_interval
    from gaflow.io import atomic_write_json
    from gaflow.runtime.executor import make_executor

    task_list = comma_list(tasks)
    seed_list = parse_seeds(seeds)
    results = evaluate_policy(str(policy), task_list, seed_list, n_action_steps=n_action_steps,
                              num_steps=num_steps, noise_seed=noise_seed, camera=camera, max_steps=max_steps,
                              workers=workers, force_reread=force_reread,
                              executor=make_executor(workers, backend, ray_address))
    table = Table(title=f"{policy}: unguided success, seeds {seeds}")
    for col in ("task", "success", "n", "rate", "Wilson 95% CI", "mean length", "ms/chunk"):
        table.add_column(col)
    for task, eps in results.items():
        k, n = sum(e["success"] for e in eps), len(eps)
        lo, hi = wilson_interval(k, n)
        mean_len = sum(e["length"] for e in eps) / max(1, n)
        ms = 1000 * sum(e["mean_latency_s"] for e in eps) / max(1, n)
        table.add_row(task, str(k), str(n), f"{k / max(1, n):.0%}", f"[{lo:.0%}, {hi:.0%}]", f"{mean_len:.0f}",
                      f"{ms:.1f}")
    Console().print(table)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out, results, indent=1)

"""``gaflow train-critic`` and ``gaflow critic-report``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from gaflow.cli import app, comma_list, read_json_file


@app.command("train-critic")
def train_critic_cmd(
    data: str = typer.Option(..., help="collect folder(s), comma-separated (their chunk tables are concatenated)"),
    out: Path = typer.Option(..., help="critic folder (critic.safetensors + critic.json)"),
    target: str = typer.Option("success_to_go", help="success_to_go (MSE) | binary (BCE) | iql"),
    arch: str = typer.Option("mlp", help="mlp | transformer"),
    features: str = typer.Option("observation,task,state", help="policy features the critic sees"),
    hidden: str = typer.Option("256,256", help="hidden sizes (mlp) / width (transformer: first entry / 4)"),
    members: int = typer.Option(3, help="ensemble size K"),
    epochs: int = typer.Option(40),
    batch_size: int = typer.Option(256),
    lr: float = typer.Option(3e-4),
    gamma: float = typer.Option(0.99, help="discount per env step for success-to-go / IQL"),
    val_fraction: float = typer.Option(0.2, help="fraction of episodes held out for early stopping"),
    report_fraction: float = typer.Option(0.2, help="fraction of episodes no training decision sees (critic-report's "
                                                     "AUC and calibration); 0 = none"),
    patience: int = typer.Option(6),
    held_out_tasks: str = typer.Option("", help="tasks excluded entirely (for evaluation on unseen tasks)"),
    seed: int = typer.Option(0),
) -> None:
    """Train an ensemble critic on collected rollouts (episode-level split, early stopping, best checkpoint)."""
    from gaflow.critic.data import ChunkTable
    from gaflow.critic.train import CriticTrainConfig, train_critic

    tables = [ChunkTable.load(Path(d) / "chunks.safetensors") for d in comma_list(data)]
    table = ChunkTable.concat(tables) if len(tables) > 1 else tables[0]
    cfg = CriticTrainConfig(target=target, arch=arch, features=comma_list(features),
                            hidden=tuple(int(h) for h in comma_list(hidden)), members=members, epochs=epochs,
                            batch_size=batch_size, lr=lr, gamma=gamma, val_fraction=val_fraction,
                            report_fraction=report_fraction, patience=patience,
                            held_out_tasks=comma_list(held_out_tasks), seed=seed)
    _, metrics, split = train_critic(table, cfg, out_dir=out)
    Console().print(f"[bold]train-critic[/bold]: best validation loss {metrics['best_val_loss']:.4f} at epoch "
                    f"{metrics['best_epoch']} ({metrics['train_chunks']} train / {metrics['validation_chunks']} "
                    f"validation chunks, {len(split.report)} report episodes, {len(split.held_out)} held-out-task "
                    f"episodes) → {out}")


@app.command("critic-report")
def critic_report_cmd(
    critic: Path = typer.Option(..., help="critic folder"),
    data: Path = typer.Option(..., help="collect folder to evaluate on"),
    out: Path = typer.Option(None, help="report folder (default: <critic>/report)"),
    policy: str = typer.Option(None, help="base policy, to measure guidance strength on real sampler states"),
    guidance: Path = typer.Option(None, help="guidance config JSON (default: clean_estimate, scale 1)"),
    new_data: bool = typer.Option(False, help="DATA was not used to train the critic: report on all of it"),
    max_states: int = typer.Option(128, help="observations re-sampled for the strength check"),
) -> None:
    """AUC, calibration and disagreement on episodes no training decision saw; guidance/velocity ratio on real
    states."""
    from gaflow.evaluation.critic_check import critic_report_with_strength
    from gaflow.guidance import GuidanceConfig

    gcfg = GuidanceConfig.from_dict(read_json_file(guidance, "--guidance")) if guidance else GuidanceConfig()
    out = out or critic / "report"
    rep = critic_report_with_strength(critic, data, out, policy_spec=policy, guidance_cfg=gcfg if policy else None,
                        max_states=max_states, same_data=not new_data)
    console = Console()
    console.print(f"quality measured on {rep['rows']}")
    t = Table(title="critic report")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k in ("n_episodes", "n_chunks", "success_fraction", "auc", "auc_first_chunk", "progress_spearman", "ece",
              "ensemble_std_mean"):
        v = rep[k]
        t.add_row(k, f"{v:.3f}" if isinstance(v, float) else str(v))
    for k, v in rep.get("ratio_quantiles", {}).items():
        t.add_row(f"‖Δv‖/‖v‖ {k}", f"{v:.3g}")
    console.print(t)
    if rep["quality_split"] == "validation_fallback":
        console.print("[bold yellow]note[/bold yellow]: this critic has no report split; the quality numbers come "
                      "from the validation episodes that chose its checkpoint (optimistic)")
    sz = rep["sizing"]
    if sz["enough"]:
        console.print(f"critic data: enough (AUC 95 % CI [{sz['auc_ci95'][0]:.2f}, {sz['auc_ci95'][1]:.2f}] on "
                      f"{sz['report_episodes']} held-out episodes)")
    else:
        console.print(f"[bold yellow]critic data: not enough to trust a sweep[/bold yellow] — "
                      f"{'; '.join(sz['reasons'])}; about {sz['suggested_episodes_per_task']} episodes per task "
                      f"(now {sz['episodes_per_task']}) would do")
    if rep["strength_warning"]:
        console.print(f"[bold red]warning[/bold red]: {rep['strength_warning']}")
    console.print(f"report: {out / 'critic_report.json'}, plots: {', '.join(rep['plots'])}")

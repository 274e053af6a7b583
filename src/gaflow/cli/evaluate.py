"""``gaflow sweep`` (validation only) and ``gaflow eval`` (paired arms, any split; test runs a locked config)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from gaflow.cli import BACKEND_HELP, RAY_ADDRESS_HELP, app, comma_list


def _grid(items: list[str]) -> dict[str, list]:
    grid = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"--grid {item!r}: use name=v1,v2 (e.g. relative=0.05,0.1,0.2)")
        grid[key.strip()] = [json.loads(v) if v.strip() not in ("all", "window", "ramp", "mean", "min", "lcb")
                             else v.strip() for v in values.split(",")]
    return grid


@app.command()
def sweep(
    policy: str = typer.Option(..., help="base policy spec"),
    critic: Path = typer.Option(..., help="critic folder"),
    tasks: str = typer.Option(..., help="comma-separated tasks"),
    out: Path = typer.Option(..., help="sweep folder (locked.json is written here)"),
    env: str = typer.Option("metaworld"),
    seeds: str = typer.Option("validation:50", help="validation seeds: 'validation:<count>' (test is refused)"),
    grid: list[str] = typer.Option(["relative=0.05,0.1,0.2,0.4"], help="name=v1,v2 (repeat for a product grid)"),
    base: Path = typer.Option(None, help="guidance config JSON the grid modifies (default: clean_estimate)"),
    n_action_steps: int = typer.Option(None),
    num_steps: int = typer.Option(None),
    max_steps: int = typer.Option(None),
    workers: int = typer.Option(2),
    backend: str = typer.Option("local", help=BACKEND_HELP),
    ray_address: str = typer.Option(None, help=RAY_ADDRESS_HELP),
) -> None:
    """Tune guidance on VALIDATION seeds by a declared rule and lock the chosen config."""
    from gaflow.evaluation.report import plot_sweep, print_eval
    from gaflow.evaluation.runner import EvalConfig
    from gaflow.evaluation.splits import resolve_seeds, split_for_env
    from gaflow.evaluation.sweep import RULE, grid_configs, run_sweep
    from gaflow.runtime.executor import make_executor

    seed_list, split = resolve_seeds(seeds, split_for_env(env), purpose="tune")
    configs = grid_configs(json.loads(base.read_text()) if base else {}, _grid(grid))
    ev = EvalConfig(policy=policy, env=env, tasks=comma_list(tasks), seeds=seed_list, split=split, critic=str(critic),
                    n_action_steps=n_action_steps, num_steps=num_steps, max_steps=max_steps)
    res = run_sweep(ev, configs, out, workers=workers, executor=make_executor(workers, backend, ray_address))
    print_eval(res["metrics"], f"sweep [{split}]")
    plot_sweep(out, res["rows"], "relative strength ρ" if configs[0].get("relative") is not None else "scale")
    lk = res["locked"]
    from gaflow.guidance import GuidanceConfig

    defaults = GuidanceConfig().to_dict()
    changed = {k: v for k, v in lk["guidance"].items() if v != defaults[k]}
    Console().print(f"[bold]locked[/bold] {lk['hash']} ({RULE}): {json.dumps(changed)} → {out / 'locked.json'}")


@app.command("eval")
def eval_cmd(
    policy: str = typer.Option(..., help="base policy spec"),
    tasks: str = typer.Option(..., help="comma-separated tasks"),
    out: Path = typer.Option(..., help="run folder (resumable)"),
    env: str = typer.Option("metaworld"),
    seeds: str = typer.Option("test:100", help="'<split>:<count>' or explicit seeds"),
    critic: Path = typer.Option(None, help="critic folder (needed by guided arms)"),
    locked: Path = typer.Option(None, help="locked.json from `gaflow sweep` (required for the test split)"),
    guidance: Path = typer.Option(None, help="an ad-hoc guidance config JSON (not allowed on the test split)"),
    arms: str = typer.Option("unguided,guided,zero,random", help="unguided,guided,zero,random,best-of-N,guided+best-of-N"),
    n_action_steps: int = typer.Option(None),
    num_steps: int = typer.Option(None),
    max_steps: int = typer.Option(None),
    noise_seed: int = typer.Option(0),
    workers: int = typer.Option(2),
    backend: str = typer.Option("local", help=BACKEND_HELP),
    ray_address: str = typer.Option(None, help=RAY_ADDRESS_HELP),
) -> None:
    """Compare arms on the same (task, seed) episodes; per-task and pooled rates, CIs, McNemar, flips, latency."""
    from gaflow.evaluation.report import print_eval, write_eval_report
    from gaflow.evaluation.runner import EvalConfig, run_eval, standard_arms, summarize
    from gaflow.evaluation.splits import resolve_seeds, split_for_env
    from gaflow.evaluation.sweep import load_locked, record_test_use
    from gaflow.runtime.executor import make_executor

    seed_list, split = resolve_seeds(seeds, split_for_env(env))
    arm_names = comma_list(arms)
    guided_cfg, lock_meta, lk = None, None, None
    if locked is not None:
        lk = load_locked(locked)
        guided_cfg = lk["guidance"]
        critic = critic or Path(lk["critic"])
    elif guidance is not None:
        if split in ("test", "mixed"):
            raise typer.BadParameter("the test split runs only a config locked by `gaflow sweep` (--locked)")
        guided_cfg = json.loads(guidance.read_text())
    needs_guidance = any(a != "unguided" for a in arm_names)
    if split in ("test", "mixed") and needs_guidance and lk is None:
        raise typer.BadParameter("the test split runs only a config locked by `gaflow sweep` (--locked)")
    ev = EvalConfig(policy=policy, env=env, tasks=comma_list(tasks), seeds=seed_list, split=split,
                    arms=standard_arms(guided_cfg, arm_names), critic=str(critic) if critic else None,
                    n_action_steps=n_action_steps, num_steps=num_steps, max_steps=max_steps, noise_seed=noise_seed)
    records = run_eval(ev, out, workers=workers, executor=make_executor(workers, backend, ray_address))
    metrics = summarize(records, arm_names)
    if lk is not None and split == "test":
        lock_meta = record_test_use(locked, lk, out)
    elif lk is not None:
        lock_meta = {k: lk[k] for k in ("hash", "locked_at", "rule", "split")}
    meta = {"split": split, "n_seeds": len(seed_list), "seed_range": f"{seed_list[0]}–{seed_list[-1]}",
            "policy": policy, "critic": str(critic) if critic else None, "env": env, "locked": lock_meta,
            "guided_unlocked": guided_cfg is not None and lk is None, "config": ev.to_dict()}
    report = write_eval_report(out, metrics, meta)
    print_eval(metrics, f"eval [{split}]")
    Console().print(f"report: {report}")

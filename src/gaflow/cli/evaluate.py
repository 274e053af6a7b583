"""``gaflow sweep`` (validation only) and ``gaflow eval`` (paired arms, any split; test runs a locked config)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from gaflow.cli import BACKEND_HELP, RAY_ADDRESS_HELP, app, comma_list, read_json_file


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
    rule: str = typer.Option("paired-lcb", help="paired-lcb (choose on significant validation evidence, else "
                                                 "unguided) | fixed (lock the one grid config given, e.g. a strength "
                                                 "chosen elsewhere, bound to this critic and these tasks)"),
    backend: str = typer.Option("local", help=BACKEND_HELP),
    ray_address: str = typer.Option(None, help=RAY_ADDRESS_HELP),
) -> None:
    """Tune guidance on VALIDATION seeds by a declared rule and lock the chosen config."""
    from gaflow.evaluation.report import plot_sweep, print_eval
    from gaflow.evaluation.runner import EvalConfig
    from gaflow.evaluation.splits import resolve_seeds, split_for_env
    from gaflow.evaluation.sweep import describe_lock, grid_configs, run_sweep
    from gaflow.runtime.executor import make_executor

    seed_list, split = resolve_seeds(seeds, split_for_env(env), purpose="tune")
    configs = grid_configs(read_json_file(base, "--base") if base else {}, _grid(grid))
    ev = EvalConfig(policy=policy, env=env, tasks=comma_list(tasks), seeds=seed_list, split=split, critic=str(critic),
                    n_action_steps=n_action_steps, num_steps=num_steps, max_steps=max_steps)
    res = run_sweep(ev, configs, out, workers=workers, rule=rule,
                    executor=make_executor(workers, backend, ray_address))
    print_eval(res["metrics"], f"sweep [{split}]")
    plot_sweep(out, res["rows"], "relative strength ρ" if configs[0].get("relative") is not None else "scale")
    lk = res["locked"]
    Console().print(f"[bold]locked[/bold] {lk['hash']} ({lk['rule']}): {describe_lock(lk)} → {out / 'locked.json'}")


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
    arms: str = typer.Option("unguided,guided,zero,random",
                             help="unguided,guided,zero,random,ungated,best-of-N,guided+best-of-N,preset:<name> (the guided "
                                  "config with a named objective preset: preset:gentle, preset:fast)"),
    n_action_steps: int = typer.Option(None),
    num_steps: int = typer.Option(None),
    max_steps: int = typer.Option(None),
    noise_seed: int = typer.Option(0),
    workers: int = typer.Option(2),
    force_reread: bool = typer.Option(False, help="read test episodes that an earlier run already read (the report "
                                                  "says so); otherwise refused"),
    backend: str = typer.Option("local", help=BACKEND_HELP),
    ray_address: str = typer.Option(None, help=RAY_ADDRESS_HELP),
) -> None:
    """Compare arms on the same (task, seed) episodes; per-task and pooled rates, CIs, McNemar, flips, latency.

    Test seeds run only a config locked by `gaflow sweep`, with the exact policy, critic, env, tasks and sampler
    settings it was tuned with, and each test episode is read once (the test ledger)."""
    from gaflow.evaluation.ledger import read_header, test_seeds_of
    from gaflow.evaluation.report import print_eval, write_eval_report
    from gaflow.evaluation.runner import EvalConfig, run_eval, standard_arms, summarize
    from gaflow.evaluation.splits import resolve_seeds, split_for_env
    from gaflow.evaluation.sweep import (
        check_lock_binds,
        describe_lock,
        load_locked,
        lock_critic,
        lock_summary,
    )
    from gaflow.runtime.executor import make_executor

    seed_list, split = resolve_seeds(seeds, split_for_env(env))
    touches_test = bool(test_seeds_of(env, seed_list))  # by value: a 'mixed' range counts too
    arm_names = comma_list(arms)
    guided_cfg, lk = None, None
    if locked is not None:
        lk = load_locked(locked)
        guided_cfg = lk["guidance"]
        critic = critic or Path(lock_critic(lk, locked))
    elif guidance is not None:
        guided_cfg = read_json_file(guidance, "--guidance")
    needs_guidance = any(a != "unguided" for a in arm_names)
    if touches_test and needs_guidance and lk is None:
        raise typer.BadParameter("test seeds run only a config locked by `gaflow sweep` (--locked)")
    ev = EvalConfig(policy=policy, env=env, tasks=comma_list(tasks), seeds=seed_list, split=split,
                    arms=standard_arms(guided_cfg, arm_names, per_task=lk["per_task"] if lk else None,
                                       from_lock=lk is not None), critic=str(critic) if critic else None,
                    n_action_steps=n_action_steps, num_steps=num_steps, max_steps=max_steps, noise_seed=noise_seed)
    if lk is not None:
        check_lock_binds(lk, ev)
        Console().print(f"locked config {lk['hash']}: {describe_lock(lk)}")
    records = run_eval(ev, out, workers=workers, force_reread=force_reread, lock_hash=lk["hash"] if lk else None,
                       executor=make_executor(workers, backend, ray_address))
    metrics = summarize(records, arm_names)
    meta = {"split": split, "n_seeds": len(seed_list), "seed_range": f"{seed_list[0]}–{seed_list[-1]}",
            "policy": policy, "critic": str(critic) if critic else None, "env": env,
            "locked": lock_summary(lk) if lk else None, "test_read": read_header(out),
            "guided_unlocked": guided_cfg is not None and lk is None, "config": ev.to_dict()}
    report = write_eval_report(out, metrics, meta)
    print_eval(metrics, f"eval [{split}]")
    Console().print(f"report: {report}")

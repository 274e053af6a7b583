"""Success of the scripted LIBERO pick-and-place expert over the suite's fixed init states (camera-free).

    uv run python benchmarks/libero_expert.py --suite libero_spatial [--tasks 0,1] [--inits 0-49] [--noise 0.0]
        [--workers 1] [--out runs/libero_expert_spatial.json]

Every (task, init index) episode starts from that init state after a hard reset (see ``gaflow.envs.libero``), so
the numbers are reproducible and comparable across noise levels. Tasks whose goal the expert cannot handle (not a
single On/In predicate) are reported as unsupported. Writes per-episode rows and a per-task summary as JSON
(atomically) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


def parse_ids(text: str, n: int) -> list[int]:
    """'0,3,5-7' → [0, 3, 5, 6, 7]; 'all' → range(n)."""
    if text == "all":
        return list(range(n))
    out: list[int] = []
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-")
            out += list(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    return out


def run_task(suite: str, task_id: int, inits: list[int], noise: float, noise_seed: int) -> list[dict]:
    """All episodes of one task in one process (the env is built once)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from gaflow.envs.libero import LiberoEnv
    from gaflow.experts.libero_pick_place import PickPlaceExpert, UnsupportedTaskError, run_expert_episode

    env = LiberoEnv(suite, task_id)
    try:
        try:
            expert = PickPlaceExpert(env)
        except UnsupportedTaskError as exc:
            return [{"task_id": task_id, "unsupported": str(exc), "language": env.language}]
        rows = []
        for i in inits:
            t0 = time.perf_counter()
            ep = run_expert_episode(env, expert, i, noise_std=noise, noise_seed=noise_seed)
            rows.append({"task_id": task_id, "init_index": i, "success": ep.success, "steps": ep.steps,
                         "seconds": time.perf_counter() - t0, "language": env.language})
        return rows
    finally:
        env.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default="libero_spatial")
    ap.add_argument("--tasks", default="all", help="task ids, e.g. 0,1,4-6 or all")
    ap.add_argument("--inits", default="all", help="init-state indices, e.g. 0-9 or all (50)")
    ap.add_argument("--noise", type=float, default=0.0, help="Gaussian action-noise σ")
    ap.add_argument("--noise-seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1, help="processes (one task each at a time)")
    ap.add_argument("--out", type=Path, default=None, help="JSON report path")
    args = ap.parse_args()

    from gaflow.envs.libero import init_states, task_count

    n_tasks = task_count(args.suite)
    tasks = parse_ids(args.tasks, n_tasks)
    inits = parse_ids(args.inits, init_states(args.suite, tasks[0]).shape[0])
    console = Console()
    t_start = time.perf_counter()
    rows: list[dict] = []
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console)
    with progress, ProcessPoolExecutor(max_workers=max(1, args.workers)) as pool:
        bar = progress.add_task(f"{args.suite} tasks", total=len(tasks))
        futures = [pool.submit(run_task, args.suite, t, inits, args.noise, args.noise_seed) for t in tasks]
        for t, fut in zip(tasks, futures, strict=True):
            task_rows = fut.result()
            rows += task_rows
            ok = sum(bool(r.get("success")) for r in task_rows)
            progress.console.log(f"task {t}: {ok}/{len(task_rows)} ({time.perf_counter() - t_start:.0f} s)")
            progress.advance(bar)
    wall = time.perf_counter() - t_start

    table = Table(title=f"{args.suite}: scripted expert, σ={args.noise}, inits {args.inits}")
    for col in ("task", "success", "mean steps", "s/episode", "instruction"):
        table.add_column(col)
    summary = []
    for t in tasks:
        trows = [r for r in rows if r["task_id"] == t]
        if trows and "unsupported" in trows[0]:
            summary.append({"task_id": t, "unsupported": trows[0]["unsupported"], "language": trows[0]["language"]})
            table.add_row(str(t), "unsupported", "", "", trows[0]["language"])
            continue
        ok = sum(r["success"] for r in trows)
        steps = statistics.mean(r["steps"] for r in trows if r["success"]) if ok else float("nan")
        secs = statistics.mean(r["seconds"] for r in trows)
        summary.append({"task_id": t, "successes": ok, "episodes": len(trows), "mean_success_steps": steps,
                        "seconds_per_episode": secs, "language": trows[0]["language"],
                        "failed_inits": [r["init_index"] for r in trows if not r["success"]]})
        table.add_row(str(t), f"{ok}/{len(trows)}", f"{steps:.0f}", f"{secs:.1f}", trows[0]["language"])
    console.print(table)
    total = sum(s.get("successes", 0) for s in summary)
    n = sum(s.get("episodes", 0) for s in summary)
    console.print(f"total {total}/{n}; wall {wall:.0f} s with {args.workers} worker(s)")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        report = {"args": {k: str(v) for k, v in vars(args).items()}, "wall_seconds": wall,
                  "summary": summary, "episodes": rows}
        fd, tmp = tempfile.mkstemp(dir=args.out.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(report, f, indent=1)
        os.replace(tmp, args.out)


if __name__ == "__main__":
    main()

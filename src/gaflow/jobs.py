"""What collection and evaluation workers share: building a (policy, env, critic) runtime by name, and running
job batches over worker processes with one progress bar."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


@contextlib.contextmanager
def torch_threads(n: int):
    """Run a block with ``n`` torch threads, restoring the previous setting (workers may run in-process)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def build_policy_env(policy_spec: str, env_spec: str, task: str, *, image_size: int | None = None,
                     max_steps: int | None = None):
    """Load a policy by spec and build the env for ``task`` (image size defaults to the policy's)."""
    from gaflow.envs.registry import make_env
    from gaflow.policies.registry import load_policy

    policy = load_policy(policy_spec)
    opts: dict[str, Any] = {"max_steps": max_steps}
    if env_spec.partition("?")[0] == "metaworld":
        opts["image_size"] = image_size or getattr(getattr(policy, "config", None), "image_size", None)
    return policy, make_env(env_spec, task, **opts)


def run_batches(worker: Callable[..., list], batches: list[tuple], *, workers: int, label: str, total: int,
                completed: int = 0, progress: bool = True, on_result: Callable[[list], str] | None = None) -> list:
    """Run ``worker(*batch)`` for each batch (in-process when ``workers <= 1``), advancing one bar per item.

    Multi-process runs use ``forkserver``: a process that has rendered with MuJoCo must not fork its GL context.
    ``on_result`` may return a short status string shown beside the bar.
    """
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    results: list = []
    with Progress(*columns, disable=not progress) as bar:
        handle = bar.add_task(label, total=total, completed=completed, info="")

        def take(out: list) -> None:
            results.extend(out)
            info = on_result(out) if on_result else ""
            bar.update(handle, advance=len(out), info=info)

        if workers <= 1 or len(batches) <= 1:
            for b in batches:
                take(worker(*b))
        else:
            with ProcessPoolExecutor(workers, mp_context=mp.get_context("forkserver")) as pool:
                for fut in as_completed([pool.submit(worker, *b) for b in batches]):
                    take(fut.result())
    return results


def chunked(items: Iterable, size: int) -> list[list]:
    items = list(items)
    return [items[i:i + size] for i in range(0, len(items), size)]

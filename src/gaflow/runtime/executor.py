"""The executor seam: where episode jobs run. Workers *return* payloads; only the driver writes files.

* :class:`InProcessExecutor` — jobs run one after another in this process (``workers <= 1``; tests, debugging).
* :class:`LocalPoolExecutor` — a local process pool (``forkserver``: a process that has rendered with MuJoCo must
  not fork its GL context). Workers die with their driver: each runs a watchdog thread that exits the worker as
  soon as the driver process is gone, so a SIGKILLed ``collect`` / ``eval`` leaves nothing running behind it.
* :class:`~gaflow.runtime.ray_executor.RayExecutor` — Ray tasks on a local instance or a cluster
  (``backend="ray"``; docs/scale.md).

Both yield each job's result as it completes; :func:`run_jobs` adds one progress bar and hands every result to
the driver's ``on_result`` (which writes it atomically). Because a job's result is written only by the driver,
resume is "run the jobs whose files are missing", whatever executor ran the others.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Protocol

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class Executor(Protocol):
    workers: int

    def run(self, fn: Callable[..., Any], jobs: list[tuple]) -> Iterator[Any]:
        """Yield ``fn(*job)`` for every job, in completion order."""


class InProcessExecutor:
    workers = 1

    def run(self, fn: Callable[..., Any], jobs: list[tuple]) -> Iterator[Any]:
        for job in jobs:
            yield fn(*job)


def _driver_alive(pid: int) -> bool:
    """True while process ``pid`` exists and is not a zombie (a killed driver that was not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (macOS): signal 0 tells whether the pid exists
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False


def _watch_driver(pid: int, interval_s: float = 0.2) -> None:
    """Worker initializer: exit this worker at once when the driver ``pid`` is gone."""

    def watch() -> None:
        while _driver_alive(pid):
            time.sleep(interval_s)
        os._exit(70)  # no cleanup: the driver that would read our results is dead

    threading.Thread(target=watch, name="gaflow-driver-watchdog", daemon=True).start()


class LocalPoolExecutor:
    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers

    def run(self, fn: Callable[..., Any], jobs: list[tuple]) -> Iterator[Any]:
        ctx = mp.get_context("forkserver")
        with ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_watch_driver,
                                 initargs=(os.getpid(),)) as pool:
            futures = [pool.submit(fn, *job) for job in jobs]
            try:
                for fut in as_completed(futures):
                    yield fut.result()
            finally:
                for f in futures:
                    f.cancel()


BACKENDS = ("local", "ray")


def make_executor(workers: int, backend: str = "local", ray_address: str | None = None) -> Executor:
    """The executor for a job: ``backend="local"`` runs ``workers`` processes here (in-process when
    ``workers <= 1``); ``backend="ray"`` runs Ray tasks on a local instance of ``workers`` CPUs, or on the cluster
    at ``ray_address`` (``"auto"`` or ``"<host>:<port>"``), where every free CPU takes jobs."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "ray":
        from gaflow.runtime.ray_executor import RayExecutor

        # a local instance gets `workers` CPUs; on a cluster every CPU takes jobs
        return RayExecutor(workers=max(1, workers) if ray_address is None else None, address=ray_address)
    if ray_address is not None:
        raise ValueError("--ray-address needs --backend ray")
    return InProcessExecutor() if workers <= 1 else LocalPoolExecutor(workers)


def run_jobs(executor: Executor, fn: Callable[..., list], jobs: list[tuple], *, label: str, total: int,
             completed: int = 0, progress: bool = True, on_result: Callable[[list], str] | None = None) -> None:
    """Run ``fn(*job)`` for each job on ``executor`` with one progress bar that advances per returned item.

    ``on_result(items)`` runs in the driver for every job's returned list (write it there) and may return a short
    status string shown beside the bar.
    """
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    if len(jobs) <= 1 and not isinstance(executor, InProcessExecutor):
        executor = InProcessExecutor()  # one job: a pool would only add start-up time
    with Progress(*columns, disable=not progress) as bar:
        handle = bar.add_task(label, total=total, completed=completed, info="")
        for out in executor.run(fn, jobs):
            info = on_result(out) if on_result else ""
            bar.update(handle, advance=len(out), info=info)


@contextlib.contextmanager
def torch_threads(n: int):
    """Run a block with ``n`` torch threads, restoring the previous setting (workers may run in-process).

    One thread per episode loop: small per-step ops with 2 threads spin-wait badly when the other core is busy
    (measured 6× slower)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def chunked(items: Iterable, size: int) -> list[list]:
    items = list(items)
    return [items[i:i + size] for i in range(0, len(items), size)]

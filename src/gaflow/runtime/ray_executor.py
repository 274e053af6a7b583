"""The Ray backend of the executor seam: episode jobs as Ray tasks, on a local Ray instance or a cluster.

>>> from gaflow.runtime.executor import make_executor
>>> ex = make_executor(2, backend="ray")                  # doctest: +SKIP  (starts a local 2-CPU Ray instance)
>>> ex = make_executor(2, backend="ray", ray_address="auto")  # doctest: +SKIP  (joins `ray start --head`'s cluster)

Same contract as the local pool (:mod:`gaflow.runtime.executor`): a job's function runs in a worker and *returns*
its payloads, the driver writes them, so no node needs the driver's filesystem and resume is "run the jobs whose
files are missing". What Ray adds:

* **Placement.** One job per CPU, anywhere in the cluster; a worker process keeps its loaded policy and env between
  jobs (:mod:`gaflow.runtime.build`), as a pool worker does.
* **Faults.** A worker process that dies mid-job (killed, OOM, node lost) makes Ray run that job again
  (``max_retries``); the driver receives one result per job, so every episode is written exactly once. An
  exception raised *by* the job is not retried — it is a bug, and it reaches the driver with its traceback.
* **A dead driver.** Ray ends the tasks of a driver that is gone, so nothing runs or writes after it; re-running
  the command runs the missing episodes. A local instance goes with its driver: Ray's raylet and workers follow
  it, and a small reaper process ends the two agents Ray 2.60 leaves hanging after a SIGKILL.
* **Same code everywhere.** Before the first job, every node reports a fingerprint of its gaflow sources and of the
  packages that decide an episode's numbers (torch, numpy, mujoco, metaworld); a node that differs from the
  driver is refused by name, because it would silently produce different episodes.

Ray is imported only when this backend is used.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

FINGERPRINT_PACKAGES = ("torch", "numpy", "mujoco", "metaworld", "ray")


# Run as `python -c _REAPER <driver pid>` (no gaflow import: it must start in milliseconds). It remembers the
# driver's descendants (the local Ray instance's processes) while the driver lives, and SIGKILLs those still running
# once it is gone. Ray stops its raylet, GCS and workers with a SIGKILLed driver, but its dashboard and runtime-env
# agents log "Raylet is dead! Exiting" and then hang (seen with ray 2.60); the pool executor's watchdog has the same
# job for pool workers. Linux only (/proc); elsewhere Ray's own clean-up is all there is.
_REAPER = r"""
import os, signal, sys, time
driver = int(sys.argv[1])
def stat(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0], int(fields[1]), fields[19]  # state, parent pid, start time
    except (OSError, IndexError, ValueError):
        return None
known = {}
while (s := stat(driver)) is not None and s[0] != "Z":
    table = {int(p): stat(int(p)) for p in os.listdir("/proc") if p.isdigit()}
    children = {}
    for pid, st in table.items():
        if st is not None:
            children.setdefault(st[1], []).append(pid)
    todo = list(children.get(driver, []))
    while todo:
        pid = todo.pop()
        if pid != os.getpid() and table.get(pid):
            known[pid] = table[pid][2]
            todo += children.get(pid, [])
    time.sleep(1.0)
for pid, start in known.items():
    st = stat(pid)
    if st is not None and st[2] == start:  # the same process, not a reused pid
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
"""


def _start_reaper() -> None:
    if sys.platform.startswith("linux") and os.path.exists("/proc/self/stat"):
        subprocess.Popen([sys.executable, "-c", _REAPER, str(os.getpid())], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


# Ray ≥ 2.45 re-runs a `uv run` driver's command for every worker (`uv run` on each node), which resolves — and
# may try to download — an interpreter per worker. gaflow's nodes run their own synced environment (docs/scale.md):
# workers use the node's Python directly. Read by Ray when it is imported, so it is set here, before that.
UV_HOOK_ENV = "RAY_ENABLE_UV_RUN_RUNTIME_ENV"


def _import_ray():
    os.environ.setdefault(UV_HOOK_ENV, "0")
    try:
        import ray
    except ImportError as e:  # pragma: no cover - ray is a dependency; a broken env says so plainly
        raise ImportError("--backend ray needs the `ray` package (pinned in uv.lock): run `uv sync`") from e
    return ray


def code_fingerprint() -> dict[str, str]:
    """What must match on every node for episodes to be identical: gaflow's sources and the numeric packages."""
    import gaflow

    root = Path(gaflow.__file__).parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    out = {"gaflow": h.hexdigest()[:16]}
    for name in FINGERPRINT_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def _run_in(cwd: str, fn: Callable[..., Any], *job: Any) -> Any:
    """Run a job from the driver's working directory where this node has it, so relative paths in a command
    (``compact:runs/policy``, ``--critic runs/critic``) mean the same files as on the driver."""
    if os.path.isdir(cwd) and os.getcwd() != cwd:
        os.chdir(cwd)
    return fn(*job)


class RayExecutor:
    """Run episode jobs as Ray tasks (see the module docstring).

    Args:
        workers: at most this many jobs run at once; also the CPUs of the local Ray instance this executor starts
            when ``address`` is None (default: all of this machine's). ``None`` on a cluster: every CPU takes jobs.
        address: ``None`` starts a local instance; ``"auto"`` joins the cluster this machine belongs to (``ray
            start``); ``"<host>:<port>"`` joins that head node. If Ray is already initialised in this process,
            that instance is used.
        max_retries: runs of a job after its worker process died (Ray's own default is 3).
        check_nodes: compare every node's :func:`code_fingerprint` with the driver's before the first job.
    """

    def __init__(self, workers: int | None = None, address: str | None = None, max_retries: int = 3,
                 check_nodes: bool = True) -> None:
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.address = address
        self.max_retries = int(max_retries)
        self.check_nodes = check_nodes  # see check_nodes_match
        self._cap = workers
        self._started = False
        self._checked = False

    # ------------------------------------------------------------------ connection
    def connect(self):
        """Initialise Ray (start a local instance or join ``address``) unless this process already did."""
        ray = _import_ray()
        if not ray.is_initialized():
            opts: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                                    # worker output would tear the driver's progress bar; a job's exception still
                                    # reaches the driver with its traceback (worker logs: /tmp/ray/session_latest)
                                    "log_to_driver": False}
            if self.address is None:
                # Ray starts workers at nice 15 so that its daemons stay responsive on a saturated node. A local
                # instance shares its machine with other work (the driver, other users), where nice 15 made jobs
                # ~1.5x slower than the process pool's on a loaded 2-core box: run them at the driver's priority.
                # A local instance talks to itself only: bind it to loopback rather than the machine's address.
                ray.init(num_cpus=self._cap, _system_config={"worker_niceness": 0}, _node_ip_address="127.0.0.1",
                         **opts)
                self._started = True
                _start_reaper()
            else:
                ray.init(address=self.address, **opts)
        if self.check_nodes and not self._checked:
            self._checked = True
            self.check_nodes_match()
        return ray

    @property
    def workers(self) -> int:
        """Jobs that can run at once now: the cluster's CPUs, or ``workers`` if that is fewer."""
        ray = self.connect()
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        return cpus if self._cap is None else min(cpus, self._cap)

    def check_nodes_match(self, expected: dict[str, str] | None = None) -> None:
        """Raise, naming each node and field, if a node's :func:`code_fingerprint` differs from ``expected``
        (default: this driver's)."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        ray = self.connect()
        mine = expected or code_fingerprint()
        probe = ray.remote(num_cpus=0)(code_fingerprint)
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        refs = {n.get("NodeManagerAddress", n["NodeID"]): probe.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote() for n in nodes}
        bad = []
        for node, ref in refs.items():
            try:
                theirs = ray.get(ref)
            except Exception as e:  # e.g. gaflow is not installed there
                bad.append(f"{node}: cannot run gaflow ({type(e).__name__}: {str(e).strip().splitlines()[-1]})")
                continue
            diff = {k: (mine.get(k), theirs.get(k)) for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k)}
            if diff:
                bad.append(f"{node}: " + ", ".join(f"{k} {d} here vs {n} there" for k, (d, n) in sorted(diff.items())))
        if bad:
            raise RuntimeError("Ray nodes run different code than this driver, so their episodes would differ; "
                               "install the same gaflow commit and `uv sync` on every node (docs/scale.md):\n  "
                               + "\n  ".join(bad))

    def close(self) -> None:
        """Shut down the local Ray instance this executor started (a joined cluster keeps running)."""
        if self._started:
            _import_ray().shutdown()
            self._started = False
            self._checked = False

    # ------------------------------------------------------------------ jobs
    def run(self, fn: Callable[..., Any], jobs: list[tuple]) -> Iterator[Any]:
        """Yield ``fn(*job)`` for every job, in completion order.

        Jobs are submitted in a window of twice the cluster's CPUs (refreshed as results arrive, so nodes that
        join mid-run get work; exactly ``workers`` when that caps it below the cluster) rather than all at once:
        results stream back and are released as they are written, and a dead driver leaves little queued work.
        """
        ray = self.connect()
        remote = ray.remote(num_cpus=1, max_retries=self.max_retries, retry_exceptions=False)(_run_in).options(
            name=getattr(fn, "__name__", "job"))
        cwd = os.getcwd()
        todo = iter(jobs)
        pending: list = []
        window_at = 0.0
        window = 2

        def refill() -> None:
            nonlocal window_at, window
            if time.monotonic() - window_at > 5.0:
                cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
                window = 2 * cpus if self._cap is None or self._cap >= cpus else self._cap
                window_at = time.monotonic()
            while len(pending) < window:
                job = next(todo, None)
                if job is None:
                    return
                pending.append(remote.remote(cwd, fn, *job))

        try:
            refill()
            while pending:
                done, _ = ray.wait(pending, num_returns=1)
                pending.remove(done[0])
                out = ray.get(done[0])  # a job's own exception is re-raised here (as itself and a RayTaskError)
                refill()
                yield out
        finally:
            for ref in pending:  # the driver stops early (an error, Ctrl-C): no orphan jobs keep running
                ray.cancel(ref, force=True)

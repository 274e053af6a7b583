"""The executor seam: workers return payloads and only the driver writes; workers die with their driver; a killed
job resumes to exactly what an uninterrupted one writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from helpers import marked_pids

from gaflow.runtime.executor import InProcessExecutor, LocalPoolExecutor, _driver_alive, run_jobs


def _square(x: int) -> list[int]:
    return [x * x]


def _pid(_: int) -> list[int]:
    return [os.getpid()]


def test_in_process_and_pool_executors_return_the_same_results():
    jobs = [(i,) for i in range(6)]
    a = sorted(x for out in InProcessExecutor().run(_square, jobs) for x in out)
    b = sorted(x for out in LocalPoolExecutor(2).run(_square, jobs) for x in out)
    assert a == b == [i * i for i in range(6)]


def test_pool_jobs_run_in_other_processes_and_results_reach_the_driver():
    seen: list[int] = []
    run_jobs(LocalPoolExecutor(2), _pid, [(i,) for i in range(4)], label="t", total=4, progress=False,
             on_result=lambda out: seen.extend(out) or "")
    assert len(seen) == 4 and os.getpid() not in seen


def test_a_dead_or_zombie_driver_is_not_alive():
    assert _driver_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 10
    while _driver_alive(child.pid) and time.time() < deadline:  # exits, stays a zombie until reaped
        time.sleep(0.05)
    assert not _driver_alive(child.pid)
    child.wait()
    assert not _driver_alive(child.pid)




def _episodes(out: Path) -> int:
    return len(list(out.glob("episodes/*/*.safetensors")))


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc to find the job's processes")
def test_sigkilled_collect_leaves_no_workers_and_resumes_to_the_uninterrupted_result(tmp_path):
    marker = f"GAFLOW_TEST_JOB={uuid.uuid4().hex}"
    env = {**os.environ, marker.split("=")[0]: marker.split("=")[1]}
    args = [sys.executable, "-m", "gaflow.cli", "collect", "--policy", "toy:default", "--env", "toy",
            "--tasks", "toy-reach", "--seeds", "0-79", "--workers", "2", "--no-dataset"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*args, "--out", str(killed)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while _episodes(killed) < 4 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the job finished before it could be killed; give it more episodes"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while marked_pids(marker) and time.time() < deadline:
        time.sleep(0.1)
    assert marked_pids(marker) == []  # forkserver and pool workers went with the driver
    written = _episodes(killed)
    time.sleep(1.0)
    assert _episodes(killed) == written < 80  # nobody writes after the driver died

    # resume with the same command; the result equals an uninterrupted run's
    subprocess.run([*args, "--out", str(killed)], check=True, env=env, stdout=subprocess.DEVNULL)
    fresh = tmp_path / "fresh"
    subprocess.run([*args, "--out", str(fresh), "--workers", "1"], check=True, stdout=subprocess.DEVNULL)
    assert _episodes(killed) == 80
    lines = lambda p: [{k: v for k, v in json.loads(x).items() if k != "mean_latency_s"}  # noqa: E731
                       for x in (p / "episodes.jsonl").read_text().splitlines()]
    assert lines(killed) == lines(fresh)
    assert (killed / "chunks.safetensors").exists()

"""The Ray backend: a job gives the same episodes on Ray as in-process, with any number of workers; a worker killed
mid-episode has its job run again and every episode recorded once; a killed driver resumes to the uninterrupted
result. One local 2-CPU Ray instance, started here, serves the whole module."""

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
import torch
from helpers import marked_pids
from safetensors import safe_open

os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")  # as gaflow's RayExecutor does before importing ray
ray = pytest.importorskip("ray")

from gaflow.collect import CollectConfig, collect, collect_episodes, read_episode  # noqa: E402
from gaflow.critic.data import ChunkTable  # noqa: E402
from gaflow.critic.train import CriticTrainConfig, train_critic  # noqa: E402
from gaflow.evaluation.runner import EvalConfig, run_eval, standard_arms  # noqa: E402
from gaflow.runtime.executor import InProcessExecutor, make_executor, run_jobs  # noqa: E402
from gaflow.runtime.ray_executor import RayExecutor, code_fingerprint  # noqa: E402

TASKS = ["toy-reach", "toy-reach-far"]
TIMING = ("latency_s", "mean_latency_s", "wall_s", "chunk_latency_ms")  # wall-clock fields differ run to run


@pytest.fixture(scope="module")
def ray_address():
    starter = RayExecutor(workers=2)  # a local 2-CPU instance, started as `--backend ray` starts one
    starter.connect()
    # Ray workers cannot import this test module by name: ship its helpers by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        starter.close()


@pytest.fixture(scope="module")
def critic_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("critic")
    collect(CollectConfig(policy="toy:default", env="toy", tasks=TASKS, seeds=list(range(100, 112))),
            root / "collect", workers=1, progress=False, write_dataset=False)
    train_critic(ChunkTable.load(root / "collect" / "chunks.safetensors"),
                 CriticTrainConfig(features=("state",), hidden=(32,), epochs=2), out_dir=root / "critic",
                 progress=False)
    return root / "critic"


def _episodes(out: Path) -> dict:
    """Every episode file of a collect folder, without its wall-clock fields."""
    found = {}
    for path in sorted(out.glob("episodes/*/*.safetensors")):
        meta, tensors = read_episode(path)
        found[(path.parent.name, path.stem)] = ({k: v for k, v in meta.items() if k not in TIMING},
                                                {k: v for k, v in tensors.items() if k not in TIMING})
    return found


def _same_episodes(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for key in a:
        (meta_a, t_a), (meta_b, t_b) = a[key], b[key]
        if meta_a != meta_b or t_a.keys() != t_b.keys() or not all(torch.equal(t_a[k], t_b[k]) for k in t_a):
            return False
    return True


def _same_file(a: Path, b: Path) -> bool:
    """Same tensors and metadata (the header's key order may differ)."""
    with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb:
        return fa.metadata() == fb.metadata() and sorted(fa.keys()) == sorted(fb.keys()) and all(
            torch.equal(fa.get_tensor(k), fb.get_tensor(k)) for k in fa.keys())


def test_guided_collection_on_ray_writes_what_an_in_process_run_writes_with_any_worker_count(
        tmp_path, ray_address, critic_dir):
    cfg = CollectConfig(policy="toy:default", env="toy", tasks=TASKS, seeds=list(range(10)),
                        guidance={"relative": 0.4}, critic=str(critic_dir))
    collect(cfg, tmp_path / "here", workers=1, progress=False, write_dataset=False)
    reference = _episodes(tmp_path / "here")
    assert len(reference) == 20
    for workers in (1, 2):
        out = tmp_path / f"ray{workers}"
        collect(cfg, out, progress=False, write_dataset=False, executor=RayExecutor(workers=workers))
        assert _same_episodes(_episodes(out), reference), f"Ray with {workers} worker(s) wrote other episodes"
        assert _same_file(out / "chunks.safetensors", tmp_path / "here" / "chunks.safetensors")


def test_paired_evaluation_on_ray_matches_in_process_for_every_arm(tmp_path, ray_address, critic_dir):
    cfg = EvalConfig(policy="toy:default", env="toy", tasks=TASKS, seeds=list(range(20000, 20006)),
                     split="validation", critic=str(critic_dir),
                     arms=standard_arms({"relative": 0.5}, ["unguided", "guided", "random", "best-of-4"]))

    def strip(records):
        return [{**r, "arms": {n: {k: v for k, v in a.items() if k not in TIMING} for n, a in r["arms"].items()}}
                for r in records]

    here = strip(run_eval(cfg, tmp_path / "here", workers=1, progress=False))
    there = strip(run_eval(cfg, tmp_path / "ray", progress=False, executor=RayExecutor(workers=2)))
    assert there == here
    assert {r["arms"]["guided"]["success"] for r in here} | {r["arms"]["unguided"]["success"] for r in here} \
        == {True, False}  # the comparison covers both outcomes


def _collect_dying_once(marker: str, doomed_seed: int, cfg_dict: dict, jobs: list) -> list[dict]:
    """``collect_episodes``, except that the first run of the job holding ``doomed_seed`` SIGKILLs its own worker
    process at env step 3 of that episode."""
    from gaflow.envs.toy import ToyReachEnv

    original = ToyReachEnv.step
    current = {"seed": None}

    def step(self, action):
        if current["seed"] == doomed_seed and self.steps == 3 and not os.path.exists(marker):
            Path(marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, action)

    ToyReachEnv.step = step
    try:
        out = []
        for job in jobs:  # one episode at a time, so the patched step knows which episode it is in
            current["seed"] = job[1]
            out += collect_episodes(cfg_dict, [job])
        return out
    finally:
        ToyReachEnv.step = original


def test_a_worker_killed_mid_episode_is_retried_and_every_episode_is_recorded_once(tmp_path, ray_address):
    cfg = CollectConfig(policy="toy:default", env="toy", tasks=["toy-reach"], seeds=list(range(12)))
    jobs = [(cfg.key(), [("toy-reach", s) for s in seeds]) for seeds in ([0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11])]
    marker = tmp_path / "killed_worker_pid"
    recorded: list[dict] = []
    run_jobs(RayExecutor(workers=2), _collect_dying_once, [(str(marker), 4, *job) for job in jobs], label="t",
             total=12, progress=False, on_result=lambda payloads: recorded.extend(payloads) or "")

    assert marker.exists()  # a worker did die in the middle of seed 4
    assert int(marker.read_text()) != os.getpid()
    assert sorted(p["seed"] for p in recorded) == list(range(12))  # each episode reached the driver once
    expected = {p["seed"]: p for p in collect_episodes(cfg.key(), [("toy-reach", s) for s in range(12)])}
    for p in recorded:
        e = expected[p["seed"]]
        assert {k: v for k, v in p["meta"].items() if k not in TIMING} == \
            {k: v for k, v in e["meta"].items() if k not in TIMING}
        assert all(torch.equal(p["tensors"][k], e["tensors"][k]) for k in e["tensors"] if k not in TIMING)


def test_a_job_that_raises_is_not_retried_and_the_error_reaches_the_driver(tmp_path, ray_address):
    cfg = CollectConfig(policy="toy:default", env="toy", tasks=["no-such-task"], seeds=[0])
    with pytest.raises(ValueError, match="unknown toy task"):
        list(RayExecutor(workers=2).run(collect_episodes, [(cfg.key(), [("no-such-task", 0)])]))


def _cpus_free_again(deadline_s: float) -> bool:
    deadline = time.time() + deadline_s
    while time.time() < deadline:
        if ray.available_resources().get("CPU", 0) == 2:
            return True
        time.sleep(0.1)
    return False


def test_a_killed_driver_leaves_no_ray_work_and_resumes_to_the_uninterrupted_result(tmp_path, ray_address):
    args = [sys.executable, "-m", "gaflow.cli", "collect", "--policy", "toy:default", "--env", "toy",
            "--tasks", "toy-reach", "--seeds", "0-119", "--no-dataset", "--backend", "ray",
            "--ray-address", ray_address]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*args, "--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + 120
    count = lambda: len(list(killed.glob("episodes/*/*.safetensors")))  # noqa: E731
    while count() < 8 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, f"the job ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    written = count()
    assert _cpus_free_again(15)  # Ray dropped the dead driver's jobs: both CPUs are free
    assert count() == written < 120  # nothing is written without a driver

    # re-run the same job (what the command builds: a different config would be refused by the job folder)
    cfg = CollectConfig(policy="toy:default", env="toy", tasks=["toy-reach"], seeds=list(range(120)))
    summary = collect(cfg, killed, progress=False, write_dataset=False, executor=RayExecutor())
    assert summary["collected_now"] == 120 - written
    fresh = tmp_path / "fresh"
    collect(cfg, fresh, workers=1, progress=False, write_dataset=False)
    lines = lambda p: [{k: v for k, v in json.loads(x).items() if k not in TIMING}  # noqa: E731
                       for x in (p / "episodes.jsonl").read_text().splitlines()]
    assert count() == 120
    assert lines(killed) == lines(fresh)
    assert _same_episodes(_episodes(killed), _episodes(fresh))


def test_a_node_with_other_code_is_refused_by_name(ray_address):
    ex = RayExecutor()
    ex.connect()  # this process and the local workers run the same tree: accepted
    other = {**code_fingerprint(), "torch": "0.0.1"}
    with pytest.raises(RuntimeError, match=r"torch 0\.0\.1 here vs .+ there"):
        ex.check_nodes_match(expected=other)


def test_backend_options_are_checked():
    with pytest.raises(ValueError, match="backend"):
        make_executor(2, backend="spark")
    with pytest.raises(ValueError, match="--ray-address needs --backend ray"):
        make_executor(2, ray_address="auto")
    assert isinstance(make_executor(1), InProcessExecutor)
    assert isinstance(make_executor(2, backend="ray"), RayExecutor)  # nothing starts until a job runs




@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc to find the job's processes")
def test_a_killed_driver_takes_its_local_ray_instance_with_it(tmp_path):
    marker = f"GAFLOW_TEST_JOB={uuid.uuid4().hex}"
    env = {**os.environ, marker.split("=")[0]: marker.split("=")[1]}
    args = [sys.executable, "-m", "gaflow.cli", "collect", "--policy", "toy:default", "--env", "toy",
            "--tasks", "toy-reach", "--seeds", "0-399", "--no-dataset", "--backend", "ray", "--workers", "2"]
    out = tmp_path / "killed"
    proc = subprocess.Popen([*args, "--out", str(out)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 180
    while len(list(out.glob("episodes/*/*.safetensors"))) < 8 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 20
    while marked_pids(marker) and time.time() < deadline:
        time.sleep(0.2)
    assert marked_pids(marker) == []  # GCS, raylet, agents and workers are gone

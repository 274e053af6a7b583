"""gaflow collect: labels, chunk table, dataset, and crash-safe resume (by actually killing a run)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gaflow.collect import CollectConfig, collect, episode_path
from gaflow.critic.data import ChunkTable

ROOT = Path(__file__).resolve().parents[1]


def cfg(seeds=range(12)):
    return CollectConfig(policy="toy:default", env="toy", tasks=["toy-reach", "toy-reach-far"], seeds=list(seeds))


def test_collect_writes_labelled_chunks_and_a_lerobot_dataset(tmp_path):
    summary = collect(cfg(range(3)), tmp_path, workers=1, progress=False, write_dataset=True)
    table = ChunkTable.load(tmp_path / "chunks.safetensors")
    assert summary["episodes"] == 6 and len(table) == summary["chunks"]
    assert table.chunk.shape[1:] == (6, 2)  # real action dims only (the toy policy pads to 3)
    assert set(table.features) == {"state"}
    for e, ep in enumerate(table.episodes):
        rows = (table.episode == e).nonzero().flatten()
        assert table.step[rows[0]] == 0 and (table.next_row[rows[-1]] == -1)
        if ep["success"]:
            assert int(table.reward[rows].sum()) == 1
            assert (table.steps_to_success[rows] == ep["first_success_step"] - table.step[rows]).all()
        else:
            assert (table.steps_to_success[rows] == -1).all() and int(table.reward[rows].sum()) == 0
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("gaflow/test", root=tmp_path / "dataset")
    assert ds.num_episodes == 6 and ds.num_frames == sum(e["length"] for e in table.episodes)
    assert {"observation.state", "action", "episode.success", "next.success"} <= set(ds.features)


def test_collect_refuses_to_mix_configs_in_one_folder(tmp_path):
    collect(cfg(range(2)), tmp_path, workers=1, progress=False, write_dataset=False)
    other = cfg(range(2))
    other.noise_seed = 5
    with pytest.raises(ValueError, match="noise_seed"):
        collect(other, tmp_path, workers=1, progress=False, write_dataset=False)


def test_killed_and_resumed_collection_equals_an_uninterrupted_one(tmp_path):
    args = [sys.executable, "-m", "gaflow.cli.__main__", "collect", "--policy", "toy:default", "--env", "toy",
            "--tasks", "toy-reach,toy-reach-far", "--seeds", "0-14", "--workers", "1", "--no-dataset"]
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([*args, "--out", str(killed)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        done = list(killed.glob("episodes/*/*.safetensors"))
        if len(done) >= 5:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    n_before = len(list(killed.glob("episodes/*/*.safetensors")))
    assert 5 <= n_before < 30, "the run must be killed part-way"
    assert not (killed / "chunks.safetensors").exists()
    subprocess.run([*args, "--out", str(killed)], cwd=ROOT, env=env, check=True, capture_output=True)
    fresh = tmp_path / "fresh"
    subprocess.run([*args, "--out", str(fresh)], cwd=ROOT, env=env, check=True, capture_output=True)
    a, b = ChunkTable.load(killed / "chunks.safetensors"), ChunkTable.load(fresh / "chunks.safetensors")
    assert len(a.episodes) == 30 and a.episodes == b.episodes
    for name in ("chunk", "episode", "step", "executed", "next_row", "success", "steps_to_success", "reward"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert torch.equal(a.features["state"], b.features["state"])
    lines = [json.loads(x) for x in (killed / "episodes.jsonl").read_text().splitlines()]
    assert len(lines) == 30 and len({(x["task"], x["seed"]) for x in lines}) == 30
    assert episode_path(killed, "toy-reach", 0).exists()

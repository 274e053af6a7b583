"""The dataset writer (``DatasetWriter``) and reader (``load_dataset`` / ``episode_table``) on small synthetic
LeRobot v3 datasets and toy-env episodes (no simulator needed)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("lerobot")

from gaflow.data.dataset import DatasetError, episode_table, load_dataset  # noqa: E402
from gaflow.data.writer import DatasetWriter  # noqa: E402
from gaflow.envs.registry import env_info, make_env  # noqa: E402
from gaflow.observations import stack_observations  # noqa: E402

SIZE = 8
LENGTHS = (5, 7)


def _image(ep: int, t: int) -> np.ndarray:
    rng = np.random.default_rng(100 * ep + t)
    return rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


COLUMNS = ("episode.seed", "episode.noise_std", "episode.success", "next.success")


def _frame(ep: int, t: int, n: int) -> dict:
    return {
        "observation.image": _image(ep, t),
        "observation.state": np.full(4, t, np.float32),
        "observation.environment_state": np.full(39, ep, np.float32),
        "action": np.array([ep, t, 0, 0], np.float32),  # identifies (episode, step)
        "next.success": ep == 1 and t == n - 1,
        "task": f"task number {ep}",
    }


def _write(root, images=True, lengths=LENGTHS):
    """MetaWorld-shaped frames through the writer: episode 1 succeeds at its last step."""
    info = env_info("metaworld", image_size=SIZE)
    with DatasetWriter(root, info if images else info.without_images(), COLUMNS) as writer:
        for ep, n in enumerate(lengths):
            for t in range(n):
                frame = _frame(ep, t, n)
                writer.add_frame(frame if images else {k: v for k, v in frame.items() if k != "observation.image"})
            writer.save_episode({"episode.seed": 10 + ep, "episode.noise_std": 0.5, "episode.success": ep == 1})
    return root


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("ds") / "synthetic")


def test_chunks_carry_the_next_actions_and_pad_past_the_episode_end(synthetic):
    ds = load_dataset(synthetic, chunk_len=4)
    item = ds[2]  # episode 0, step 2 of 5: steps 2, 3, 4 are real, one pad
    assert item["action"].shape == (4, 4)
    assert item["action"][:3, 1].tolist() == [2.0, 3.0, 4.0]
    assert (item["action"][:, 0] == 0).all(), "a chunk never reaches into the next episode"
    assert item["action_is_pad"].tolist() == [False, False, False, True]
    last = ds[LENGTHS[0] - 1]
    assert last["action_is_pad"].tolist() == [False, True, True, True]
    first_of_next = ds[LENGTHS[0]]
    assert first_of_next["action"][:, 0].tolist() == [1.0] * 4 and not first_of_next["action_is_pad"].any()


def test_without_chunk_len_items_are_single_frames(synthetic):
    item = load_dataset(synthetic)[3]
    assert item["action"].shape == (4,) and "action_is_pad" not in item


def test_loaded_images_match_stack_observations_of_the_raw_frame(synthetic):
    ds = load_dataset(synthetic)
    raw = {"observation.image": _image(1, 2), "observation.state": np.full(4, 2, np.float32),
           "observation.environment_state": np.full(39, 1, np.float32), "task": "task number 1"}
    batch = stack_observations([raw])
    item = ds[LENGTHS[0] + 2]
    for key in ("observation.image", "observation.state", "observation.environment_state"):
        assert item[key].dtype == batch[key].dtype
        assert np.array_equal(item[key].numpy(), batch[key][0].numpy()), key
    assert item["task"] == batch["task"][0]


def test_episode_table_lists_seed_noise_success_length(synthetic):
    rows = episode_table(load_dataset(synthetic))
    assert rows == [
        {"episode_index": 0, "task": "task number 0", "seed": 10, "noise_std": 0.5, "success": False, "length": 5},
        {"episode_index": 1, "task": "task number 1", "seed": 11, "noise_std": 0.5, "success": True, "length": 7},
    ]
    assert [r["episode_index"] for r in episode_table(load_dataset(synthetic, episodes=[1]))] == [1]


def test_missing_folder_is_named_and_not_created(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_dataset(missing)
    assert not missing.exists()


def test_folder_that_is_not_a_dataset_names_the_missing_file(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"meta/info\.json is missing"):
        load_dataset(tmp_path / "empty")


def test_wrong_version_corrupt_info_and_missing_files_are_reported(synthetic, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(synthetic, bad)
    info_path = bad / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps(info | {"codebase_version": "v2.1"}))
    with pytest.raises(DatasetError, match=r"info\.json: codebase_version is 'v2.1'"):
        load_dataset(bad)
    info_path.write_text("{not json")
    with pytest.raises(DatasetError, match=r"info\.json is not valid JSON"):
        load_dataset(bad)
    info_path.write_text(json.dumps(info))
    shutil.rmtree(bad / "data")
    with pytest.raises(DatasetError, match="no data files"):
        load_dataset(bad)


def test_corrupt_data_file_is_reported_with_the_folder(synthetic, tmp_path):
    bad = tmp_path / "corrupt"
    shutil.copytree(synthetic, bad)
    (data_file,) = (bad / "data").glob("*/*.parquet")
    data_file.write_bytes(b"this is not parquet")
    with pytest.raises(DatasetError, match=f"could not load the LeRobot dataset in {bad}"):
        load_dataset(bad)


def test_missing_required_feature_is_named(tmp_path):
    root = _write(tmp_path / "no_image", images=False, lengths=(3,))
    with pytest.raises(DatasetError, match=r"meta/info\.json lacks required feature\(s\) 'observation\.image'"):
        load_dataset(root)
    assert load_dataset(root, required_features=("action",)).num_frames == 3


def test_episode_table_reads_the_float_success_of_older_datasets(tmp_path):
    # Datasets written before gaflow settled on bool stored episode.success as float32 0/1.
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    feats = env_info("toy").lerobot_features() | {
        "episode.seed": {"dtype": "int64", "shape": (1,), "names": None},
        "episode.success": {"dtype": "float32", "shape": (1,), "names": None}}
    ds = LeRobotDataset.create(repo_id="local/old", fps=10, features=feats, root=tmp_path / "old", use_videos=False)
    for ep in range(2):
        for _ in range(2):
            ds.add_frame({"observation.state": np.zeros(4, np.float32),
                          "observation.environment_state": np.zeros(4, np.float32),
                          "action": np.zeros(2, np.float32), "episode.seed": np.array([ep], np.int64),
                          "episode.success": np.array([float(ep)], np.float32), "task": "t"})
        ds.save_episode()
    ds.finalize()
    rows = episode_table(load_dataset(tmp_path / "old", required_features=("action",)))
    assert [r["success"] for r in rows] == [False, True]


# ------------------------------------------------------------------------------------------------ writer
def _toy_episodes(seeds=(0, 1, 2)):
    """Real toy-env episodes (a fixed action), as (frames, success)."""
    env = make_env("toy", "toy-reach")
    info = env_info("toy", "toy-reach")
    episodes = []
    for seed in seeds:
        obs, frames, done = env.reset(seed), [], False
        while not done:
            info.check_observation(obs)  # the env emits exactly what env_info says
            action = np.array([0.5, -0.25], np.float32)
            next_obs, success, done, _ = env.step(action)
            frames.append(dict(obs) | {"action": action, "next.success": success})
            obs = next_obs
        episodes.append((seed, frames))
    return episodes


def _write_toy(root, episodes, **kwargs):
    with DatasetWriter(root, env_info("toy"), ("episode.seed", "episode.success", "next.success"), **kwargs) as w:
        for seed, frames in episodes:
            w.add_episode(frames, {"episode.seed": seed, "episode.success": any(f["next.success"] for f in frames)})
    return root


def test_writer_round_trips_frames_fps_and_bool_success(tmp_path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    episodes = _toy_episodes()
    root = _write_toy(tmp_path / "toy", episodes)
    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["fps"] == env_info("toy").fps == 10, "the fps is the env's control rate"
    assert info["features"]["episode.success"]["dtype"] == info["features"]["next.success"]["dtype"] == "bool"
    assert info["features"]["observation.state"]["names"] == ["x", "y", "goal_x", "goal_y"]
    ds = LeRobotDataset("local/toy", root=root)
    frames = [f for _, fs in episodes for f in fs]
    assert ds.num_episodes == 3 and ds.num_frames == len(frames)
    for i in (0, len(episodes[0][1]), len(frames) - 1):
        item = ds[i]
        np.testing.assert_array_equal(item["observation.state"].numpy(), frames[i]["observation.state"])
        np.testing.assert_array_equal(item["action"].numpy(), frames[i]["action"])
        assert item["next.success"].dtype == torch.bool and bool(item["next.success"]) == frames[i]["next.success"]
        assert item["task"] == "move the point to the goal"
    rows = episode_table(load_dataset(root, required_features=("action",)))
    assert [(r["seed"], r["success"], r["length"]) for r in rows] == [
        (seed, any(f["next.success"] for f in fs), len(fs)) for seed, fs in episodes]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"], "no temporary folder left behind"


def test_an_exception_mid_write_leaves_the_previous_dataset_untouched(tmp_path):
    episodes = _toy_episodes()
    root = _write_toy(tmp_path / "toy", episodes[:1])
    before = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    with pytest.raises(RuntimeError, match="simulated crash"):
        with DatasetWriter(root, env_info("toy"), ("episode.seed", "episode.success", "next.success"),
                           overwrite=True) as w:
            w.add_episode(episodes[1][1], {"episode.seed": 1, "episode.success": False})
            w.add_frame(episodes[2][1][0])
            raise RuntimeError("simulated crash")
    after = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"], "the temporary folder is removed"
    assert [r["seed"] for r in episode_table(load_dataset(root, required_features=()))] == [0]


def test_overwrite_replaces_and_refusal_names_the_flag(tmp_path):
    episodes = _toy_episodes()
    root = _write_toy(tmp_path / "toy", episodes[:1])
    with pytest.raises(FileExistsError, match="--overwrite"):
        _write_toy(root, episodes[1:])
    _write_toy(root, episodes[1:], overwrite=True)
    assert [r["seed"] for r in episode_table(load_dataset(root, required_features=()))] == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"]


def test_bad_frames_and_episode_values_are_named(tmp_path):
    (seed, frames), = _toy_episodes(seeds=(0,))
    with DatasetWriter(tmp_path / "x", env_info("toy"), ("episode.seed", "episode.success", "next.success")) as w:
        with pytest.raises(ValueError, match=r"'action' must have shape \(2,\)"):
            w.add_frame(frames[0] | {"action": np.zeros(3, np.float32)})
        with pytest.raises(ValueError, match=r"missing \['next.success'\]"):
            w.add_frame({k: v for k, v in frames[0].items() if k != "next.success"})
        with pytest.raises(ValueError, match=r"unexpected \['episode.seed'\]"):
            w.add_frame(frames[0] | {"episode.seed": 0})
        w.add_frame(frames[0])
        with pytest.raises(ValueError, match=r"missing \['episode.success'\]"):
            w.save_episode({"episode.seed": seed})
        w.save_episode({"episode.seed": seed, "episode.success": False})
    with pytest.raises(ValueError, match="column 'episode.sucess'"):
        DatasetWriter(tmp_path / "y", env_info("toy"), ("episode.sucess",))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]


def test_temporaries_of_killed_writers_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".toy.tmp-{int(dead.stdout)}-abcd1234"
    (stale / "dataset").mkdir(parents=True)
    live = tmp_path / f".toy.tmp-{os.getppid()}-abcd1234"  # a running process's: kept
    live.mkdir()
    _write_toy(tmp_path / "toy", _toy_episodes(seeds=(0,)))
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "toy"]


def test_collect_dataset_takes_fps_and_names_from_the_env(tmp_path):
    from gaflow.collect import CollectConfig, collect, episode_path, read_episode, write_lerobot_dataset

    cfg = CollectConfig(policy="toy:default", env="toy", tasks=["toy-reach"], seeds=[0, 1])
    collect(cfg, tmp_path / "job", workers=1, progress=False, write_dataset=False)
    episodes = [read_episode(episode_path(tmp_path / "job", "toy-reach", s)) for s in cfg.seeds]
    write_lerobot_dataset(tmp_path / "job" / "dataset", episodes, env="toy")
    info = json.loads((tmp_path / "job" / "dataset" / "meta" / "info.json").read_text())
    assert info["fps"] == 10 and info["features"]["action"]["names"] == ["dx", "dy"]
    assert info["features"]["episode.success"]["dtype"] == "bool"
    rows = episode_table(load_dataset(tmp_path / "job" / "dataset", required_features=("action",)))
    assert [(r["seed"], r["success"], r["length"]) for r in rows] == [
        (m["seed"], m["success"], m["length"]) for m, _ in episodes]

"""``load_dataset`` / ``episode_table`` on small synthetic LeRobot v3 datasets (no simulator needed)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("lerobot")

from gaflow.data.dataset import DatasetError, episode_table, load_dataset  # noqa: E402
from gaflow.data.demos import features  # noqa: E402
from gaflow.observations import stack_observations  # noqa: E402

SIZE = 8
LENGTHS = (5, 7)


def _image(ep: int, t: int) -> np.ndarray:
    rng = np.random.default_rng(100 * ep + t)
    return rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


def _write(root, feats=None, lengths=LENGTHS):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    feats = features(SIZE) if feats is None else feats
    ds = LeRobotDataset.create(repo_id=f"local/{root.name}", fps=80, features=feats, root=root, use_videos=False,
                               video_backend="pyav")
    for ep, n in enumerate(lengths):
        for t in range(n):
            frame = {
                "observation.image": _image(ep, t),
                "observation.state": np.full(4, t, np.float32),
                "observation.environment_state": np.full(39, ep, np.float32),
                "action": np.array([ep, t, 0, 0], np.float32),  # identifies (episode, step)
                "episode.seed": np.array([10 + ep], np.int64),
                "episode.noise_std": np.array([0.5], np.float32),
                "episode.success": np.array([float(ep == 1)], np.float32),
                "next.success": np.array([float(ep == 1 and t == n - 1)], np.float32),
                "task": f"task number {ep}",
            }
            ds.add_frame({k: v for k, v in frame.items() if k in feats or k == "task"})
        ds.save_episode()
    ds.finalize()
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
    feats = {k: v for k, v in features(SIZE).items() if k != "observation.image"}
    root = _write(tmp_path / "no_image", feats=feats, lengths=(3,))
    with pytest.raises(DatasetError, match=r"meta/info\.json lacks required feature\(s\) 'observation\.image'"):
        load_dataset(root)
    assert load_dataset(root, required_features=("action",)).num_frames == 3

"""``gaflow demos``: scripted MetaWorld demonstrations written as a LeRobotDataset v3, atomically."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("metaworld")
pytest.importorskip("lerobot")

from gaflow.data.dataset import episode_table, load_dataset  # noqa: E402
from gaflow.data.writer import check_target  # noqa: E402
from gaflow.demos.metaworld import DemoConfig, rollout_expert, write_demos  # noqa: E402
from gaflow.envs.metaworld import MetaWorldEnv  # noqa: E402

SIZE = 32
# reach with σ=0.1 and a 38-step cap: seed 0 first succeeds at step 40 (so it fails here), seed 1 at step 33
# (recorded until 33 + 2 = 35). Both numbers come from the deterministic (task, seed) episodes.
CFG = dict(tasks=["reach"], episodes_per_task=2, noise=0.1, seed_start=0, image_size=SIZE, max_steps=38,
           steps_after_success=2)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demos") / "reach_demos"
    records = write_demos(DemoConfig(out=out, **CFG))
    assert [(r.seed, r.success, r.length, r.first_success_step) for r in records] == [
        (0, False, 38, None), (1, True, 35, 33)]
    return out


def test_dataset_has_the_exact_schema(demo_dir):
    info = json.loads((demo_dir / "meta" / "info.json").read_text())
    assert info["codebase_version"].startswith("v3") and info["fps"] == 80 and info["robot_type"] == "sawyer"
    feats = info["features"]
    expected = {
        "observation.image": ("image", [SIZE, SIZE, 3]),
        "observation.state": ("float32", [4]),
        "observation.environment_state": ("float32", [39]),
        "action": ("float32", [4]),
        "episode.seed": ("int64", [1]),
        "episode.noise_std": ("float32", [1]),
        "episode.success": ("bool", [1]),
        "next.success": ("bool", [1]),
    }
    for name, (dtype, shape) in expected.items():
        assert (feats[name]["dtype"], list(feats[name]["shape"])) == (dtype, shape), name
    assert not list(demo_dir.glob("videos")), "images live in parquet (use_videos=False): no ffmpeg needed"
    assert not list(demo_dir.parent.glob(".reach_demos*")), "no temporary folder left behind"
    provenance = json.loads((demo_dir / "meta" / "gaflow_demos.json").read_text())
    assert provenance["noise"] == 0.1 and provenance["max_steps_per_task"] == {"reach": 38}


def test_episode_table_reports_seed_noise_success_and_length(demo_dir):
    table = episode_table(load_dataset(demo_dir))
    assert [(r["episode_index"], r["seed"], r["noise_std"], r["success"], r["length"]) for r in table] == [
        (0, 0, 0.1, False, 38), (1, 1, 0.1, True, 35)]
    assert {r["task"] for r in table} == {"move the gripper to the goal"}


def test_frames_hold_the_executed_noisy_actions_and_per_step_success(demo_dir):
    ds = load_dataset(demo_dir)
    cols = ds.hf_dataset.with_format(None).to_pandas()
    ep1 = cols[cols["episode_index"] == 1]
    # Regenerate episode (reach, 1) with a state-only env: same placement, same noise stream, same actions.
    env = MetaWorldEnv("reach", render=False, max_steps=38, terminate_on_success=False)
    frames = list(rollout_expert(env, seed=1, noise=0.1, steps_after_success=2))
    np.testing.assert_array_equal(np.stack(ep1["action"].to_numpy()), np.stack([f["action"] for f in frames]))
    np.testing.assert_array_equal(np.stack(ep1["observation.environment_state"].to_numpy()),
                                  np.stack([f["observation.environment_state"] for f in frames]))
    next_success = [bool(np.ravel(v)[0]) for v in ep1["next.success"]]
    assert next_success.index(True) == 32, "first success after step 33"
    assert next_success == [f["next.success"] for f in frames]
    assert {bool(np.ravel(v)[0]) for v in ep1["episode.success"]} == {True}
    assert np.all(np.abs(np.stack(ep1["action"].to_numpy())) <= 1.0)


def test_stored_image_is_the_rendered_observation(demo_dir):
    ds = load_dataset(demo_dir)
    env = MetaWorldEnv("reach", image_size=SIZE)
    obs = env.reset(seed=0)
    env.close()
    from gaflow.observations import stack_observations

    assert np.array_equal(ds[0]["observation.image"].numpy(), stack_observations([obs])["observation.image"][0].numpy())


def test_action_chunks_are_padded_past_the_episode_end(demo_dir):
    ds = load_dataset(demo_dir, chunk_len=5)
    last0 = 37  # last frame of episode 0 (38 frames)
    item = ds[last0]
    assert item["action"].shape == (5, 4) and item["action_is_pad"].tolist() == [False] + [True] * 4
    item = ds[last0 - 2]
    assert item["action_is_pad"].tolist() == [False, False, False, True, True]
    flat = load_dataset(demo_dir)
    for k in range(3):  # the real part of the chunk is the next actions of the same episode
        assert np.array_equal(item["action"][k].numpy(), flat[last0 - 2 + k]["action"].numpy())
    first1 = ds[38]
    assert first1["episode_index"] == 1 and not first1["action_is_pad"].any()


def test_refuses_to_overwrite_an_existing_dataset(demo_dir):
    with pytest.raises(FileExistsError, match=f"{demo_dir}.*--overwrite"):
        write_demos(DemoConfig(out=demo_dir, **CFG))
    other = demo_dir.parent / "not_a_dataset"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a LeRobot dataset"):
        check_target(other, overwrite=True)


def test_overwrite_replaces_the_dataset_in_one_rename(tmp_path):
    out = tmp_path / "d"
    small = dict(CFG, episodes_per_task=1, max_steps=3)
    write_demos(DemoConfig(out=out, **small))
    write_demos(DemoConfig(out=out, overwrite=True, **dict(small, seed_start=7)))
    assert [r["seed"] for r in episode_table(load_dataset(out))] == [7]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"], "no temporary or old folder left behind"


def test_a_crash_leaves_no_dataset_at_the_target(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_step = MetaWorldEnv.step

    def flaky_step(self, action):
        calls["n"] += 1
        if calls["n"] > 4:
            raise KeyboardInterrupt("simulated crash")
        return real_step(self, action)

    monkeypatch.setattr(MetaWorldEnv, "step", flaky_step)
    with pytest.raises(KeyboardInterrupt):
        write_demos(DemoConfig(out=tmp_path / "d", **dict(CFG, max_steps=3)))
    assert list(tmp_path.iterdir()) == []


def test_rollout_stops_a_few_steps_after_first_success():
    env = MetaWorldEnv("reach", render=False, max_steps=150, terminate_on_success=False)
    frames = list(rollout_expert(env, seed=3, noise=0.0, steps_after_success=4))
    flags = [f["next.success"] for f in frames]
    first = flags.index(True)
    assert len(frames) == first + 1 + 4 and "observation.image" not in frames[0]


def test_bad_config_fields_are_named(tmp_path):
    with pytest.raises(ValueError, match="noise"):
        write_demos(DemoConfig(out=tmp_path / "x", noise=-1.0))
    with pytest.raises(ValueError, match="unknown MetaWorld v3 task 'nope'"):
        write_demos(DemoConfig(out=tmp_path / "x", tasks=["nope"]))
    assert not (tmp_path / "x").exists()


def test_cli_refuses_to_overwrite_and_names_the_path(demo_dir):
    from typer.testing import CliRunner

    from gaflow.cli import app

    result = CliRunner().invoke(app, ["demos", "--tasks", "reach", "--out", str(demo_dir)])
    assert result.exit_code == 2
    assert "already exists" in result.output and "--overwrite" in result.output

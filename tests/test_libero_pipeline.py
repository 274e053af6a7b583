"""collect → train-critic → eval on LIBERO with a LeRobot policy (tiny offline SmolVLA, random weights).

Success rates mean nothing here; the plumbing is real: LeRobot checkpoint loaded through `lerobot:<dir>`, the
suite's init states as seeds, two cameras, the policy's own pre/post-processors, critic features from the frozen
VLM, guided and unguided arms on the same episodes.
"""

import pytest
import torch

from gaflow.collect import CollectConfig, collect
from gaflow.critic.data import ChunkTable
from gaflow.critic.train import CriticTrainConfig, train_critic
from gaflow.evaluation.runner import EvalConfig, run_eval, standard_arms, summarize

pytest.importorskip("libero")  # part of the locked environment; this guards only a broken install

ENV = "libero:libero_spatial?cameras=1&image_size=32"


def test_libero_collect_critic_eval_with_a_tiny_lerobot_smolvla(tmp_path):
    from gaflow.testing.lerobot_tiny import OfflineModelConfig, save_offline_checkpoint

    torch.set_num_threads(1)
    ckpt = save_offline_checkpoint(
        OfflineModelConfig(family="smolvla", action_dim=7, state_dim=8,
                           cameras=("observation.images.image", "observation.images.wrist_image")),
        tmp_path / "smolvla")
    policy = f"lerobot:{ckpt}"
    summary = collect(CollectConfig(policy=policy, env=ENV, tasks=["0"], seeds=[0, 1], max_steps=6,
                                    n_action_steps=3, num_steps=3, record_images=False),
                      tmp_path / "collect", workers=1, progress=False, write_dataset=False)
    table = ChunkTable.load(tmp_path / "collect" / "chunks.safetensors")
    assert summary["episodes"] == 2 and len(table) == 4  # 6 steps, 3 executed per chunk
    assert table.chunk.shape[-1] == 7  # only the real action dims, not LeRobot's 32-dim padding
    assert {"task", "observation", "state"} <= set(table.features)
    table.episodes[0]["success"], table.success[table.episode == 0] = True, 1  # both outcomes for the split
    table.save(tmp_path / "collect" / "chunks.safetensors")
    train_critic(table, CriticTrainConfig(features=("task", "observation", "state"), hidden=(16,), members=2,
                                          epochs=2, val_fraction=0.5), out_dir=tmp_path / "critic", progress=False)
    ev = EvalConfig(policy=policy, env=ENV, tasks=["0"], seeds=[2], split="unsplit",
                    arms=standard_arms({"relative": 0.1}, ["unguided", "guided", "zero"]),
                    critic=str(tmp_path / "critic"), n_action_steps=3, num_steps=3, max_steps=6)
    records = run_eval(ev, tmp_path / "eval", workers=1, progress=False)
    m = summarize(records, ["unguided", "guided", "zero"])
    assert m["unpaired_episodes"] == []  # every arm started from the suite's init state 2
    arms = records[0]["arms"]
    assert arms["guided"]["guidance"]["ratio_median"] == pytest.approx(0.1, rel=1e-3)
    assert arms["zero"]["length"] == arms["unguided"]["length"] == 6


def test_libero_study_pipeline_runs_end_to_end_at_a_tiny_size(tmp_path):
    """`gaflow demo --preset libero-tiny`: expert demos on critic inits only → state-based compact policy → rollouts
    → critic → validation sweep → locked test, with every split drawn from LIBERO's init-state split."""
    import json

    from rich.console import Console

    from gaflow.evaluation.splits import LIBERO_SPLITS
    from gaflow.experiments import preset
    from gaflow.pipeline import run_pipeline

    torch.set_num_threads(1)
    cfg = preset("libero-tiny")
    out = run_pipeline(cfg, tmp_path, console=Console(quiet=True))
    sidecar = json.loads((tmp_path / "demos" / "meta" / "gaflow_libero.json").read_text())
    assert [e["init_index"] for e in sidecar["episodes"]] == [0, 1]  # demos come from the critic inits
    pol = json.loads((tmp_path / "policy" / "config.json").read_text())["policy"]
    assert (pol["use_image"], pol["use_env_state"], pol["action_dim"], pol["state_dim"], pol["env_state_dim"]) == (
        False, True, 7, 8, 39)
    sweep = json.loads((tmp_path / "sweep" / "locked.json").read_text())
    assert all(LIBERO_SPLITS.which(s) == "validation" for s in sweep["seeds"])
    metrics = json.loads((tmp_path / "test" / "metrics.json").read_text())
    assert metrics["seed_range"] == "35–36" and metrics["unpaired_episodes"] == []
    assert set(out["metrics"]["pooled"]) == {"unguided", "guided", "zero", "random"}

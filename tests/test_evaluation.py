"""Paired evaluation, validation-only sweeps and locked test configs (on the fast toy env)."""

import json

import pytest
from typer.testing import CliRunner

from gaflow.cli import app
from gaflow.collect import CollectConfig, collect
from gaflow.critic.data import ChunkTable
from gaflow.critic.train import CriticTrainConfig, train_critic
from gaflow.evaluation.runner import EvalConfig, run_eval, standard_arms, summarize
from gaflow.evaluation.splits import DEFAULT_SPLITS, SplitViolation, resolve_seeds
from gaflow.evaluation.sweep import load_locked, record_test_use, run_sweep

TASKS = ["toy-reach", "toy-reach-far"]


@pytest.fixture(scope="module")
def critic_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    collect(CollectConfig(policy="toy:default", env="toy", tasks=TASKS, seeds=DEFAULT_SPLITS.seeds("critic", 40)),
            root / "collect", workers=1, progress=False, write_dataset=False)
    table = ChunkTable.load(root / "collect" / "chunks.safetensors")
    train_critic(table, CriticTrainConfig(features=("state",), hidden=(64, 64), epochs=10, lr=1e-3),
                 out_dir=root / "critic", progress=False)
    return root / "critic"


def test_every_arm_sees_identical_initial_states_and_zero_matches_unguided(tmp_path, critic_dir):
    guided = {"relative": 0.5}
    cfg = EvalConfig(policy="toy:default", env="toy", tasks=TASKS, seeds=DEFAULT_SPLITS.seeds("validation", 8),
                     split="validation", arms=standard_arms(guided, ["unguided", "guided", "zero", "random"]),
                     critic=str(critic_dir))
    records = run_eval(cfg, tmp_path, workers=1, progress=False)
    assert len(records) == 16
    for r in records:
        states = [tuple(a["init_state"]) for a in r["arms"].values()]
        assert len(set(states)) == 1 and len(states[0]) == 4
        assert r["arms"]["zero"]["success"] == r["arms"]["unguided"]["success"]
        assert r["arms"]["zero"]["length"] == r["arms"]["unguided"]["length"]
    # different seeds are different episodes
    assert len({tuple(r["arms"]["unguided"]["init_state"]) for r in records}) == 16
    m = summarize(records, ["unguided", "guided", "zero", "random"])
    assert m["unpaired_episodes"] == []
    assert m["pooled"]["zero"]["lift"] == 0 and m["pooled"]["zero"]["fail_to_success"] == 0
    assert m["pooled"]["guided"]["leads_with"] == "unclustered"  # every seed its own initial state
    assert m["pooled"]["guided"]["guidance"]["ratio_median"] == pytest.approx(0.5, rel=1e-3)
    # resuming a finished run re-runs nothing and returns the same records
    assert run_eval(cfg, tmp_path, workers=1, progress=False) == records


def test_sweep_never_touches_test_seeds(tmp_path, critic_dir):
    with pytest.raises(SplitViolation):
        resolve_seeds("test:10", purpose="tune")
    with pytest.raises(SplitViolation):
        resolve_seeds(f"{DEFAULT_SPLITS.ranges['test'][0]}-{DEFAULT_SPLITS.ranges['test'][0] + 3}", purpose="tune")
    test_cfg = EvalConfig(policy="toy:default", env="toy", tasks=TASKS, seeds=DEFAULT_SPLITS.seeds("test", 2),
                          split="test", critic=str(critic_dir))
    with pytest.raises(SplitViolation):
        run_sweep(test_cfg, [{"relative": 0.1}], tmp_path / "bad", progress=False)
    seeds, split = resolve_seeds("validation:4", purpose="tune")
    val_cfg = EvalConfig(policy="toy:default", env="toy", tasks=TASKS, seeds=seeds, split=split, critic=str(critic_dir))
    res = run_sweep(val_cfg, [{"relative": 0.1}, {"relative": 0.5}], tmp_path / "sweep", progress=False)
    recorded = {(r["task"], r["seed"]) for r in map(json.loads, map(lambda p: p.read_text(),
                                                                     (tmp_path / "sweep").glob("episodes/*/*.json")))}
    assert all(DEFAULT_SPLITS.which(s) == "validation" for _, s in recorded)
    locked = load_locked(tmp_path / "sweep" / "locked.json")
    assert locked["split"] == "validation" and locked["guidance"] in [r["config"] for r in res["rows"]]
    best = max(r["rate"] for r in res["rows"])
    chosen = next(r for r in res["rows"] if r["config"] == locked["guidance"])
    assert chosen["rate"] == best


def test_locked_config_tampering_and_retuning_are_visible(tmp_path, critic_dir):
    from gaflow.guidance import GuidanceConfig

    cfg = GuidanceConfig(relative=0.2)
    lock = {"guidance": cfg.to_dict(), "hash": cfg.config_hash(), "locked_at": "t0", "rule": "r", "split": "validation"}
    path = tmp_path / "locked.json"
    path.write_text(json.dumps(lock))
    assert record_test_use(path, load_locked(path), tmp_path / "run1")["relocked_after_test"] is False
    tampered = {**lock, "guidance": {**lock["guidance"], "relative": 0.4}}
    path.write_text(json.dumps(tampered))
    with pytest.raises(ValueError, match="edited after it was locked"):
        load_locked(path)
    cfg2 = GuidanceConfig(relative=0.4)
    path.write_text(json.dumps({**lock, "guidance": cfg2.to_dict(), "hash": cfg2.config_hash(), "locked_at": "t1"}))
    assert record_test_use(path, load_locked(path), tmp_path / "run2")["relocked_after_test"] is True


def test_eval_cli_refuses_unlocked_guidance_on_test(tmp_path, critic_dir):
    g = tmp_path / "g.json"
    g.write_text(json.dumps({"relative": 0.3}))
    res = CliRunner().invoke(app, ["eval", "--policy", "toy:default", "--env", "toy", "--tasks", "toy-reach",
                                   "--seeds", "test:2", "--critic", str(critic_dir), "--guidance", str(g),
                                   "--out", str(tmp_path / "run")])
    assert res.exit_code != 0 and "locked" in (res.output + str(res.exception))
    assert not (tmp_path / "run" / "episodes").exists()


def hand_records(states: list[int], guided: list[bool], task: str = "push") -> list[dict]:
    """Paired records: the baseline always fails; episode i starts from initial state ``states[i]``."""
    def arm(success, state):
        return {"success": success, "length": 10, "chunk_latency_ms": 1.0, "init_state_sha": f"s{state}"}

    return [{"task": task, "seed": i, "arms": {"unguided": arm(False, s), "guided": arm(g, s)}}
            for i, (s, g) in enumerate(zip(states, guided, strict=True))]


def test_repeated_initial_states_lead_with_clustered_statistics():
    from gaflow.evaluation.report import legend, markdown_table

    # 5 initial states × 2 noise repeats; guidance wins both repeats of states 0–2 and neither of 3–4
    records = hand_records([0, 0, 1, 1, 2, 2, 3, 3, 4, 4], [True] * 6 + [False] * 4)
    m = summarize(records, ["unguided", "guided"])
    g = m["pooled"]["guided"]
    assert g["leads_with"] == "clustered" and g["clustered"]["clusters"] == 5
    assert g["mcnemar_p"] == 2 / 64  # 6 independent-looking flips
    assert g["clustered"]["p_value"] == pytest.approx(2 / 8)  # 3 states moved: 2 of 2^3 sign patterns
    # resampling 5 states, 3 of them winners: P(no winner) = 1.0% < 2.5% < P(≤ 1) = 8.7%; P(all) = 7.8%
    assert g["clustered"]["lift_ci95"] == pytest.approx([0.2, 1.0])
    assert g["lift_ci95"] == pytest.approx([0.3, 0.9])  # 10 "independent" episodes: narrower
    assert g["clustered"]["ci95"] == g["clustered"]["lift_ci95"]  # the baseline never succeeds
    assert m["pooled"]["unguided"]["clustered"]["ci95"] == [0.0, 0.0]
    assert "sign-flip" in g["clustered"]["method"] and "exact" in g["clustered"]["method"]
    assert m["per_task"]["push"]["guided"]["clustered"] == g["clustered"]
    table = markdown_table(m["pooled"])
    assert "p (clustered)" in table and "| 5 | [20.0, 100.0] | +60.0 [+20.0, +100.0] | 0.25 |" in table
    assert "read the clustered columns" in legend(m)


def test_one_episode_per_initial_state_gives_the_unclustered_numbers():
    from gaflow.evaluation.report import legend, markdown_table

    records = hand_records(list(range(10)), [True] * 6 + [False] * 4)
    m = summarize(records, ["unguided", "guided"])
    g = m["pooled"]["guided"]
    assert g["leads_with"] == "unclustered" and g["clustered"]["clusters"] == 10
    assert (g["clustered"]["ci95"], g["clustered"]["lift_ci95"], g["clustered"]["p_value"]) == (
        g["ci95"], g["lift_ci95"], g["mcnemar_p"])
    assert "clustered" not in markdown_table(m["pooled"]) and "clustered" not in legend(m)
    # the same initial-state hash in two tasks is two initial states
    two_tasks = hand_records([0] * 5, [True] * 5, "push") + hand_records([0] * 5, [True] * 5, "pick")
    assert summarize(two_tasks, ["unguided", "guided"])["pooled"]["guided"]["clustered"]["clusters"] == 2

"""Paired evaluation, validation-only sweeps and locked test configs (on the fast toy env)."""

import dataclasses
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gaflow.cli import app
from gaflow.collect import CollectConfig, collect
from gaflow.critic.data import ChunkTable
from gaflow.critic.train import CriticTrainConfig, train_critic
from gaflow.evaluation.runner import EvalConfig, run_eval, standard_arms, summarize
from gaflow.evaluation.splits import DEFAULT_SPLITS, SplitViolation, resolve_seeds
from gaflow.evaluation.sweep import check_lock_binds, load_locked, lock_critic, run_sweep

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
    assert locked["split"] == "validation"
    best = max(res["rows"], key=lambda r: (r["lcb"], -r["strength"]))
    assert locked["guidance"] == (best["config"] if best["lcb"] > 0 else None)


def _records(diffs_by_task: dict[str, list[tuple[int, int]]], arm: str = "cfg0") -> list[dict]:
    """Hand-made sweep records: (unguided success, arm success) per episode, each its own initial state."""
    out = []
    for task, pairs in diffs_by_task.items():
        for i, (u, g) in enumerate(pairs):
            out.append({"task": task, "seed": i, "arms": {"unguided": {"success": bool(u), "init_state_sha": f"{i}"},
                                                          arm: {"success": bool(g), "init_state_sha": f"{i}"}}})
    return out


def test_validation_rule_locks_unguided_on_a_coin_flip_and_a_config_on_clear_evidence():
    from gaflow.evaluation.sweep import choose, paired_evidence

    coin = _records({"t": [(0, 1)] * 7 + [(1, 0)] * 6 + [(1, 1)] * 7})  # 13 vs 12 net: the demo's old lock
    ev = paired_evidence(coin, "cfg0")
    assert ev["lift"] == pytest.approx(1 / 20) and ev["lcb"] < 0 and ev["p"] == pytest.approx(0.5)  # C(13,≥7)/2^13
    assert choose([{**ev, "strength": 0.1, "config": {"relative": 0.1}}]) is None  # → unguided
    clear = _records({"t": [(0, 1)] * 8 + [(1, 1)] * 12})  # 8 up, 0 down
    ev = paired_evidence(clear, "cfg0")
    assert ev["lift"] == pytest.approx(0.4) and ev["lcb"] > 0.2 and ev["p"] == pytest.approx(2 ** -8)
    strong, weak = {**ev, "strength": 0.4, "config": "strong"}, {**ev, "strength": 0.1, "config": "weak"}
    harmful = {**paired_evidence(_records({"t": [(1, 0)] * 8}), "cfg0"), "strength": 0.2, "config": "bad"}
    assert harmful["p"] > 0.5 and choose([strong, weak, harmful])["config"] == "weak"  # ties: the weaker strength
    # repeats of one initial state count once: 8 ups from one initial state are one piece of evidence
    one_state = [dict(r, arms={k: dict(v, init_state_sha="same") for k, v in r["arms"].items()}) for r in clear]
    assert paired_evidence(one_state, "cfg0")["p"] == pytest.approx(0.5)
    assert choose([{**paired_evidence(one_state, "cfg0"), "strength": 0.1, "config": "x"}]) is None


def _sweep(tmp_path, critic_dir, name="sweep", seeds=None):
    seeds = seeds or DEFAULT_SPLITS.seeds("validation", 3)
    ev = EvalConfig(policy="toy:default", env="toy", tasks=["toy-reach"], seeds=seeds, split="validation",
                    critic=str(critic_dir))
    run_sweep(ev, [{"relative": 0.2}], tmp_path / name, progress=False, rule="fixed")  # a lock with a config
    return tmp_path / name / "locked.json", ev


def test_a_lock_binds_its_experiment_and_refuses_edits_copies_and_hand_written_locks(tmp_path, critic_dir):
    import shutil

    from gaflow.guidance import GuidanceConfig

    path, ev = _sweep(tmp_path, critic_dir)
    locked = load_locked(path)
    assert Path(lock_critic(locked, path)).resolve() == critic_dir.resolve()
    test_ev = dataclasses.replace(ev, seeds=DEFAULT_SPLITS.seeds("test", 2), split="test")
    check_lock_binds(locked, test_ev)  # the same experiment: accepted
    for field, value, named in (("max_steps", 7, "max_steps"), ("noise_seed", 3, "noise_seed"),
                                ("num_steps", 4, "num_steps"), ("tasks", ["toy-reach-far"], "tasks"),
                                ("policy", "toy:std=0.9", "policy_id")):
        with pytest.raises(ValueError, match=named):
            check_lock_binds(locked, dataclasses.replace(test_ev, **{field: value}))
    other_critic = tmp_path / "critic_copy"
    shutil.copytree(critic_dir, other_critic)
    (other_critic / "critic.safetensors").write_bytes(b"different weights")  # a different critic checkpoint
    with pytest.raises(ValueError, match="critic_id"):
        check_lock_binds(locked, dataclasses.replace(test_ev, critic=str(other_critic)))
    # edited after locking: guidance (hash) or anything else (digest)
    data = json.loads(path.read_text())
    for edited, msg in (({**data, "tasks": ["x"]}, "digest"),
                        ({**data, "binding": {**data["binding"], "max_steps": 99}}, "digest"),
                        ({**data, "guidance": {**data["guidance"], "relative": 0.9}}, "hash")):
        bad = tmp_path / "edited" / "locked.json"
        bad.parent.mkdir(exist_ok=True)
        shutil.copytree(path.parent / "episodes", bad.parent / "episodes", dirs_exist_ok=True)
        bad.write_text(json.dumps(edited))
        with pytest.raises(ValueError, match=msg):
            load_locked(bad)
    # copied away from the sweep that wrote it, or written by hand
    lone = tmp_path / "lone" / "locked.json"
    lone.parent.mkdir()
    shutil.copy(path, lone)
    with pytest.raises(ValueError, match="validation record"):
        load_locked(lone)
    cfg = GuidanceConfig(relative=0.2)
    lone.write_text(json.dumps({"guidance": cfg.to_dict(), "hash": cfg.config_hash(), "locked_at": "t0",
                                "rule": "r", "split": "validation"}))
    with pytest.raises(ValueError, match="not a lock written by"):
        load_locked(lone)
    # the sweep folder and the critic moved together: the lock still resolves its critic
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "sweep", moved / "runs" / "sweep")
    shutil.copytree(critic_dir, moved / "runs" / "critic")
    relocated = json.loads(path.read_text())
    assert relocated["critic"] == os.path.relpath(critic_dir, tmp_path / "sweep")


def test_sweep_refuses_seeds_outside_validation_whatever_the_label(tmp_path, critic_dir):
    for seeds in (DEFAULT_SPLITS.seeds("critic", 3), DEFAULT_SPLITS.seeds("demos", 3), [40000, 40001]):
        ev = EvalConfig(policy="toy:default", env="toy", tasks=["toy-reach"], seeds=seeds, split="validation",
                        critic=str(critic_dir))
        with pytest.raises(SplitViolation, match="validation seeds only"):
            run_sweep(ev, [{"relative": 0.2}], tmp_path / f"s{seeds[0]}", progress=False)
        assert not (tmp_path / f"s{seeds[0]}" / "episodes").exists()


def test_a_second_read_of_test_episodes_is_refused_unless_forced_and_the_report_says_which_read(tmp_path):
    from gaflow.evaluation.ledger import Ledger, TestReread, read_header

    test = DEFAULT_SPLITS.seeds("test", 3)
    ev = EvalConfig(policy="toy:default", env="toy", tasks=["toy-reach"], seeds=test, split="test")
    first = run_eval(ev, tmp_path / "a", workers=1, progress=False)
    assert read_header(tmp_path / "a")["read_index"] == 1
    run_eval(ev, tmp_path / "a", workers=1, progress=False)  # resuming the same run is the same read
    own = lambda: [r for r in Ledger().reads().values() if not r.get("prior")]  # noqa: E731  (not BENCHMARKS' history)
    assert len(own()) == 1
    with pytest.raises(TestReread, match="already read"):
        run_eval(ev, tmp_path / "b", workers=1, progress=False)
    # a range labelled 'validation' that straddles into test is caught by value
    sneaky = dataclasses.replace(ev, seeds=[DEFAULT_SPLITS.ranges["validation"][1] - 1, test[0]], split="validation")
    with pytest.raises(TestReread):
        run_eval(sneaky, tmp_path / "c", workers=1, progress=False)
    forced = run_eval(ev, tmp_path / "b", workers=1, progress=False, force_reread=True)
    header = read_header(tmp_path / "b")
    assert header["read_index"] == 2 and header["forced"]
    wins = sum(r["arms"]["unguided"]["success"] for r in first)
    assert header["earlier"][0]["results"] == {"toy-reach": {"unguided": f"{wins}/3"}}
    timing = ("chunk_latency_ms", "wall_s")
    same = lambda recs: [{k: v for k, v in r["arms"]["unguided"].items() if k not in timing} for r in recs]  # noqa: E731
    assert same(forced) == same(first)
    # fresh test seeds are a first read; validation seeds are no read at all
    fresh = dataclasses.replace(ev, seeds=DEFAULT_SPLITS.seeds("test", 5)[3:])
    run_eval(fresh, tmp_path / "d", workers=1, progress=False)
    assert read_header(tmp_path / "d")["read_index"] == 1
    run_eval(dataclasses.replace(ev, seeds=DEFAULT_SPLITS.seeds("validation", 2), split="validation"),
             tmp_path / "e", workers=1, progress=False)
    assert read_header(tmp_path / "e") is None and len(own()) == 3  # a, b (forced), d


def test_collect_refuses_test_seeds(tmp_path):
    cfg = CollectConfig(policy="toy:default", env="toy", tasks=["toy-reach"], seeds=DEFAULT_SPLITS.seeds("test", 2))
    with pytest.raises(SplitViolation, match="test"):
        collect(cfg, tmp_path / "c", workers=1, progress=False, write_dataset=False)
    assert not (tmp_path / "c").exists()


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


def test_test_reads_made_before_the_ledger_count_as_earlier_reads():
    from gaflow.evaluation.ledger import Ledger, policy_identity
    from gaflow.experiments import preset

    ledger, pid = Ledger(), policy_identity("compact:builtin")
    hits = ledger.overlapping(pid, "metaworld", {"push-wall": [30005, 30190]})
    assert [h["read_id"] for h in hits] == ["prior-s10-study", "prior-s10-heldout"]
    assert hits[0]["shared"] == {"push-wall": "30005"} and hits[0]["results"]["push-wall"]["guided"] == "81/100"
    assert ledger.overlapping(policy_identity("toy:default"), "metaworld", {"push-wall": [30005]}) == []
    cfg = preset("default")  # the default demo's test block: read once, by BENCHMARKS §12's run of it, after §10's
    seeds = DEFAULT_SPLITS.seeds("test", cfg.test_offset + cfg.test_episodes)[cfg.test_offset:]
    earlier = ledger.overlapping(pid, "metaworld", {t: seeds for t in cfg.tasks})
    assert [e.get("ledger_read_id", e["read_id"]) for e in earlier] == ["693d5162a5774d25"]
    assert cfg.reproduces_published_read  # so a rerun goes ahead, and its report says it is read 2


def test_a_run_folder_that_moves_with_its_critic_resumes(tmp_path, critic_dir):
    import shutil

    tree = tmp_path / "tree"
    shutil.copytree(critic_dir, tree / "critic")
    cfg = EvalConfig(policy="toy:default", env="toy", tasks=["toy-reach"], seeds=DEFAULT_SPLITS.seeds("validation", 2),
                     split="validation", arms=standard_arms({"relative": 0.3}, ["unguided", "guided"]),
                     critic=str(tree / "critic"))
    first = run_eval(cfg, tree / "eval", workers=1, progress=False)
    assert json.loads((tree / "eval" / "eval_config.json").read_text())["critic"] == "../critic"
    shutil.move(tree, tmp_path / "moved")
    moved = dataclasses.replace(cfg, critic=str(tmp_path / "moved" / "critic"))
    assert run_eval(moved, tmp_path / "moved" / "eval", workers=1, progress=False) == first
    with pytest.raises(ValueError, match="different configuration"):  # a different critic is still another job
        run_eval(dataclasses.replace(cfg, critic=str(critic_dir)), tmp_path / "moved" / "eval", workers=1,
                 progress=False)


def test_the_ungated_arm_is_the_guided_config_with_every_gate_off():
    gated = {"relative": 0.4, "trust_scale": 0.5, "trust_min": 0.1, "gate_k": 3.0, "fallback_std": 0.2}
    arms = {a.name: a for a in standard_arms(gated, ["unguided", "guided", "ungated"])}
    assert arms["guided"].guidance == gated
    assert arms["ungated"].guidance == {**gated, "trust_scale": None, "gate_k": 0.0, "fallback_std": None}
    # a lock's per-task choice: tasks the lock left unguided stay unguided in the ungated arm too
    arms = {a.name: a for a in standard_arms(None, ["unguided", "ungated"], per_task={"a": gated, "b": None},
                                             from_lock=True)}
    assert arms["ungated"].guidance_for("a")["trust_scale"] is None and arms["ungated"].guidance_for("b") is None


def test_a_closed_gate_runs_unguided_episodes_and_the_ungated_arm_does_not(tmp_path, critic_dir):
    # gate = clamp(exp(−k·std), 0, 1) with a huge k: closed for any ensemble spread, so Δv = 0 exactly
    gated = {"relative": 0.5, "gate_k": 1e12, "gate_min": 0.0}
    cfg = EvalConfig(policy="toy:default", env="toy", tasks=TASKS, seeds=DEFAULT_SPLITS.seeds("validation", 6),
                     split="validation", arms=standard_arms(gated, ["unguided", "guided", "ungated"]),
                     critic=str(critic_dir))
    records = run_eval(cfg, tmp_path, workers=1, progress=False)
    for r in records:
        assert r["arms"]["guided"]["success"] == r["arms"]["unguided"]["success"]
        assert r["arms"]["guided"]["length"] == r["arms"]["unguided"]["length"]
    m = summarize(records, ["unguided", "guided", "ungated"])
    assert m["pooled"]["guided"]["guidance"]["gate_mean"] == 0.0
    assert m["pooled"]["ungated"]["guidance"]["ratio_median"] == pytest.approx(0.5, rel=1e-3)
    assert m["pooled"]["ungated"]["fail_to_success"] + m["pooled"]["ungated"]["success_to_fail"] > 0


def test_the_rule_does_not_force_the_pooled_choice_on_a_task_whose_validation_it_measurably_harms():
    from gaflow.evaluation.sweep import choose_per_task, harmful, paired_evidence

    # cfg0 lifts tasks a and b clearly (pooled: supported), and hurts c on 9 of its 10 episodes
    recs = _records({"a": [(0, 1)] * 12 + [(1, 1)] * 8, "b": [(0, 1)] * 12 + [(1, 1)] * 8,
                     "c": [(1, 0)] * 9 + [(1, 1)] * 11})
    row = {"arm": "cfg0", "config": {"relative": 0.4}, "strength": 0.4, **paired_evidence(recs, "cfg0"),
           "per_task": {t: paired_evidence([r for r in recs if r["task"] == t], "cfg0") for t in "abc"}}
    assert row["per_task"]["c"]["p_harm"] == pytest.approx(2 ** -9) and harmful(row["per_task"]["c"])
    pooled, per_task = choose_per_task([row], ["a", "b", "c"])
    assert pooled is row and per_task == {"a": {"relative": 0.4}, "b": {"relative": 0.4}, "c": None}
    # a task whose validation is merely flat keeps the pooled choice (not significant either way)
    flat = _records({"c": [(1, 0)] * 2 + [(0, 1)] * 1 + [(1, 1)] * 17})
    row["per_task"]["c"] = paired_evidence(flat, "cfg0")
    assert not harmful(row["per_task"]["c"]) and choose_per_task([row], ["a", "b", "c"])[1]["c"] == {"relative": 0.4}

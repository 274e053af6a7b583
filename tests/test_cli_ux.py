"""What a first-time user sees: no library noise, one readable result table, one clear line per mistake."""

import concurrent.futures.process
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from rich.console import Console
from typer.testing import CliRunner

import gaflow.envs.toy
from gaflow.cli import DEBUG_ENV, app, user_error_exit_code
from gaflow.evaluation import splits
from gaflow.evaluation.report import print_eval
from gaflow.evaluation.runner import summarize
from gaflow.evaluation.splits import DEFAULT_SPLITS

SRC = Path(__file__).resolve().parents[1] / "src"
TOY_COLLECT = ["collect", "--policy", "toy:default", "--env", "toy", "--tasks", "toy-reach", "--workers", "1"]


def gaflow_subprocess(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "COLUMNS": "80"}
    env.pop(DEBUG_ENV, None)
    return subprocess.run([sys.executable, "-m", "gaflow.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)


# ------------------------------------------------------------------------------------------- library noise
def test_writing_a_lerobot_dataset_prints_no_ffmpeg_or_torchcodec_traceback(tmp_path):
    # LeRobot falls back to PyAV with a ~100-line warning holding torchcodec's FFmpeg load failures whenever a
    # dataset is opened or created without a video backend; gaflow names PyAV wherever it builds one.
    res = gaflow_subprocess(*TOY_COLLECT, "--seeds", "critic:2", "--out", str(tmp_path / "run"))
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert (tmp_path / "run" / "dataset" / "meta" / "info.json").exists()  # the dataset path did run
    for noise in ("Traceback", "libavutil", "torchcodec", "FFmpeg"):
        assert noise not in out


def test_a_mistake_through_the_real_entry_point_is_one_line_on_stderr_and_exit_2(tmp_path):
    res = gaflow_subprocess(*TOY_COLLECT, "--seeds", "5-2", "--out", str(tmp_path / "run"))
    assert res.returncode == 2
    assert res.stderr.splitlines() == ["error: bad seed range '5-2': use e.g. '1000-1049' or '1,2,5'"]
    assert "Traceback" not in res.stdout + res.stderr


# ------------------------------------------------------------------------------------------- result table
def records(tasks: dict[str, tuple[float, float]], n: int, states: int | None = None) -> list[dict]:
    """Paired episodes per task with the given unguided/guided success rates (every seed its own initial state
    unless ``states`` repeat them)."""
    rng = np.random.default_rng(0)
    out = []
    for task, (p_base, p_guided) in tasks.items():
        for seed in range(n):
            state = f"s{seed % states if states else seed}"

            def arm(p, ms, guided=False, state=state):
                rec = {"success": bool(rng.random() < p), "length": 123, "chunk_latency_ms": ms,
                       "init_state_sha": state}
                if guided:
                    rec["guidance"] = {"ratio_mean": 0.41, "ratio_median": 0.4, "gate_mean": 0.93,
                                       "nonfinite": 0, "fallback": 0}
                return rec

            out.append({"task": task, "seed": seed, "arms": {"unguided": arm(p_base, 2.4),
                                                             "guided": arm(p_guided, 123.4, guided=True),
                                                             "random": arm(p_base, 124.9, guided=True)}})
    return out


def render(metrics: dict) -> str:
    console = Console(width=80, record=True)
    print_eval(metrics, "test", console)
    return console.export_text()


def lift_cell(stats: dict) -> str:
    lo, hi = stats["lift_ci95"]
    return f"{100 * stats['lift']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def test_one_task_result_is_printed_once_and_whole_at_80_columns():
    metrics = summarize(records({"hand-insert": (0.55, 0.999)}, n=1000), ["unguided", "guided", "random"])
    text = render(metrics)
    assert "…" not in text and max(map(len, text.splitlines())) <= 80
    guided = metrics["pooled"]["guided"]
    assert f"{100 * guided['rate']:.1f} [" in text and "baseline" in text and "unguided" in text
    assert text.count(lift_cell(guided)) == 1  # one task: its table is the pooled one, shown once
    titles = [line.strip() for line in text.splitlines() if line.strip().startswith("test — ")]
    assert titles == ["test — hand-insert", "test — hand-insert diagnostics"]
    assert "123.4" in text and "0.4" in text and "0.93" in text  # latency and guidance diagnostics


def test_several_tasks_show_pooled_then_each_task_once():
    metrics = summarize(records({"toy-reach": (0.5, 0.7), "toy-reach-far": (0.3, 0.55)}, n=100),
                        ["unguided", "guided", "random"])
    text = render(metrics)
    assert "…" not in text and max(map(len, text.splitlines())) <= 80
    for block in (metrics["pooled"], *metrics["per_task"].values()):
        assert text.count(lift_cell(block["guided"])) == 1
    titles = [line.strip() for line in text.splitlines() if line.strip().startswith("test — ")]
    assert titles == ["test — pooled", "test — toy-reach", "test — toy-reach-far", "test — pooled diagnostics"]


def test_repeated_initial_states_show_the_clustered_numbers_whole():
    metrics = summarize(records({"libero-0": (0.45, 0.65)}, n=105, states=15), ["unguided", "guided"])
    text = render(metrics)
    assert "…" not in text and max(map(len, text.splitlines())) <= 80
    c = metrics["pooled"]["guided"]["clustered"]
    assert lift_cell({"lift": metrics["pooled"]["guided"]["lift"], "lift_ci95": c["lift_ci95"]}) in text
    assert "clustered by initial state" in text and "states" in text


def test_split_names_in_titles_are_text_not_markup():
    console = Console(width=80, record=True)
    print_eval(summarize(records({"toy-reach": (0.5, 0.7)}, n=10), ["unguided", "guided"]), "eval [test]", console)
    assert "eval [test] — toy-reach" in console.export_text()


# ------------------------------------------------------------------------------------------- user mistakes
def invoke(args: list[str], code: int, message: str):
    """Run the CLI in-process; the mistake must end as exit ``code`` and exactly one stderr line."""
    res = CliRunner().invoke(app, args)
    assert res.exit_code == code, (res.output, res.exception)
    assert isinstance(res.exception, SystemExit)  # handled, not an escaped exception
    assert res.stderr.splitlines() == [f"error: {message}"]
    assert "Traceback" not in res.output
    return res


def test_bad_option_value_is_exit_2(tmp_path):
    invoke([*TOY_COLLECT, "--seeds", "critic:2", "--select", "banana", "--out", str(tmp_path)], 2,
           "select must be 'first' or 'best', got 'banana'")


def test_unknown_task_is_exit_2(tmp_path):
    invoke(["collect", "--policy", "toy:default", "--env", "toy", "--tasks", "nope", "--seeds", "critic:2",
            "--workers", "1", "--out", str(tmp_path)], 2,
           "unknown toy task 'nope'; choose one of ['toy-reach', 'toy-reach-far']")


def test_missing_file_is_exit_2_naming_it(tmp_path):
    missing = tmp_path / "guidance.json"
    invoke([*TOY_COLLECT, "--seeds", "critic:2", "--guidance", str(missing), "--out", str(tmp_path / "r")], 2,
           f"No such file or directory: {missing}")
    invoke(["train-critic", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "c")], 2,
           f"chunk table {tmp_path / 'nothing' / 'chunks.safetensors'} does not exist (write it with `gaflow collect`)")


def test_missing_policy_checkpoint_is_exit_2(tmp_path):
    invoke([*TOY_COLLECT[:2], f"compact:{tmp_path / 'none'}", *TOY_COLLECT[3:], "--seeds", "critic:2", "--out",
            str(tmp_path / "r")], 2, f"policy checkpoint folder {tmp_path / 'none'} does not exist")


def test_unknown_config_key_is_exit_2_without_keyerror_quotes(tmp_path, monkeypatch):
    # a KeyError that gaflow raises on purpose (an unknown split name) reads as its message, not "'...'"
    monkeypatch.setattr(splits, "resolve_seeds", lambda text, split, purpose="evaluate": (split.seeds(text), text))
    invoke([*TOY_COLLECT, "--seeds", "nope", "--out", str(tmp_path)], 2,
           "unknown seed split 'nope'; known: demos, critic, validation, test")


def test_test_seeds_for_critic_data_are_refused_with_exit_1(tmp_path):
    lo = DEFAULT_SPLITS.ranges["test"][0]
    invoke([*TOY_COLLECT, "--seeds", "test:2", "--out", str(tmp_path)], 1,
           f"collect records critic data, which never comes from test episodes: 2 of the seeds are in toy's test "
           f"split ({lo}-{lo + 1}); use the critic split (--seeds critic:N)")


def test_a_second_read_of_test_episodes_is_refused_with_exit_1(tmp_path):
    args = ["eval", "--policy", "toy:default", "--env", "toy", "--tasks", "toy-reach", "--seeds", "test:2",
            "--arms", "unguided", "--workers", "1"]
    assert CliRunner().invoke(app, [*args, "--out", str(tmp_path / "first")]).exit_code == 0
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "second")])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit)
    assert res.stderr.startswith("error: these test episodes were already read") and "--force-reread" in res.stderr
    assert "Traceback" not in res.output


def test_a_lock_that_does_not_bind_is_exit_2(tmp_path):
    from gaflow.collect import CollectConfig, collect
    from gaflow.critic.data import ChunkTable
    from gaflow.critic.train import CriticTrainConfig, train_critic
    from gaflow.evaluation.runner import EvalConfig
    from gaflow.evaluation.sweep import run_sweep

    collect(CollectConfig(policy="toy:default", env="toy", tasks=["toy-reach"], seeds=DEFAULT_SPLITS.seeds("critic", 6)),
            tmp_path / "collect", workers=1, progress=False, write_dataset=False)
    train_critic(ChunkTable.load(tmp_path / "collect" / "chunks.safetensors"),
                 CriticTrainConfig(features=("state",), hidden=(16,), members=2, epochs=2, val_fraction=0.34,
                                   report_fraction=0.0), out_dir=tmp_path / "critic", progress=False)
    run_sweep(EvalConfig(policy="toy:default", env="toy", tasks=["toy-reach"], seeds=DEFAULT_SPLITS.seeds("validation", 2),
                         split="validation", critic=str(tmp_path / "critic")), [{"relative": 0.3}], tmp_path / "sweep",
              progress=False)
    res = CliRunner().invoke(app, ["eval", "--policy", "toy:default", "--env", "toy", "--tasks", "toy-reach",
                                   "--seeds", "test:2", "--locked", str(tmp_path / "sweep" / "locked.json"),
                                   "--arms", "unguided,guided", "--max-steps", "7", "--workers", "1",
                                   "--out", str(tmp_path / "test")])
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit)
    assert res.stderr.startswith("error: the locked config does not bind this evaluation — max_steps")
    assert len(res.stderr.splitlines()) == 1 and not (tmp_path / "test" / "episodes").exists()


# ------------------------------------------------------------------------------------------- bugs stay loud
def test_an_implicit_keyerror_inside_gaflow_is_a_bug_and_keeps_its_traceback(tmp_path, monkeypatch):
    from gaflow.evaluation.sweep import lock_summary

    monkeypatch.setattr(splits, "resolve_seeds", lambda *a, **k: lock_summary({}))  # {...}[k] on a missing key
    res = CliRunner().invoke(app, [*TOY_COLLECT, "--seeds", "critic:2", "--out", str(tmp_path)])
    assert isinstance(res.exception, KeyError) and res.exit_code == 1
    assert "error:" not in res.output


def test_gaflow_debug_shows_the_traceback_of_a_mistake(tmp_path, monkeypatch):
    monkeypatch.setenv(DEBUG_ENV, "1")
    res = CliRunner().invoke(app, [*TOY_COLLECT, "--seeds", "5-2", "--out", str(tmp_path)])
    assert isinstance(res.exception, ValueError) and "bad seed range" in str(res.exception)


def test_a_mistake_raised_in_a_worker_process_is_judged_by_the_worker_frame():
    # ProcessPoolExecutor re-raises a worker's exception in the driver with the worker's traceback as text
    source = Path(gaflow.envs.toy.__file__).read_text().splitlines()
    line = 1 + next(i for i, s in enumerate(source) if "raise ValueError(f\"unknown toy task" in s)
    on_purpose = ValueError("unknown toy task 'nope'")
    on_purpose.__cause__ = concurrent.futures.process._RemoteTraceback(
        f'Traceback (most recent call last):\n  File "{gaflow.envs.toy.__file__}", line {line}, in __init__\n')
    assert user_error_exit_code(on_purpose) == 2
    implicit = ValueError("too many values to unpack (expected 2)")
    implicit.__cause__ = concurrent.futures.process._RemoteTraceback(
        f'Traceback (most recent call last):\n  File "{gaflow.envs.toy.__file__}", line 1, in <module>\n')
    assert user_error_exit_code(implicit) is None

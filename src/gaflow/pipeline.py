"""The whole pipeline, stage by stage, in one run folder — what ``gaflow demo`` runs.

demonstrations → base policy → rollouts on critic seeds → critic (+ report) → validation sweep → locked test
evaluation → report, and optionally (``heldout_tasks``) a second critic trained without some tasks, evaluated with
the locked strength on exactly those unseen tasks. Every stage writes into ``<run>/<stage>`` and is skipped when its output is complete, so an
interrupted demo resumes where it stopped (collection and evaluation also resume inside a stage).

Seeds come from the named, disjoint splits of :mod:`gaflow.evaluation.splits`: demonstrations use ``demos``,
critic rollouts ``critic``, the sweep ``validation``, the final numbers ``test``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.rule import Rule

from gaflow.envs.registry import parse_env_spec
from gaflow.evaluation.splits import split_for_env
from gaflow.io import job_folder
from gaflow.runtime.executor import Executor


@dataclass
class PipelineConfig:
    env: str = "metaworld"
    tasks: list[str] = field(default_factory=lambda: ["push", "pick-place"])
    policy: str | None = None  # an existing base policy spec; None: record demos and train the compact policy
    demos_per_task: int = 40
    demo_noise: float = 0.3
    image_size: int = 84
    max_steps: int | None = None  # episode cap (None: the env's default)
    policy_steps: int = 3000  # compact policy training steps
    policy_batch_size: int = 64
    policy_lr: float = 5e-4
    policy_env_state: bool = True  # feed the 39-d MetaWorld state (image-only misses the goal: docs/compact_policy.md)
    critic_episodes: int = 40  # per task, 'critic' split
    critic_episodes_max: int | None = None  # grow to the critic report's suggestion (up to this) when data is short
    validation_episodes: int = 20  # per task, 'validation' split
    test_episodes: int = 30  # per task, 'test' split
    test_offset: int = 0  # first test seed used, as an index into the split (skip blocks earlier runs read)
    # a preset that reproduces a published run may read its test episodes again: the test ledger still records the
    # read and the report says "read k" with the earlier results (make demo on a new machine re-reads §12's seeds)
    reproduces_published_read: bool = False
    grid: list[float] = field(default_factory=lambda: [0.1, 0.3])  # relative strengths ρ tried on validation
    critic_features: list[str] = field(default_factory=lambda: ["observation", "task", "state"])
    critic_members: int = 3
    critic_epochs: int = 40
    critic_hidden: list[int] = field(default_factory=lambda: [256, 256])
    arms: list[str] = field(default_factory=lambda: ["unguided", "guided", "zero", "random"])
    workers: int = 2
    # a multi-task critic evaluated on tasks it never saw: trained on the other tasks' rollouts, run at the strength
    # the main sweep locked (tuned on validation seeds; the unseen tasks' test seeds are read only by this evaluation)
    heldout_tasks: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.grid or any(not r > 0 for r in self.grid):
            raise ValueError(f"grid must list one or more relative strengths ρ > 0, got {self.grid}")
        if not self.critic_features:
            raise ValueError("critic_features must name at least one policy feature (e.g. observation, task, state)")
        unknown = sorted(set(self.heldout_tasks) - set(self.tasks))
        if unknown:
            raise ValueError(f"heldout_tasks {unknown} are not among the pipeline's tasks {self.tasks}")
        if self.heldout_tasks and len(self.heldout_tasks) == len(set(self.tasks)):
            raise ValueError("heldout_tasks may not hold out every task: the held-out critic needs training tasks")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


DEMO_NOISE_SEED = 1000  # LIBERO demonstrations: expert-noise seeds apart from the rollouts' (seed // 50 < 1000)


def run_pipeline(cfg: PipelineConfig, run: Path, console: Console | None = None, force_reread: bool = False,
                 executor: Executor | None = None) -> dict:
    """Run (or resume) the whole pipeline in ``run``; episode stages run on ``executor`` (default: ``cfg.workers``
    local processes; :func:`gaflow.runtime.executor.make_executor`). ``force_reread``: let the test stages read
    test episodes an earlier run already read (the reports say so); otherwise that is refused
    (:mod:`gaflow.evaluation.ledger`)."""
    console = console or Console()
    run = job_folder(run, cfg.to_dict(), "pipeline.json", paths=("policy",))
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    def stage(name: str, what: str):
        console.print(Rule(f"[bold]{name}[/bold]"))
        console.print(what, markup=False)  # its own line: wraps at any terminal width instead of being cut
        return time.perf_counter()

    # 1–2. base policy: given, or demonstrations + compact policy training
    policy = cfg.policy
    splits = split_for_env(cfg.env)
    env_kind, suite, _ = parse_env_spec(cfg.env)
    libero = env_kind == "libero"
    if policy is None:
        t0 = stage("1/7 demonstrations", f"{cfg.demos_per_task} noisy-expert episodes per task, σ={cfg.demo_noise}")
        demos = run / "demos"
        if (demos / "meta" / "info.json").exists():
            console.print("demonstrations exist — skipped")
        elif libero:  # the scripted LIBERO expert, on the critic split's init states only (never validation/test)
            from gaflow.demos.libero import LiberoDemoConfig, record_libero_demos

            a, b = splits.ranges["critic"]
            record_libero_demos(LiberoDemoConfig(suite=suite or "libero_spatial",
                                                 tasks=tuple(int(t) for t in cfg.tasks),
                                                 episodes_per_task=cfg.demos_per_task, noise=cfg.demo_noise,
                                                 noise_seed=DEMO_NOISE_SEED, inits=tuple(range(a, b)), out=demos),
                                console)
        elif cfg.env == "metaworld":
            from gaflow.demos.metaworld import DemoConfig, write_demos

            write_demos(DemoConfig(tasks=list(cfg.tasks), episodes_per_task=cfg.demos_per_task, noise=cfg.demo_noise,
                                   seed_start=splits.ranges["demos"][0], out=demos,
                                   image_size=cfg.image_size, max_steps=cfg.max_steps))
        else:
            raise ValueError(f"training the compact policy is wired for MetaWorld and LIBERO, not {cfg.env!r}; "
                             "pass policy= for other envs")
        timings["demos"] = time.perf_counter() - t0
        inputs = "proprio + simulator state" if libero else "image + proprio" + (" + env state" if cfg.policy_env_state
                                                                                 else "")
        t0 = stage("2/7 base policy", f"compact flow VLA ({inputs}, language), {cfg.policy_steps} steps")
        pol_dir = run / "policy"
        if not (pol_dir / "model.safetensors").exists():
            from gaflow.policies.compact.config import CompactPolicyConfig
            from gaflow.policies.compact.train import TrainConfig, train_policy

            # LIBERO is state-based: rendering its 300k-face scenes costs ~100 ms per camera per step here
            # (docs/envs.md), which the rollout budget of a study cannot pay
            pcfg = CompactPolicyConfig(image_size=cfg.image_size, use_image=not libero,
                                       use_env_state=cfg.policy_env_state or libero)
            train_policy(TrainConfig(dataset=str(demos), out=str(pol_dir), steps=cfg.policy_steps,
                                     batch_size=cfg.policy_batch_size, resume=True,
                                     checkpoint_every=max(1, min(1000, cfg.policy_steps // 3)),
                                     warmup_steps=min(500, max(1, cfg.policy_steps // 10)),
                                     lr=cfg.policy_lr, num_threads=1, state_std_floor=0.01 if libero else 0.0,
                                     policy=pcfg))
        else:
            console.print("policy exists — skipped")
        timings["policy"] = time.perf_counter() - t0
        policy = f"compact:{pol_dir}"

    # 3. rollouts of the base policy on the critic split
    from gaflow.collect import CollectConfig, collect

    t0 = stage("3/7 rollouts", f"{cfg.critic_episodes} episodes per task on the 'critic' seeds")

    def rollouts(n: int) -> dict:
        ccfg = CollectConfig(policy=policy, env=cfg.env, tasks=list(cfg.tasks), seeds=splits.seeds("critic", n),
                             max_steps=cfg.max_steps, record_images=True)  # the critic report re-encodes frames
        summary = collect(ccfg, run / "collect", workers=cfg.workers, write_dataset=True, extend=True,
                          executor=executor)
        console.print(f"base-policy success on critic seeds: {summary['success_rate']:.1%} over "
                      f"{summary['episodes']} episodes")
        return summary

    rollouts(cfg.critic_episodes)
    timings["collect"] = time.perf_counter() - t0

    # 4. critic (+ report); when the report says the data cannot be trusted, more rollouts (up to
    # critic_episodes_max per task) and a critic trained on all of them — decided before any sweep
    from gaflow.guidance import GuidanceConfig

    t0 = stage("4/7 critic", f"ensemble of {cfg.critic_members}, success-to-go")
    critic_dir = run / "critic"
    rep = critic_stage(cfg, run, critic_dir, policy, GuidanceConfig(relative=cfg.grid[0]))
    sizing = rep["sizing"]
    console.print(f"critic AUC on held-out episodes {rep['auc']:.3f} (95 % CI {sizing['auc_ci95'][0]:.2f}–"
                  f"{sizing['auc_ci95'][1]:.2f}); ‖Δv‖/‖v‖ median "
                  f"{rep.get('ratio_quantiles', {}).get('p50', float('nan')):.3g}")
    grow = min(cfg.critic_episodes_max or 0, sizing["suggested_episodes_per_task"])
    if not sizing["enough"] and grow > cfg.critic_episodes:
        console.print(f"critic data not enough ({'; '.join(sizing['reasons'])}): {grow} episodes per task")
        rollouts(grow)
        critic_dir = run / f"critic_{grow}"
        rep = critic_stage(cfg, run, critic_dir, policy, GuidanceConfig(relative=cfg.grid[0]))
        console.print(f"critic AUC on held-out episodes {rep['auc']:.3f} (95 % CI {rep['sizing']['auc_ci95'][0]:.2f}"
                      f"–{rep['sizing']['auc_ci95'][1]:.2f})")
    elif not sizing["enough"]:
        console.print(f"[yellow]critic data not enough[/yellow] ({'; '.join(sizing['reasons'])}) — raise "
                      "critic_episodes_max to let the demo collect more")
    timings["critic"] = time.perf_counter() - t0

    # 5. validation sweep
    from gaflow.evaluation.report import plot_sweep, print_eval
    from gaflow.evaluation.runner import EvalConfig
    from gaflow.evaluation.sweep import describe_lock, load_locked, run_sweep

    t0 = stage("5/7 validation sweep", f"relative strength ρ ∈ {cfg.grid}, {cfg.validation_episodes} seeds/task")
    val_seeds = splits.seeds("validation", cfg.validation_episodes, purpose="tune")
    sweep_dir = run / "sweep"
    if not (sweep_dir / "locked.json").exists():
        ev = EvalConfig(policy=policy, env=cfg.env, tasks=list(cfg.tasks), seeds=val_seeds, split="validation",
                        critic=str(critic_dir), max_steps=cfg.max_steps)
        res = run_sweep(ev, [{"relative": r} for r in cfg.grid], sweep_dir, workers=cfg.workers, executor=executor)
        plot_sweep(sweep_dir, res["rows"], "relative strength ρ")
    locked = load_locked(sweep_dir / "locked.json")
    console.print(f"locked: {describe_lock(locked)} (hash {locked['hash']})")
    timings["sweep"] = time.perf_counter() - t0

    # 6. locked test evaluation
    t0 = stage("6/7 test evaluation", f"arms {cfg.arms}, {cfg.test_episodes} locked test seeds/task")
    metrics, report = locked_test(cfg, policy, critic_dir, list(cfg.tasks), list(cfg.arms), locked, run / "test",
                                  {"critic_auc": rep["auc"]}, seed_offset=cfg.test_offset,
                                  force_reread=force_reread or cfg.reproduces_published_read,
                                  executor=executor)
    timings["test"] = time.perf_counter() - t0
    result = {"metrics": metrics, "report": str(report), "timings_s": timings, "locked": locked}

    # 6b. a critic that never saw some tasks, on those tasks
    if cfg.heldout_tasks:
        # the strength the main sweep chose; where it chose unguided, the candidate with the best pooled bound
        h_config = locked["guidance"] or max(locked["candidates"], key=lambda r: r["lcb"])["config"]
        t0 = stage("6b/7 held-out-task critic", f"critic without {cfg.heldout_tasks}, evaluated on them at "
                   f"ρ = {h_config.get('relative')} (from the main sweep)")
        h_dir = run / "critic_heldout"
        h_rep = critic_stage(cfg, run, h_dir, policy, GuidanceConfig.from_dict(h_config),
                             held_out_tasks=tuple(cfg.heldout_tasks))
        unseen_auc = {t: h_rep["auc_per_task"].get(t, float("nan")) for t in cfg.heldout_tasks}
        console.print("held-out critic AUC on the tasks it never saw: "
                      + ", ".join(f"{t} {a:.3f}" for t, a in unseen_auc.items()))
        # The lock binds the critic and tasks it was tuned with, so the held-out critic gets its own lock: a
        # one-config sweep on the held-out tasks' validation seeds at the main lock's strength (nothing is chosen on
        # them). Its test read uses the next block of test seeds, which the main test stage never read — where
        # the env has fixed initial states (LIBERO) there is no fresh block: that read is forced and says so.
        h_sweep = run / "sweep_heldout"
        if not (h_sweep / "locked.json").exists():
            ev = EvalConfig(policy=policy, env=cfg.env, tasks=list(cfg.heldout_tasks), seeds=val_seeds,
                            split="validation", critic=str(h_dir), max_steps=cfg.max_steps)
            run_sweep(ev, [h_config], h_sweep, workers=cfg.workers, rule="fixed", executor=executor)
        h_locked = load_locked(h_sweep / "locked.json")
        h_metrics, h_report = locked_test(cfg, policy, h_dir, list(cfg.heldout_tasks), ["unguided", "guided"],
                                          h_locked, run / "test_heldout",
                                          {"critic_auc": unseen_auc, "critic_trained_without": cfg.heldout_tasks},
                                          seed_offset=cfg.test_offset + cfg.test_episodes,
                                          force_reread=force_reread or splits.period is not None,
                                          executor=executor)
        timings["heldout"] = time.perf_counter() - t0
        result["heldout"] = {"metrics": h_metrics, "report": str(h_report), "critic_auc_unseen": unseen_auc}

    # 7. result
    stage("7/7 result", "locked test split")
    print_eval(metrics, "test", console)
    if cfg.heldout_tasks:
        print_eval(result["heldout"]["metrics"], f"test — critic never trained on {', '.join(cfg.heldout_tasks)}",
                   console)
    total = time.perf_counter() - t_start
    console.print(f"[bold]report:[/bold] {report} ({total / 60:.1f} min this session)")
    console.print(f"critic report: {critic_dir / 'report' / 'critic_report.json'}")
    return result


def critic_stage(cfg: PipelineConfig, run: Path, out: Path, policy: str, guidance_cfg,
                 held_out_tasks: tuple[str, ...] = ()) -> dict:
    """Train a critic on the run's rollouts into ``out`` (skipped if done) and return its report (read if done)."""
    from gaflow.critic.data import ChunkTable
    from gaflow.critic.train import CriticTrainConfig, train_critic
    from gaflow.evaluation.critic_check import critic_report_with_strength

    if not (out / "critic.json").exists():
        table = ChunkTable.load(run / "collect" / "chunks.safetensors")
        train_critic(table, CriticTrainConfig(features=tuple(cfg.critic_features), members=cfg.critic_members,
                                              epochs=cfg.critic_epochs, hidden=tuple(cfg.critic_hidden),
                                              held_out_tasks=held_out_tasks), out_dir=out)
    rep_file = out / "report" / "critic_report.json"
    if rep_file.exists():
        return json.loads(rep_file.read_text())
    return critic_report_with_strength(out, run / "collect", out / "report", policy_spec=policy, guidance_cfg=guidance_cfg,
                         max_states=32)


def locked_test(cfg: PipelineConfig, policy: str, critic_dir: Path, tasks: list[str], arms: list[str], locked: dict,
                out: Path, extra_meta: dict, seed_offset: int = 0, force_reread: bool = False,
                executor: Executor | None = None) -> tuple[dict, Path]:
    """Evaluate the locked guidance config on test seeds ``[seed_offset, seed_offset + test_episodes)`` of the test
    split (one read, recorded in the test ledger) and report."""
    from gaflow.evaluation.ledger import read_header
    from gaflow.evaluation.report import write_eval_report
    from gaflow.evaluation.runner import EvalConfig, run_eval, standard_arms, summarize
    from gaflow.evaluation.sweep import check_lock_binds, lock_summary

    test_seeds = split_for_env(cfg.env).seeds("test", seed_offset + cfg.test_episodes)[seed_offset:]
    ev = EvalConfig(policy=policy, env=cfg.env, tasks=tasks, seeds=test_seeds, split="test",
                    arms=standard_arms(locked["guidance"], arms, per_task=locked["per_task"], from_lock=True),
                    critic=str(critic_dir), max_steps=cfg.max_steps)
    check_lock_binds(locked, ev)
    records = run_eval(ev, out, workers=cfg.workers, force_reread=force_reread, lock_hash=locked["hash"],
                       command="demo (locked test)", executor=executor)
    metrics = summarize(records, arms)
    meta = {"split": "test", "n_seeds": len(test_seeds), "seed_range": f"{test_seeds[0]}–{test_seeds[-1]}",
            "policy": policy, "critic": str(critic_dir), "env": cfg.env, "locked": lock_summary(locked),
            "test_read": read_header(out), **extra_meta, "pipeline": cfg.to_dict(), "config": ev.to_dict()}
    return metrics, write_eval_report(out, metrics, meta)

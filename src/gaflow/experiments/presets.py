"""Experiment presets: the named configurations behind ``gaflow demo --preset NAME`` — each one reproduces a
README or BENCHMARKS.md result, or sizes the pipeline for CI. Experiments, not library code: the pipeline
(:mod:`gaflow.pipeline`) knows nothing of them.
"""

from __future__ import annotations

from gaflow.pipeline import PipelineConfig

PRESETS: dict[str, dict] = {
    # seconds: the analytic toy-reach task, no simulator (for a first look and the quick tests)
    "toy": {"env": "toy", "tasks": ["toy-reach", "toy-reach-far"], "policy": "toy:default", "critic_episodes": 150,
            "validation_episodes": 60, "test_episodes": 100, "grid": [0.3, 1.0], "critic_features": ["state"],
            "critic_hidden": [128, 128]},
    # CI: MetaWorld end to end at a tiny size (plumbing only; the numbers mean nothing)
    "tiny": {"tasks": ["push"], "demos_per_task": 3, "image_size": 32, "max_steps": 40, "policy_steps": 20,
             "policy_batch_size": 16, "critic_episodes": 4, "validation_episodes": 2, "test_episodes": 2,
             "grid": [0.2], "critic_epochs": 3, "critic_hidden": [32], "critic_members": 2},
    # `gaflow demo` with no arguments: the shipped compact policy on push-wall (43 % unguided in §10), ≤ 20 minutes
    # on 2 cores. The critic report sizes the critic's data (80 rollouts, up to 160 when the report asks for more);
    # the sweep locks a strength only on significant paired validation evidence (else unguided). Test seeds from
    # the 101st on: §10 read push-wall's first 100 test seeds with this policy (prior_test_reads.json). Those 80
    # seeds were then read by BENCHMARKS §12's run of this preset: a rerun reproduces it, and its report says "read 2"
    "default": {"policy": "compact:builtin", "tasks": ["push-wall"], "critic_episodes": 80,
                "critic_episodes_max": 160, "validation_episodes": 40, "test_episodes": 80, "test_offset": 100,
                "grid": [0.2, 0.4], "reproduces_published_read": True},
    # demonstrations recorded and the policy trained from scratch with the shipped policy's recipe (σ 0.5 demos,
    # 5000 steps, image + language + proprio + env state; about 40 minutes on 2 cores)
    "scratch": {"demos_per_task": 60, "demo_noise": 0.5, "policy_steps": 5000},
    # the study of BENCHMARKS.md §10: the shipped policy on its six mediocre tasks, 100 locked test episodes per task,
    # and a critic trained on four tasks evaluated on the two it never saw
    "study": {"policy": "compact:builtin",
              "tasks": ["push", "pick-place", "push-wall", "hand-insert", "disassemble", "shelf-place"],
              "critic_episodes": 80, "validation_episodes": 30, "test_episodes": 100, "grid": [0.1, 0.2, 0.4],
              "heldout_tasks": ["push-wall", "shelf-place"]},
    # LIBERO (issue #6, BENCHMARKS.md §11): scripted-expert demos (σ 0.3) on init states 0–24 → state-based compact
    # policy over three libero_spatial tasks → critic over all three (+ one on tasks 0 and 1 only) → validation
    # inits 25–34 → locked test on inits 35–49 (2 noise repeats each); task 5 is the held-out task. Sized for ~2 h
    # on 2 cores (a LIBERO episode costs 4–12 CPU-seconds here): raise test_episodes for tighter intervals
    "libero": {"env": "libero:libero_spatial", "tasks": ["0", "1", "5"], "demos_per_task": 50, "demo_noise": 0.3,
               "policy_steps": 4000, "critic_episodes": 50, "validation_episodes": 10, "test_episodes": 30,
               "grid": [0.2, 0.4], "critic_features": ["observation", "task", "state"],
               "heldout_tasks": ["5"]},
    # CI: the LIBERO study end to end at a tiny size (plumbing only)
    "libero-tiny": {"env": "libero:libero_spatial", "tasks": ["0"], "demos_per_task": 2, "demo_noise": 0.0,
                    "max_steps": 12, "policy_steps": 20, "policy_batch_size": 16, "critic_episodes": 3,
                    "validation_episodes": 1, "test_episodes": 2, "grid": [0.2], "critic_epochs": 3,
                    "critic_hidden": [32], "critic_members": 2, "workers": 1},
}


def preset(name: str, **overrides) -> PipelineConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    cfg = {**PRESETS[name], **given}
    if "tasks" in given and "heldout_tasks" not in given:  # other tasks: keep only held-out tasks still among them
        kept = [t for t in cfg.get("heldout_tasks", []) if t in cfg["tasks"]]
        cfg["heldout_tasks"] = kept if len(set(kept)) < len(set(cfg["tasks"])) else []
    return PipelineConfig(**cfg)

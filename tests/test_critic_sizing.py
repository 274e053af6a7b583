"""Critic-data sizing: critic-report says whether a critic's data is enough to trust a sweep, and how much more
would do; collect can extend a folder with more seeds of the same job."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from gaflow.critic.quality import auc_interval, data_sufficiency


def test_auc_interval_resamples_episodes():
    episodes = np.repeat(np.arange(20), 3)
    labels = np.repeat(np.arange(20) % 2 == 0, 3)
    assert auc_interval(labels.astype(float), labels, episodes) == (1.0, 1.0)  # perfectly separable
    rng = np.random.default_rng(0)
    lo, hi = auc_interval(rng.normal(size=60), labels, episodes)
    assert lo < 0.5 < hi and hi - lo > 0.2
    assert all(math.isnan(x) for x in auc_interval(np.zeros(3), np.array([True, False, True]), np.zeros(3)))


def test_sizing_says_enough_only_with_a_clear_auc_and_both_outcomes_on_every_task():
    ok = {"a": {"successes": 20, "failures": 30}}
    good = data_sufficiency((0.7, 0.9), 10, ok, 50)
    assert good["enough"] and good["suggested_episodes_per_task"] == 50
    wide = data_sufficiency((0.55, 0.85), 10, ok, 50)
    assert not wide["enough"] and "0.55" in wide["reasons"][0]
    assert wide["suggested_episodes_per_task"] == math.ceil(50 * (0.15 / 0.1) ** 2)  # CI width ∝ 1/√n
    rare = data_sufficiency((0.7, 0.9), 10, {"a": {"successes": 2, "failures": 48}}, 50)
    assert not rare["enough"] and "a: 2 successes" in rare["reasons"][0]
    assert rare["suggested_episodes_per_task"] == 250  # 10 / 2 × 50


def test_collect_extends_a_folder_with_more_seeds_of_the_same_job(tmp_path):
    from gaflow.collect import CollectConfig, collect
    from gaflow.evaluation.splits import DEFAULT_SPLITS

    cfg = CollectConfig(policy="toy:default", env="toy", tasks=["toy-reach"], seeds=DEFAULT_SPLITS.seeds("critic", 3))
    collect(cfg, tmp_path, workers=1, progress=False, write_dataset=False)
    more = CollectConfig(**{**cfg.key(), "seeds": DEFAULT_SPLITS.seeds("critic", 5)})
    with pytest.raises(ValueError, match="different configuration"):
        collect(more, tmp_path, workers=1, progress=False, write_dataset=False)
    first = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "episodes" / "toy-reach").iterdir()}
    summary = collect(more, tmp_path, workers=1, progress=False, write_dataset=False, extend=True)
    assert summary["episodes"] == 5 and summary["collected_now"] == 2
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "episodes" / "toy-reach").iterdir()}
    assert {k: after[k] for k in first} == first  # the first episodes were kept, not re-run
    assert json.loads((tmp_path / "collect.json").read_text())["seeds"] == more.seeds
    other = CollectConfig(**{**more.key(), "noise_seed": 1})
    with pytest.raises(ValueError, match="different configuration"):  # extend never mixes two jobs
        collect(other, tmp_path, workers=1, progress=False, write_dataset=False, extend=True)


def test_strength_check_reads_the_raw_ratio_under_a_relative_strength_so_it_can_fail():
    from gaflow.evaluation.critic_check import strength_verdict

    applied = np.full(100, 0.3)  # = ρ by construction under a relative strength
    flat = np.full(100, 1e-4)  # the critic's raw pull, before the rescale
    assert strength_verdict(applied, flat, relative=True)[0] == "negligible"
    assert "3e+03×" in strength_verdict(applied, flat, relative=True)[1]  # the amplification is named
    assert strength_verdict(applied, np.full(100, 0.5), relative=True) == ("ok", None)
    assert strength_verdict(np.full(100, 1e-4))[0] == "negligible"  # an absolute scale: the applied ratio
    assert strength_verdict(np.full(100, 3.0))[0] == "dominant"

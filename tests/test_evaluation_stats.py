import numpy as np
import pytest

from gaflow.evaluation import (
    DEFAULT_SPLITS,
    SeedSplit,
    SplitViolation,
    mcnemar_exact,
    paired_bootstrap_ci,
    wilson_interval,
)
from gaflow.evaluation.stats import cluster_bootstrap_ci, cluster_sign_flip_test


def test_wilson_interval_matches_known_values():
    # Known values (Wilson score, 95%): 8/10 → [0.4902, 0.9433]; 0/20 → [0, 0.1611]; 50/100 → [0.4038, 0.5962]
    for (k, n), (lo, hi) in {(8, 10): (0.4902, 0.9433), (0, 20): (0.0, 0.1611), (50, 100): (0.4038, 0.5962)}.items():
        a, b = wilson_interval(k, n)
        assert a == pytest.approx(lo, abs=1e-4) and b == pytest.approx(hi, abs=1e-4)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_mcnemar_exact_counts_flips_and_matches_binomial_p():
    base = np.array([0] * 10 + [1] * 10, dtype=bool)
    arm = np.array([1] * 8 + [0] * 2 + [1] * 9 + [0], dtype=bool)  # 8 up, 1 down
    r = mcnemar_exact(base, arm)
    assert (r.fail_to_success, r.success_to_fail) == (8, 1)
    assert r.p_value == pytest.approx(0.0390625)  # 2 * P(X <= 1 | n=9, p=.5) = 2 * 10/512
    assert mcnemar_exact(base, base).p_value == 1.0
    with pytest.raises(ValueError):
        mcnemar_exact(base, arm[:5])


def test_paired_bootstrap_ci_is_the_percentile_interval_of_resampled_mean_differences():
    # 5 of 10 pairs flip up: a resample's mean is k/10 with k ~ Binomial(10, 1/2); P(k <= 1) = 1.1% < 2.5% <
    # P(k <= 2) = 5.5%, so the 2.5th percentile is 0.2 and, by symmetry, the 97.5th is 0.8
    base, arm = np.zeros(10, bool), np.array([1] * 5 + [0] * 5, bool)
    assert paired_bootstrap_ci(base, arm) == pytest.approx((0.2, 0.8))
    assert paired_bootstrap_ci(base, ~base) == (1.0, 1.0)  # every pair flips up: no spread to resample


def test_cluster_bootstrap_resamples_whole_initial_states():
    # the same 5 up-flips, now all in one initial state (5 repeats) and the 5 ties in another: a resample draws
    # state A twice (1/4), A and B (1/2) or B twice (1/4), so the 95% interval spans everything from 0 to 1
    diff = np.array([1.0] * 5 + [0.0] * 5)
    assert cluster_bootstrap_ci(diff, ["A"] * 5 + ["B"] * 5) == pytest.approx((0.0, 1.0))
    # one episode per cluster: the episode bootstrap, resample for resample
    rng = np.random.default_rng(0)
    base = rng.random(200) < 0.4
    arm = base | (rng.random(200) < 0.3)
    assert cluster_bootstrap_ci(arm.astype(float) - base, np.arange(200)) == paired_bootstrap_ci(base, arm)
    assert cluster_bootstrap_ci(np.ones(4), [0, 0, 1, 1]) == (1.0, 1.0)
    with pytest.raises(ValueError, match="one label per episode"):
        cluster_bootstrap_ci(diff, [0, 1])


def test_sign_flip_test_on_five_initial_states_all_up_is_two_in_thirty_two():
    # 5 initial states × 2 repeats, every pair flips up: McNemar sees 10 independent flips (p = 2/1024); only 5
    # states are independent, and 2 of their 2^5 sign patterns are as extreme as the observed one
    base, arm = np.zeros(10, bool), np.ones(10, bool)
    states = np.repeat(np.arange(5), 2)
    r = cluster_sign_flip_test(base, arm, states)
    assert (r.clusters, r.statistic, r.p_value, r.method) == (5, 10.0, 2 / 32, "exact")
    assert mcnemar_exact(base, arm).p_value == 2 / 1024
    # per-state sums (2, 2, 1, 0, -1), observed 4: |±2 ±2 ±1 ±1| >= 4 for 6 of the 16 sign patterns of the four
    # states that moved (a state with sum 0 looks the same under either sign)
    base2 = np.zeros(10, bool)
    arm2 = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0], bool)
    base2[8] = True  # state 4: one down-flip and one tie
    assert cluster_sign_flip_test(base2, arm2, states).p_value == pytest.approx(6 / 16)
    assert cluster_sign_flip_test(base, base, states).p_value == 1.0


def test_sign_flip_test_with_one_episode_per_state_is_exact_mcnemar():
    base = np.array([0] * 10 + [1] * 10, dtype=bool)
    arm = np.array([1] * 8 + [0] * 2 + [1] * 9 + [0], dtype=bool)  # 8 up, 1 down
    r = cluster_sign_flip_test(base, arm, np.arange(20))
    assert r.p_value == pytest.approx(mcnemar_exact(base, arm).p_value, rel=1e-12)
    assert r.p_value == pytest.approx(0.0390625, rel=1e-12) and r.clusters == 20


def test_sign_flip_test_on_fractional_differences_is_exact_or_seeded_monte_carlo():
    # |±.5 ±.5 ±.5 ±.5 ±.25| >= 1.75 only with the four halves agreeing: 4 of 32 patterns
    r = cluster_sign_flip_test(np.zeros(5), np.array([0.5, 0.5, 0.5, 0.5, -0.25]), np.arange(5))
    assert (r.p_value, r.method) == (pytest.approx(4 / 32), "exact")
    d = np.array([0.5, 0.25, 0.75, 0.5, -0.25, 0.5, 0.5, 0.25, 0.125, 0.5, 0.5, -0.5])
    exact = cluster_sign_flip_test(np.zeros(12), d, np.arange(12))
    mc = cluster_sign_flip_test(np.zeros(12), d, np.arange(12), n_resamples=1000)
    assert exact.method == "exact" and mc.method == "monte-carlo (1000 resamples, seed 0)"
    assert mc.p_value == cluster_sign_flip_test(np.zeros(12), d, np.arange(12), n_resamples=1000).p_value
    assert abs(mc.p_value - exact.p_value) < 0.015  # 3 standard errors of a 1000-draw estimate of p ≈ 0.025


def test_seed_splits_are_disjoint_and_tuning_cannot_read_test():
    s = DEFAULT_SPLITS
    val, test = set(s.seeds("validation", 100)), set(s.seeds("test", 100))
    assert not val & test and s.which(next(iter(test))) == "test"
    with pytest.raises(SplitViolation):
        s.seeds("test", 10, purpose="tune")
    with pytest.raises(ValueError, match="overlap"):
        SeedSplit({"validation": (0, 10), "test": (5, 20)})
    assert SeedSplit.from_dict(s.to_dict()) == s


def test_libero_split_divides_init_states_and_repeats_them_with_fresh_noise():
    from gaflow.envs.libero import episode_of_seed
    from gaflow.evaluation.splits import LIBERO_SPLITS, resolve_seeds, split_for_env

    s = LIBERO_SPLITS
    assert split_for_env("libero:libero_spatial?cameras=1") is s and split_for_env("metaworld") is DEFAULT_SPLITS
    test = s.seeds("test", 75)
    inits = [episode_of_seed(x)[0] for x in test]
    assert sorted(set(inits)) == list(range(35, 50)) and all(inits.count(i) == 5 for i in set(inits))
    assert len(set(test)) == 75 and sorted({episode_of_seed(x)[1] for x in test}) == [0, 1, 2, 3, 4]
    val_inits = {episode_of_seed(x)[0] for x in s.seeds("validation", 40, purpose="tune")}
    crit_inits = {episode_of_seed(x)[0] for x in s.seeds("critic", 100)}
    assert val_inits == set(range(25, 35)) and crit_inits == set(range(25))
    assert all(s.which(x) == "test" for x in test)
    with pytest.raises(SplitViolation):
        resolve_seeds("85", s, purpose="tune")  # 85 = init 35, repeat 1: a test initial state
    assert SeedSplit.from_dict(s.to_dict()) == s
    with pytest.raises(ValueError, match="period"):
        SeedSplit({"test": (0, 60)}, period=50)

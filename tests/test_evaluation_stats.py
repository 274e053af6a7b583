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


def test_paired_bootstrap_ci_brackets_the_mean_difference():
    rng = np.random.default_rng(0)
    base = rng.random(200) < 0.4
    arm = base | (rng.random(200) < 0.3)
    lo, hi = paired_bootstrap_ci(base, arm)
    d = arm.mean() - base.mean()
    assert lo < d < hi and lo > 0


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

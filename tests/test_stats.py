"""Comparison statistics against known inputs and exact enumeration."""

import itertools

import numpy as np
import pytest

from climb_jax.analysis import stats


def test_identical_runs_give_zero_difference_and_p_one():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2, size=(2, 300)).astype(float)
    res = stats.compare(a, a.copy(), n_boot=300, n_perm=500)
    assert res.diff == 0.0
    assert res.p_value == 1.0
    assert not res.significant
    assert res.ci_low <= 0.0 <= res.ci_high


def test_constant_shift_is_inside_ci_with_tiny_p():
    rng = np.random.default_rng(1)
    b = rng.uniform(0.4, 0.8, size=(3, 80))
    a = b + 0.05
    res = stats.compare(a, b, n_boot=500, n_perm=2000)
    assert res.diff == pytest.approx(0.05)
    assert res.ci_low <= 0.05 <= res.ci_high
    assert res.ci_low > 0
    # Only the all-plus and all-minus sign vectors are as extreme: p is the Monte Carlo floor.
    assert res.p_value == pytest.approx(1 / 2001)
    assert res.significant and res.test == "sign_flip_mc"


def test_exact_sign_flip_by_hand():
    # d = (1, 2, 3): of the 8 sign vectors only ±(1,2,3) reach |mean| = 2 -> p = 2/8.
    p, test = stats.sign_flip_test(np.array([[1.0, 2.0, 3.0]]), np.zeros((1, 3)))
    assert test == "sign_flip_exact" and p == pytest.approx(0.25)


def test_monte_carlo_agrees_with_exact_enumeration():
    rng = np.random.default_rng(2)
    a, b = rng.normal(0.1, 1, size=(2, 12)), rng.normal(0, 1, size=(2, 12))
    exact, name = stats.sign_flip_test(a, b)
    assert name == "sign_flip_exact"
    mc, name = stats.sign_flip_test(a, b, n_perm=40_000, max_exact_items=0, seed=3)
    assert name == "sign_flip_mc"
    assert mc == pytest.approx(exact, abs=0.01)
    assert 0 < exact < 1


def test_label_permutation_by_hand():
    # Pooled (1,2,3,4) split in pairs: |diff| = 2, 1, 0, 0, 1, 2 -> two of six reach the observed 2.
    assert stats.label_permutation_test([1, 2], [3, 4]) == pytest.approx(1 / 3)
    res = stats.compare(np.array([[0.7], [0.72]]), np.array([[0.6], [0.61]]), n_boot=200)
    assert res.test == "label_permutation_exact" and res.p_value == pytest.approx(1 / 3)
    assert not res.significant  # two seeds per group can never be significant at 0.05
    single = stats.compare([[0.7]], [[0.6]], n_boot=100)
    assert single.test == "none" and np.isnan(single.p_value) and not single.significant


def test_seed_noise_widens_the_interval():
    rng = np.random.default_rng(4)
    base = rng.uniform(0.3, 0.9, size=200)
    b = np.stack([base, base])
    calm = np.stack([base + 0.02, base + 0.02])
    noisy = np.stack([base + 0.02 - 0.1, base + 0.02 + 0.1])  # same mean, seeds disagree
    ci_calm = stats.bootstrap_ci(calm, b, n_boot=400)
    ci_noisy = stats.bootstrap_ci(noisy, b, n_boot=400)
    assert ci_noisy[1] - ci_noisy[0] > 5 * (ci_calm[1] - ci_calm[0])


def test_weighted_items_match_a_direct_enumeration():
    rng = np.random.default_rng(5)
    a, b = rng.uniform(size=(2, 6)), rng.uniform(size=(3, 6))
    w = rng.uniform(0.1, 1.0, size=6)
    d = (w / w.sum()) * (a.mean(0) - b.mean(0))
    assert stats.mean_difference(a, b, w) == pytest.approx(d.sum())
    extreme = sum(abs(sum(s * x for s, x in zip(signs, d))) >= abs(d.sum()) - 1e-12
                  for signs in itertools.product((1, -1), repeat=6))
    p, _ = stats.sign_flip_test(a, b, weights=w)
    assert p == pytest.approx(extreme / 64)
    # Two groups of items (paradigms of 1 and 3 pairs): weights 1/(2*1) and 1/(2*3) give the paradigm mean.
    pair_a, pair_b = np.array([[1.0, 0, 0, 0]]), np.zeros((1, 4))
    assert stats.mean_difference(pair_a, pair_b, [1 / 2, 1 / 6, 1 / 6, 1 / 6]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="weights"):
        stats.compare(a, b, weights=[1, 2])


def test_shape_errors():
    with pytest.raises(ValueError, match="same items"):
        stats.compare(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="non-empty"):
        stats.compare(np.zeros((2, 0)), np.zeros((2, 0)))

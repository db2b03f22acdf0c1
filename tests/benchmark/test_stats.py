"""Confidence intervals and paired tests against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmark.scoring import stats


def test_mean_ci_t_hand_computed():
    # [1, 2, 3]: mean 2, s = 1, t_{0.975, 2} = 4.302653 -> half-width 4.302653 / sqrt(3) = 2.484138.
    mean, lo, hi = stats.mean_ci_t(np.array([1.0, 2.0, 3.0]))
    assert mean == 2.0
    assert lo == pytest.approx(2 - 2.484138, abs=1e-6)
    assert hi == pytest.approx(2 + 2.484138, abs=1e-6)
    mean, lo, hi = stats.mean_ci_t(np.array([0.7]))
    assert mean == 0.7 and math.isnan(lo) and math.isnan(hi)


def test_bootstrap_ci_hand_cases_and_determinism():
    assert stats.bootstrap_ci(np.full(7, 0.25)) == (0.25, 0.25, 0.25)
    # Two values: resample means are 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4.
    assert stats.bootstrap_ci(np.array([0.0, 1.0]), n_boot=2000) == (0.5, 0.0, 1.0)
    x = np.random.default_rng(0).random(50)
    first = stats.bootstrap_ci(x, n_boot=500, seed=3)
    assert stats.bootstrap_ci(x, n_boot=500, seed=3) == first
    assert stats.bootstrap_ci(x, n_boot=500, seed=4) != first
    assert first[1] < first[0] < first[2]


def test_bootstrap_ci_width_close_to_normal_theory():
    x = np.arange(100, dtype=float)  # mean 49.5, se = 29.011 / 10 -> 95% half-width ~5.69
    mean, lo, hi = stats.bootstrap_ci(x, n_boot=2000, seed=0)
    assert mean == 49.5
    assert (hi - lo) / 2 == pytest.approx(1.96 * x.std(ddof=1) / 10, rel=0.1)


def test_paired_bootstrap_pvalue_known_results():
    a = np.random.default_rng(0).random(40)
    assert stats.paired_bootstrap_pvalue(a, a.copy(), n_boot=500) == 1.0
    # A constant shift: every centred resample mean is 0 < 0.1, so p = 1 / (1 + n_boot).
    assert stats.paired_bootstrap_pvalue(a + 0.1, a, n_boot=999) == pytest.approx(0.001)
    # d = [2, 0]: centred [1, -1]; |resample mean| >= 1 with probability 1/2.
    p = stats.paired_bootstrap_pvalue(np.array([2.0, 0.0]), np.zeros(2), n_boot=4000)
    assert p == pytest.approx(0.5, abs=0.03)
    noisy = a + 0.3 + np.random.default_rng(1).normal(0, 0.05, 40)
    assert stats.paired_bootstrap_pvalue(noisy, a, n_boot=2000) < 0.01
    assert stats.paired_bootstrap_pvalue(a, noisy, n_boot=2000) == stats.paired_bootstrap_pvalue(
        noisy, a, n_boot=2000
    )


def test_wilcoxon_pvalue_known_results():
    a = np.random.default_rng(0).random(30)
    assert stats.wilcoxon_pvalue(a, a.copy()) == 1.0
    # Five positive differences: exact two-sided p = 2 / 2^5.
    assert stats.wilcoxon_pvalue(np.arange(1.0, 6.0), np.zeros(5)) == pytest.approx(0.0625)
    assert stats.wilcoxon_pvalue(a + 0.2 + np.random.default_rng(1).normal(0, 0.02, 30), a) < 0.01


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="differ in length"):
        stats.paired_bootstrap_pvalue(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        stats.bootstrap_ci(np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match="empty"):
        stats.mean_ci_t(np.array([]))

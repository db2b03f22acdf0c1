"""The leaderboard's statistics, proven by simulation of clustered per-image Dice.

Model of one data set: ``n_subjects`` (10-47) subjects with 20-150 frames each; a frame's Dice is
``clip(MU + u_subject + e_image, 0, 1)`` with normal effects whose intra-class correlation (ICC)
is drawn in 0.02-0.1. Clipping puts a mass at 1 (empty predicted on empty truth, or a perfect
mask) and at 0 (a miss), as on Kaggle. The latent mean and spread are fixed, so the true
expected Dice of an image is known exactly (a clipped-normal mean).

For two models scored on the same images, Dice shares the image and subject difficulty (the
correlated part), plus model-specific subject and image effects with the same ICC. The models
are equal in distribution, so H0 "no difference" is true and every rejection is a false one.

The same simulations run the OLD per-image methods (``bootstrap_ci``, ``paired_bootstrap_pvalue``)
and show they fail, so these tests can fail. Every draw is seeded: the figures are reproducible.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from benchmark.scoring import stats

MU, SD = 0.62, 0.38  # latent mean and total sd: ~16% of frames at 1, ~5% at 0
SHARED = 0.7  # share of the latent variance common to both models (image/subject difficulty)
N_DATASETS = 500


def _true_mean() -> float:
    """E[clip(X, 0, 1)] for X ~ N(MU, SD^2): E[X; 0 < X < 1] + P(X >= 1)."""
    a, b = -MU / SD, (1 - MU) / SD
    inside = MU * (sps.norm.cdf(b) - sps.norm.cdf(a)) + SD * (sps.norm.pdf(a) - sps.norm.pdf(b))
    return float(inside + sps.norm.sf(b))


def _effects(rng: np.random.Generator, subjects: np.ndarray, sd: float, icc: float) -> np.ndarray:
    """Subject effect plus image noise with total sd ``sd`` and intra-class correlation ``icc``."""
    n_subjects = int(subjects[-1]) + 1
    per_subject = rng.normal(0.0, sd * np.sqrt(icc), n_subjects)[subjects]
    return per_subject + rng.normal(0.0, sd * np.sqrt(1.0 - icc), subjects.size)


def _dataset(
    rng: np.random.Generator, n_models: int = 1, n_subjects: int | None = None, icc: float | None = None
) -> tuple[list[np.ndarray], np.ndarray]:
    """Per-image Dice of ``n_models`` equal models on one simulated data set, and subject ids.

    Subject count and ICC are drawn (10-47, 0.02-0.1) unless given.
    """
    n_subjects = int(rng.integers(10, 48)) if n_subjects is None else n_subjects
    icc = float(rng.uniform(0.02, 0.1)) if icc is None else icc
    subjects = np.repeat(np.arange(n_subjects), rng.integers(20, 151, n_subjects))
    if n_models == 1:
        return [np.clip(MU + _effects(rng, subjects, SD, icc), 0.0, 1.0)], subjects
    shared = _effects(rng, subjects, SD * np.sqrt(SHARED), icc)
    own = [_effects(rng, subjects, SD * np.sqrt(1.0 - SHARED), icc) for _ in range(n_models)]
    return [np.clip(MU + shared + o, 0.0, 1.0) for o in own], subjects


def test_simulation_has_the_stated_clustering():
    # One-way ANOVA estimate of the ICC of the CLIPPED Dice at a latent ICC of 0.05, on a large
    # data set, so the stated 0.02-0.1 range describes the values the tests actually see.
    rng = np.random.default_rng(0)
    subjects = np.repeat(np.arange(400), 100)
    dice = np.clip(MU + _effects(rng, subjects, SD, 0.05), 0.0, 1.0)
    means = dice.reshape(400, 100).mean(axis=1)
    within = dice.reshape(400, 100).var(axis=1, ddof=1).mean()
    between = means.var(ddof=1) - within / 100
    assert 0.03 < between / (between + within) < 0.07
    assert np.mean(dice == 1.0) > 0.1 and np.mean(dice == 0.0) > 0.03
    assert dice.mean() == pytest.approx(_true_mean(), abs=0.01)


def test_sign_flip_type_one_error():
    rng = np.random.default_rng(11)
    rejected = []
    for i in range(N_DATASETS):
        (a, b), subjects = _dataset(rng, n_models=2)
        _, diffs, _ = stats.subject_means(a - b, subjects)
        rejected.append(stats.sign_flip_pvalue(diffs, n_resamples=5000, seed=i) < 0.05)
    rate = float(np.mean(rejected))
    print(
        f"sign-flip on subject means: false-positive rate {rate:.3f} at alpha 0.05 ({N_DATASETS} data sets)"
    )
    assert rate <= 0.08
    assert rate >= 0.02  # not vacuous: a test that never rejects would also pass the line above


def test_sign_flip_has_power():
    # The same paired set-up with model A truly better by 0.05 Dice (a typical architecture gap).
    rng = np.random.default_rng(12)
    rejected = []
    for i in range(200):
        (a, b), subjects = _dataset(rng, n_models=2)
        _, diffs, _ = stats.subject_means(np.clip(a + 0.05, 0, 1) - b, subjects)
        rejected.append(stats.sign_flip_pvalue(diffs, n_resamples=5000, seed=i) < 0.05)
    print(f"sign-flip power for a +0.05 Dice gap: {np.mean(rejected):.3f}")
    assert np.mean(rejected) >= 0.8


def test_subject_bootstrap_coverage():
    rng, truth = np.random.default_rng(21), _true_mean()
    covered, widths = [], []
    for i in range(N_DATASETS):
        (dice,), subjects = _dataset(rng)
        _, lo, hi = stats.subject_bootstrap_ci(dice, subjects, n_boot=2000, seed=i)
        covered.append(lo <= truth <= hi)
        widths.append(hi - lo)
    coverage = float(np.mean(covered))
    print(f"subject bootstrap 95% CI coverage {coverage:.3f}, mean width {np.mean(widths):.3f}")
    assert coverage >= 0.90
    assert coverage <= 0.99  # not trivially wide


@pytest.mark.parametrize("icc", [0.02, 0.1])
def test_worst_case_ten_subjects(icc):
    # The hardest corner: 10 subjects. A plain percentile bootstrap covers ~0.88 here (a z-width
    # interval on 10 observations); the expanded interval must still reach 0.90, and the exact
    # sign-flip test must keep its level.
    rng, truth = np.random.default_rng(int(icc * 1000)), _true_mean()
    covered, rejected = [], []
    for i in range(1000):  # 1000 data sets: the rate's standard error is ~0.007 at 0.05
        (dice, a, b), subjects = _dataset(rng, n_models=3, n_subjects=10, icc=icc)
        _, lo, hi = stats.subject_bootstrap_ci(dice, subjects, seed=i)
        covered.append(lo <= truth <= hi)
        rejected.append(stats.sign_flip_pvalue(stats.subject_means(a - b, subjects)[1]) < 0.05)
    print(f"10 subjects, ICC {icc}: coverage {np.mean(covered):.3f}, false positives {np.mean(rejected):.3f}")
    assert np.mean(covered) >= 0.90 and np.mean(rejected) <= 0.08


def test_per_image_methods_fail_on_clustered_frames():
    """The old approach treats frames as independent: its CI is too narrow, its test too eager."""
    rng, truth = np.random.default_rng(31), _true_mean()
    covered, rejected = [], []
    for i in range(150):
        (dice, a, b), subjects = _dataset(rng, n_models=3)
        _, lo, hi = stats.bootstrap_ci(dice, n_boot=500, seed=i)
        covered.append(lo <= truth <= hi)
        rejected.append(stats.paired_bootstrap_pvalue(a, b, n_boot=500, seed=i) < 0.05)
    coverage, rate = float(np.mean(covered)), float(np.mean(rejected))
    print(f"per-image bootstrap coverage {coverage:.3f}; per-image paired test false positives {rate:.3f}")
    assert coverage < 0.80
    assert rate > 0.15

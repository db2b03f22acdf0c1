"""Confidence intervals, paired tests and multiplicity correction against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmark.scoring import ranking, stats
from tests.benchmark import oracles


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
    assert oracles.paired_bootstrap_pvalue(a, a.copy(), n_boot=500) == 1.0
    # A constant shift: every centred resample mean is 0 < 0.1, so p = 1 / (1 + n_boot).
    assert oracles.paired_bootstrap_pvalue(a + 0.1, a, n_boot=999) == pytest.approx(0.001)
    # d = [2, 0]: centred [1, -1]; |resample mean| >= 1 with probability 1/2.
    p = oracles.paired_bootstrap_pvalue(np.array([2.0, 0.0]), np.zeros(2), n_boot=4000)
    assert p == pytest.approx(0.5, abs=0.03)
    noisy = a + 0.3 + np.random.default_rng(1).normal(0, 0.05, 40)
    assert oracles.paired_bootstrap_pvalue(noisy, a, n_boot=2000) < 0.01
    assert oracles.paired_bootstrap_pvalue(a, noisy, n_boot=2000) == oracles.paired_bootstrap_pvalue(
        noisy, a, n_boot=2000
    )


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="differ in length"):
        oracles.paired_bootstrap_pvalue(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        stats.bootstrap_ci(np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match="empty"):
        stats.bootstrap_ci(np.array([]))
    with pytest.raises(ValueError, match="subjects has 2 entries but values has 3"):
        stats.subject_bootstrap_ci(np.zeros(3), [1, 2])
    with pytest.raises(ValueError, match="NaN"):
        stats.sign_flip_pvalue(np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        stats.holm([0.5, 1.5])


def test_subject_means_hand_computed():
    ids, means, counts = stats.subject_means(np.array([1.0, 0.0, 0.5, 1.0, 0.0]), ["b", "a", "b", "b", "c"])
    assert ids.tolist() == ["a", "b", "c"]
    assert means.tolist() == [0.0, 2.5 / 3, 0.0] and counts.tolist() == [1, 3, 1]


def test_subject_bootstrap_hand_cases():
    # Subject 1: three images at 0; subject 2: one image at 1. Image mean 1/4. Resamples {1,1} -> 0,
    # {1,2} -> 1/4, {2,2} -> 1 (probabilities 1/4, 1/2, 1/4); the expanded 2-subject interval's
    # tails (t_{0.975,1} = 12.7) are far below 1/4, so it spans the extremes 0 and 1.
    assert stats.subject_bootstrap_ci(np.array([0.0, 0.0, 0.0, 1.0]), [1, 1, 1, 2]) == (0.25, 0.0, 1.0)
    mean, lo, hi = stats.subject_bootstrap_ci(np.array([0.3, 0.5]), [7, 7])
    assert mean == 0.4 and math.isnan(lo) and math.isnan(hi)  # one subject: nothing to resample
    assert stats.subject_bootstrap_ci(np.full(6, 0.8), [1, 1, 2, 2, 3, 3]) == pytest.approx((0.8, 0.8, 0.8))


def test_subject_bootstrap_resamples_subjects_not_images():
    # 4 subjects x 100 identical frames at 0, 0, 1, 1: 400 "independent" images would give a
    # +-0.05 interval; there are really 4 observations, so the interval must span most of [0, 1].
    values = np.repeat([0.0, 0.0, 1.0, 1.0], 100)
    subjects = np.repeat(np.arange(4), 100)
    mean, lo, hi = stats.subject_bootstrap_ci(values, subjects)
    _, old_lo, old_hi = stats.bootstrap_ci(values)
    assert mean == 0.5 and hi - lo >= 0.7 and old_hi - old_lo < 0.15


def test_subject_bootstrap_deterministic_and_normal_theory():
    rng = np.random.default_rng(0)
    subjects = np.repeat(np.arange(40), rng.integers(20, 60, 40))
    values = rng.normal(0, 1, 40)[subjects]  # pure subject effect: 40 observations of sd 1
    first = stats.subject_bootstrap_ci(values, subjects, seed=3)
    assert stats.subject_bootstrap_ci(values, subjects, seed=3) == first
    assert stats.subject_bootstrap_ci(values, subjects, seed=4) != first
    mean, lo, hi = first
    assert lo < mean < hi
    # Unequal sizes make the ratio estimator's se only roughly sd/sqrt(40) ~ 0.158: 95% half ~0.31.
    assert (hi - lo) / 2 == pytest.approx(1.96 / np.sqrt(40), rel=0.35)


def test_subject_bootstrap_widens_its_tails_for_few_subjects():
    """Six one-image subjects at 0, 0, 0, 0, 0.5, 1: a resample's mean reaches 0.75 (total >= 4.5)
    with probability 0.0040, exceeds it with 0.0010, reaches 2/3 with 0.0146. The expanded tail
    2 sf(sqrt(6/5) t_{0.975,5}) / 2 = 0.0049 / 2 = 0.0024 puts hi at 0.75; an interval without the
    sqrt(n / (n - 1)) widening (tail 0.0102 / 2 = 0.0051) would stop at 2/3."""
    values = np.array([0.0, 0.0, 0.0, 0.0, 0.5, 1.0])
    assert stats.subject_bootstrap_ci(values, np.arange(6), n_boot=200_000) == pytest.approx(
        (0.25, 0.0, 0.75)
    )


def _brute_force_sign_flip(d: np.ndarray) -> float:
    signs = np.array(np.meshgrid(*[[1.0, -1.0]] * d.size)).reshape(d.size, -1).T
    return float(np.mean(np.abs(signs @ d) >= abs(d.sum()) - 1e-9))


def test_sign_flip_hand_computed():
    # [1, 2, 3]: signed sums 6, 4, 2, 0, 0, -2, -4, -6; |sum| >= 6 for 2 of 8 patterns.
    assert stats.sign_flip_pvalue(np.array([1.0, 2.0, 3.0])) == 0.25
    # [1, -2, 3, 0.5]: observed 2.5; |s . d| is 0.5 (4 patterns), 1.5 (2) or >= 2.5 (the other 10).
    assert stats.sign_flip_pvalue(np.array([1.0, -2.0, 3.0, 0.5])) == 10 / 16
    assert stats.sign_flip_pvalue(np.zeros(5)) == 1.0
    assert stats.sign_flip_pvalue(np.full(10, 0.01)) == 2 / 1024  # the smallest p with 10 subjects
    assert stats.sign_flip_pvalue(np.array([-0.2])) == 1.0  # one subject can never reject
    assert stats.sign_flip_pvalue(np.array([1.0, 2.0, 3.0]), exact_max=3) == 0.25  # n = exact_max: exact


def test_sign_flip_exact_matches_brute_force():
    rng = np.random.default_rng(1)
    for n in range(1, 13):
        d = rng.normal(0.1, 1.0, n)
        assert stats.sign_flip_pvalue(d) == pytest.approx(_brute_force_sign_flip(d), abs=1e-12)
        assert stats.sign_flip_pvalue(-d) == stats.sign_flip_pvalue(d)


def test_sign_flip_monte_carlo_agrees_with_exact():
    d = np.random.default_rng(2).normal(0.25, 1.0, 24)
    exact = stats.sign_flip_pvalue(d, exact_max=24)
    mc = stats.sign_flip_pvalue(d, n_resamples=20000, seed=5, exact_max=20)
    assert 0.005 < exact < 0.5 and mc == pytest.approx(exact, abs=4 * np.sqrt(exact * (1 - exact) / 20000))
    assert stats.sign_flip_pvalue(d, n_resamples=999, seed=5) == stats.sign_flip_pvalue(
        d, n_resamples=999, seed=5
    )
    # Every flip of 30 equal positive differences is less extreme except the observed pattern
    # itself, which a random draw hits with probability 2^-29: p = (1 + 0) / (1 + 999).
    assert stats.sign_flip_pvalue(np.full(30, 0.1), n_resamples=999) == pytest.approx(1 / 1000)


def test_holm_hand_computed():
    # m = 4 present: sorted 0.01, 0.02, 0.03, 0.5 -> 4*0.01 = 0.04, 3*0.02 = 0.06, 2*0.03 = 0.06,
    # 1*0.5 = 0.5 (running maxima already monotone); None stays None and does not count.
    assert stats.holm([0.03, None, 0.01, 0.5, 0.02]) == pytest.approx([0.06, None, 0.04, 0.5, 0.06])
    # Step-down monotonicity: sorted 0.01, 0.04, 0.045 -> 0.03, 0.08, max(0.08, 0.045) = 0.08.
    assert stats.holm([0.045, 0.01, 0.04]) == pytest.approx([0.08, 0.03, 0.08])
    assert stats.holm([0.6, 0.7]) == [1.0, 1.0]  # capped at 1
    assert stats.holm([]) == [] and stats.holm([None]) == [None]


def test_subject_totals_hand_computed():
    ids, totals, counts = stats.subject_totals(np.array([1.0, 0.0, 0.5, 1.0, 0.0]), ["b", "a", "b", "b", "c"])
    assert (
        ids.tolist() == ["a", "b", "c"]
        and totals.tolist() == [0.0, 2.5, 0.0]
        and counts.tolist() == [1, 3, 1]
    )


def test_subject_resamples_are_seeded_multinomial_draws():
    boot = ranking.Resamples.draw(7, n_boot=500, seed=3)
    assert boot.counts.shape == (500, 7) and (boot.counts.sum(axis=1) == 7).all()
    assert np.array_equal(boot.counts, ranking.Resamples.draw(7, n_boot=500, seed=3).counts)
    assert not np.array_equal(boot.counts, ranking.Resamples.draw(7, n_boot=500, seed=4).counts)
    assert boot.counts.mean() == pytest.approx(1.0) and boot.sums(np.ones(7)).tolist() == [7.0] * 500


def test_pairs_studentise_the_image_weighted_difference():
    # Subjects of 1, 2 and 3 images; model 0 - model 1 totals d = (1, 0, -0.5): the image-weighted
    # gap is 0.5 / 6, residuals d - w gap = (1 - 1/12, -1/6, -0.75), z = 0.5 / ||residuals||.
    totals = np.array([[1.0, 1.0, 1.0], [0.0, 1.0, 1.5]])
    pairs = ranking.Pairs.compare(totals, [1, 2, 3], ranking.Resamples.draw(3, 100, 0))
    resid = np.array([1 - 1 / 12, -1 / 6, -0.75])
    assert pairs.first.tolist() == [0] and pairs.second.tolist() == [1]
    assert pairs.z[0] == pytest.approx(0.5 / np.linalg.norm(resid)) and pairs.null.shape == (100, 1)
    with pytest.raises(ValueError, match="NaN"):
        ranking.Pairs.compare(np.array([[np.nan, 1.0]]), [1, 1])
    with pytest.raises(ValueError, match="2 positive image counts"):
        ranking.Pairs.compare(np.ones((2, 2)), [1, 0])


def test_best_set_hand_cases():
    boot = ranking.Resamples.draw(8, 2000, 0)
    base = np.linspace(0.5, 0.9, 8)
    # 0.3 worse on every subject: an exact gap (no spread): excluded at the bootstrap's smallest p
    pairs = ranking.Pairs.compare(np.vstack([base, base - 0.3]), np.ones(8), boot)
    assert pairs.z[0] == np.inf and ranking.best_set(pairs).tolist() == [1.0, 1 / 2001]
    # identical models: nothing to tell apart, p = 1 (no division warning either)
    with np.errstate(all="raise"):
        same = ranking.Pairs.compare(np.vstack([base, base, base - 0.3]), np.ones(8), boot)
        p = ranking.best_set(same)
    assert p[:2].tolist() == [1.0, 1.0] and p[2] == pytest.approx(3 / 2001)  # Bonferroni over 3 pairs
    assert ranking.best_set(same, [0, 1]).tolist() == [1.0, 1.0]  # the family can leave a row out
    # fewer than MIN_SUBJECTS subjects: every p is 1, however clear the gap
    few = ranking.Pairs.compare(np.vstack([base[:5], base[:5] - 0.3]), np.ones(5), ranking.Resamples.draw(5))
    assert ranking.MIN_SUBJECTS == 6 and ranking.best_set(few).tolist() == [1.0, 1.0]
    # the running maximum: a model removed later never has a smaller p than one removed earlier
    rng = np.random.default_rng(5)
    noisy = rng.normal(0.7, 0.1, (5, 20)) + np.array([[0.0], [-0.02], [-0.04], [-0.2], [-0.25]])
    p = ranking.best_set(ranking.Pairs.compare(noisy, np.ones(20), ranking.Resamples.draw(20, 2000, 1)))
    assert p[0] == 1.0 and p[4] <= p[3] <= 1.0 and (p[3:] < 0.05).all() and (p[:2] >= 0.05).all()


def test_rank_intervals_hand_cases():
    boot = ranking.Resamples.draw(8, 2000, 0)
    base = np.linspace(0.5, 0.9, 8)
    exact = ranking.Pairs.compare(np.vstack([base, base - 0.1, base - 0.2]), np.ones(8), boot)
    assert [x.tolist() for x in ranking.rank_intervals(exact)] == [[1, 2, 3], [1, 2, 3]]
    tied = ranking.Pairs.compare(np.vstack([base - 0.2, base, base]), np.ones(8), boot)
    assert [x.tolist() for x in ranking.rank_intervals(tied)] == [[3, 1, 1], [3, 2, 2]]
    one = ranking.Pairs.compare(np.array([[0.9], [0.1]]), [4], ranking.Resamples.draw(1))
    assert [x.tolist() for x in ranking.rank_intervals(one)] == [[1, 1], [2, 2]]


def test_detectable_difference_hand_cases_and_scaling():
    w = np.arange(5, 25, dtype=float)
    d = np.random.default_rng(2).normal(0, 0.05, 20) * w
    boot = ranking.Resamples.draw(20, 2000, 0)
    (mde,) = ranking.detectable_differences(d[None], w, 2.5, resamples=boot)
    # the spread scales the answer exactly: residuals c r and gap c delta give the same statistics
    (half,) = ranking.detectable_differences(d[None] / 2, w, 2.5, resamples=boot)
    assert 0.0 < mde < 1.0 and half == pytest.approx(mde / 2, abs=2**-23)  # the bisection's step
    # a shift of the observed gap does not change the spread, so neither the MDE
    assert ranking.detectable_differences((d + 0.03 * w)[None], w, 2.5, resamples=boot) == pytest.approx(
        [mde]
    )
    (stricter,) = ranking.detectable_differences(d[None], w, 3.5, resamples=boot)
    assert stricter > mde  # a higher bar (more pairs on the board) needs a bigger gap
    assert ranking.detectable_differences(d[None], w, float("inf"), resamples=boot) == [None]
    assert ranking.detectable_differences((0.02 * w)[None], w, 2.5, resamples=boot) == [0.0]  # no spread
    assert ranking.detectable_differences(d[None, :5], w[:5], 2.5) == [None]  # too few subjects
    assert ranking.detectable_differences((d * 1e3)[None], w, 2.5, resamples=boot) == [None]  # beyond Dice


def _power_by_hand(d: np.ndarray, w: np.ndarray, gap: float, critical: float, counts: np.ndarray) -> float:
    """Each resample's studentised gap computed directly, as Pairs does for an observed pair."""
    n = w.size
    resid = (d - d.sum() / w.sum() * w) * np.sqrt(n / (n - 1))
    hits = 0
    for sign in (1.0, -1.0):
        for c in counts.astype(int):
            x, cw = np.repeat(sign * resid + gap * w, c), np.repeat(w, c)
            mean = x.sum() / cw.sum()
            hits += abs(x.sum()) > critical * np.sqrt(((x - mean * cw) ** 2).sum())
    return hits / (2 * len(counts))


def test_detectable_difference_reaches_the_power_on_its_own_resamples():
    """At the MDE the resampled data reach the stated power against the critical value; a little
    below it they do not (the power curve's algebra against a direct computation)."""
    w = np.arange(5, 17, dtype=float)
    d = np.random.default_rng(5).normal(0, 0.05, 12) * w
    boot = ranking.Resamples.draw(12, 300, 1)
    (mde,) = ranking.detectable_differences(d[None], w, 2.5, resamples=boot)
    assert (
        _power_by_hand(d, w, mde, 2.5, boot.counts)
        >= 0.8
        > _power_by_hand(d, w, mde * 0.98, 2.5, boot.counts)
    )


def test_simultaneous_criticals_are_where_the_corrected_p_crosses_alpha():
    """p < alpha exactly when a pair's |z| exceeds its own critical value, pairs with different nulls
    (one heavy-tailed, one with unbounded resamples) included."""
    rng = np.random.default_rng(4)
    null = np.column_stack(
        [rng.exponential(1.0, 999), rng.standard_cauchy(999) ** 2, rng.exponential(2.0, 999)]
    )
    null[:120, 2] = np.finfo(np.float64).max  # 12% of one pair's resamples without spread
    z = rng.uniform(-12, 12, size=(400, 3))
    for row in z:
        pairs = ranking.Pairs(np.zeros(3, int), np.ones(3, int), row, null, np.zeros(2), 40, np.zeros(3))
        critical = ranking.simultaneous_criticals(pairs, 0.05)
        assert ((ranking.simultaneous_pvalues(pairs) < 0.05) == (np.abs(row) > critical)).all()
    assert np.isinf(critical[2]) and np.isfinite(critical[:2]).all()  # only that pair is untestable
    few = ranking.Pairs(
        pairs.first, pairs.second, row, null, pairs.sums, 5, np.zeros(3)
    )  # below MIN_SUBJECTS
    assert (ranking.simultaneous_pvalues(few) == 1.0).all()


def test_a_pair_without_spread_in_its_resamples_leaves_the_other_pairs_testable():
    """A weak model equal to the floor on 45 of 47 subjects: 13% of the resamples show that pair no
    difference at all while its gap is not 0 (unbounded). Under the max over raw statistics that
    put every p on the board above 0.05; judged pair by pair first, the clear gaps stay clear."""
    rng = np.random.default_rng(0)
    w = rng.integers(60, 180, 47).astype(float)
    a, b = 0.7 * w + rng.normal(0, 0.05, 47) * w, 0.7 * w + rng.normal(-0.04, 0.05, 47) * w
    c, floor = 0.7 * w + rng.normal(-0.1, 0.05, 47) * w, 0.55 * w + rng.normal(0, 0.02, 47) * w
    weak = floor.copy()
    weak[:2] += 0.2 * w[:2]
    pairs = ranking.Pairs.compare(np.vstack([a, b, c, weak, floor]), w, ranking.Resamples.draw(47, 4000, 0))
    assert (np.abs(pairs.null[:, 9]) == np.finfo(np.float64).max).mean() > 0.1  # weak vs floor: unbounded
    p = ranking.simultaneous_pvalues(pairs)
    assert (p[:9] < 0.01).all() and p[9] > 0.5  # every pair tells apart but weak vs floor (z 1.5)
    assert np.isinf(ranking.simultaneous_criticals(pairs)[9]) and ranking.simultaneous_criticals(pairs)[0] < 4
    lo, hi = ranking.rank_intervals(pairs)
    assert lo.tolist() == [1, 2, 3, 4, 4] and hi.tolist() == [1, 2, 3, 5, 5]
    assert (ranking.best_set(pairs)[1:] < 0.005).all()  # the best alone in the set


def test_a_resample_without_spread_counts_the_same_whatever_the_rounding():
    """Issue 17's counter-example (one subject of ~1,000 frames 0.1 worse, 11 small ones better) in
    two spellings: one whose flat resamples cancel to exactly 0 in floating point (powers of two),
    one that leaves rounding. A resample without the big subject moves the gap without any spread;
    both spellings must count it alike (they gave p = 0.002 and 0.35 when flatness was absolute)."""
    p = []
    for big, small, frames, heavy in ((0.1, 0.05, 5.0, 1000.0), (0.125, 0.125, 4.0, 1024.0)):
        w = np.array([heavy] + [frames] * 11)
        d = np.array([-big * heavy] + [small * frames] * 11)
        pairs = ranking.Pairs.compare(
            np.vstack([np.full(12, 50.0), 50.0 + d]), w, ranking.Resamples.draw(12, 4000, 0)
        )
        p.append(float(ranking.simultaneous_pvalues(pairs)[0]))
    # (11/12)^12 = 0.35 of the resamples lack the big subject: at least that share is as extreme
    assert p[0] == pytest.approx(p[1], abs=0.02) and min(p) > 0.3


def test_rank_intervals_read_the_corrected_p_and_one_sided_turns_the_sign():
    """Three models, 99 resamples; pair (0, 1) has z = 5 and one resample at 10: its own p is
    (1 + 1) / 100 = 0.02, Bonferroni over 3 pairs 0.06. Catches rank intervals read from the
    uncorrected p (they would call 0 above 1: lo [1, 2, 1], hi [2, 3, 3]) and a one-sided p that
    ignores the direction (the reverse "1 beats 0" counts the 98 resamples at 0 >= -5: 0.99)."""
    null = np.zeros((99, 3))
    null[0, 0] = 10.0
    z = np.array([5.0, 0.0, 0.0])
    pairs = ranking.Pairs(
        np.array([0, 0, 1]), np.array([1, 2, 2]), z, null, np.array([3.0, 2, 1]), 8, np.zeros(3)
    )
    assert pairs.marginal.tolist() == pytest.approx([0.02, 1.0, 1.0])
    assert ranking.simultaneous_pvalues(pairs).tolist() == pytest.approx([0.06, 1.0, 1.0])
    assert [x.tolist() for x in ranking.rank_intervals(pairs)] == [[1, 1, 1], [3, 3, 3]]
    assert pairs.one_sided(0, True) == pytest.approx(0.02)
    assert pairs.one_sided(0, False) == pytest.approx(0.99)

"""Which model is best, where each one ranks, and what the board could detect (pure numpy).

The board ranks by the image-weighted mean theta_m = sum_i T_mi / sum_i w_i, where T_mi is the total
of model m's per-image score over the w_i images of subject i. Everything here works on those
per-subject TOTALS with the counts w as weights, so it tests and bounds the quantity the board
ranks by (per-subject MEANS weight every subject equally: another quantity whenever subject
effects depend on subject size). The subject is the unit of independence.

* ``Resamples``: a seeded subject bootstrap (how often each subject is drawn, per resample), one
  draw per board, shared by the set, the rank intervals and the power analysis.
* ``Pairs``: for every pair of models the studentised difference z_jk = (theta_j - theta_k) / se_jk,
  se_jk^2 = sum_i (d_i - w_i (theta_j - theta_k))^2 / W^2 with d_i = T_ji - T_ki and W = sum_i w_i
  (the delta-method variance of a ratio estimator), and its bootstrap-t resamples
  |theta*_jk - theta_jk| / se*_jk (the same formula on each resample: the studentized or
  bootstrap-t method, Hall, "The Bootstrap and Edgeworth Expansion", 1992, ch. 3; Davison & Hinkley
  1997, ch. 5). A sign-flip null (flipping every pair's d_i together) was tried first: it is exact
  for two models with symmetric differences but over-rejects when model differences depend
  strongly on subject size (the all-pairs max excluded one of 5 equal models 7% of the time with
  10-20 subjects); the bootstrap-t held its level (2-5%), and a bootstrap with the observed scale
  kept fixed (no per-resample studentising) did not (26% with 10 subjects). With ``seeds`` (two or
  more per model) each model's seeds are drawn inside every resample and their variance joins se_jk,
  on the data and on each resample (``benchmark.scoring.seed_draws``): training randomness.
* Each pair is judged against its own bootstrap-t null (``Pairs.marginal``), and the correction
  over pairs is Bonferroni's. Two resampling corrections were tried first and failed: a max over
  the raw statistics (max-t) let one pair whose resamples often move without any spread (two
  models equal on most subjects; unbounded statistics) set a floor under every p on the board, so
  a model equal to the floor on 45 of 47 subjects left no other pair testable; a min over the
  pairs' own p-values (Westfall-Young min-p) fixed that, but with few subjects the resamples tie
  the pairs together more than the data do, and it called some of 8 equal models different in
  9.7% of data sets of 6 subjects (17% with 12 models). Bonferroni holds whatever the pairs'
  dependence (1.1-2.9% there).
  A resample without spread counts as unbounded when its gap moved, 0 when it did not (an observed
  constant gap is infinite, more extreme still); flatness is judged relative to the sum of squares,
  as the expanded variance cancels to rounding, rarely to 0.
* ``best_set``: p-values of the model confidence set (Hansen, Lunde & Nason, "The Model Confidence
  Set", Econometrica 79(2), 2011, 453-497). Each step tests "every remaining model has the same
  image-weighted mean" by the smallest own p over the remaining pairs, Bonferroni-corrected for
  their number, removes the model most significantly beaten if it rejects, and repeats; a
  model's p-value is the running maximum of the step p-values up to its removal (1 for the last).
  {m : p_m >= alpha} contains every best model with probability >= 1 - alpha. It is not always
  the top rows: a small but consistent gap can be significant where a larger, noisier one is not.
* ``simultaneous_pvalues``: each pair's own p corrected over ALL pairs (Bonferroni): the familywise
  error stays at alpha whichever pairs are read, so also a model against a top picked on the same
  data (a per-pair test against the observed top called some model of 5 equal ones worse in 28%
  of data sets of 10-47 subjects, Holm over those tests in 8.5%).
* ``rank_intervals``: simultaneous (1 - alpha) intervals for every model's rank (Mogstad, Romano,
  Shaikh & Wilhelm, "Inference for Ranks with Applications to Mobility across Neighborhoods and
  Academic Achievement across Countries", Rev. Econ. Stud. 91(1), 2024, simultaneous
  version): a pair differs when its simultaneous p is below alpha; rank of j in
  [1 + #models significantly better, K - #models significantly worse].
  The (marginal) per-model version was tried: its rows judge the same pair with different critical
  values, so the top could be "significantly better than B" while B's row said "nobody is".
* ``detectable_differences``: the smallest true gap that the simultaneous test detects with the
  given power, for these subjects' sizes and the observed spread of their per-subject
  differences: subjects are resampled (a bootstrap power analysis), the gap is added to each
  subject's centred differences in proportion to its image count, and the resample's studentised
  gap is held against that pair's simultaneous critical value.

With fewer than ``MIN_SUBJECTS`` subjects no sign-flip p can go below 0.05 (2 / 2^5 = 0.0625) and a
bootstrap of so few subjects says nothing: every model stays in the set, every rank interval is
[1, K] and no gap is detectable. tests/benchmark/test_stats_simulation.py proves each statistic by
simulation; every draw is seeded.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from benchmark.scoring.seed_draws import SeedDraws

MIN_SUBJECTS = 6
_BLOCK_CELLS = 4_000_000  # resample indices generated per block: ~32 MB of int64
_PAIR_BLOCK = 64  # pairs resampled per matrix product (one product, not one per pair, is what is fast)
_TOL = 1e-9  # relative: equal statistics in exact arithmetic may differ by rounding
_UNBOUNDED = float(np.finfo(np.float64).max)  # a resample's studentised gap without spread


def _matrix(totals: np.ndarray) -> np.ndarray:
    t = np.asarray(totals, dtype=np.float64)
    if t.ndim != 2 or t.shape[1] == 0:
        raise ValueError(f"totals must be (models, subjects) with at least one subject, got {t.shape}")
    if not np.isfinite(t).all():
        raise ValueError("totals contain NaN or infinite values")
    return t


def _weights(weights: np.ndarray, n: int) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.size != n or not (w > 0).all():
        raise ValueError(f"weights must be {n} positive image counts, got {w.size} values")
    return w


@dataclass(frozen=True)
class Resamples:
    """Subject bootstrap: ``counts[b, i]`` = how often subject i is drawn in resample b."""

    counts: np.ndarray

    @classmethod
    def draw(cls, n: int, n_boot: int = 10000, seed: int = 0) -> Resamples:
        if n < 1 or n_boot < 1:
            raise ValueError(f"need n >= 1 subjects and n_boot >= 1, got {n} and {n_boot}")
        rng, block = np.random.default_rng(seed), max(1, _BLOCK_CELLS // n)
        counts = np.empty((n_boot, n))
        for start in range(0, n_boot, block):
            rows = min(block, n_boot - start)
            idx = rng.integers(0, n, size=(rows, n)) + (np.arange(rows) * n)[:, None]
            counts[start : start + rows] = np.bincount(idx.reshape(-1), minlength=rows * n).reshape(rows, n)
        return cls(counts)

    def sums(self, x: np.ndarray) -> np.ndarray:
        """Resampled sums of per-subject values: (B,) for x of shape (n,), (B, m) for (n, m)."""
        return self.counts @ np.asarray(x, dtype=np.float64)


def _ratio(num: np.ndarray, den: np.ndarray, size: np.ndarray | float) -> np.ndarray:
    """num / den with a zero den kept defined: 0 when num is 0 too (nothing to tell), else inf.

    ``size`` is the magnitude the rounding of num and den is relative to.
    """
    zero = den <= 1e-12 * (1.0 + size)
    out = np.divide(num, den, out=np.zeros_like(num), where=~zero)
    gap = zero & (np.abs(num) > _TOL * (1.0 + size))
    out[gap] = np.copysign(np.inf, num[gap])
    return out


@dataclass(frozen=True)
class Pairs:
    """Studentised differences of every pair (first[q], second[q]) of models, with bootstrap-t nulls."""

    first: np.ndarray
    second: np.ndarray
    z: np.ndarray  # (P,): (theta_first - theta_second) / se
    null: np.ndarray  # (B, P): (theta* - theta) / se* per resample, signed
    sums: np.ndarray  # (K,): each model's total, to break ties in the elimination
    n_subjects: int
    seed_var: np.ndarray  # (P,): the training seeds' share of se^2 (in totals' units; 0 with one seed)

    @classmethod
    def compare(
        cls,
        totals: np.ndarray,
        weights: np.ndarray,
        resamples: Resamples | None = None,
        seeds: list[np.ndarray] | None = None,
        seed: int = 0,
        keys: list[int] | None = None,
    ) -> Pairs:
        """``totals``: (models, subjects), each model's seed-mean totals; ``seeds``: per model its
        per-seed totals (S_m, subjects), whose seeds are then drawn inside every subject resample
        (``benchmark.scoring.seed_draws``, each model's draws from its own stream ``keys[m]``); None:
        the trained networks held fixed."""
        t = _matrix(totals)
        k, n = t.shape
        w = _weights(weights, n)
        boot = Resamples.draw(n) if resamples is None else resamples
        draws = None if seeds is None else SeedDraws.draw(seeds, boot.counts, seed, keys)
        draws = draws if draws is not None and draws.any else None
        first, second = np.triu_indices(k, 1)
        d = t[first] - t[second]
        size = np.abs(d).sum(axis=1)
        gap = d.sum(axis=1) / w.sum()
        extra = np.zeros(first.size) if draws is None else draws.observed[first] + draws.observed[second]
        se2 = ((d - gap[:, None] * w) ** 2).sum(axis=1) + extra
        null = _nulls(boot, t, w, Pair(first, second, gap, size), draws)
        # The observed pair is flat by the resamples' rule: a constant gap with rounding-level noise
        # must not read as an extreme but finite z against resamples that count as unbounded.
        se = np.where(se2 <= 1e-10 * ((d**2).sum(axis=1) + extra), 0.0, np.sqrt(se2))
        return cls(first, second, _ratio(gap * w.sum(), se, size), null, t.sum(axis=1), n, extra)

    @cached_property
    def marginal(self) -> np.ndarray:
        """(P,) each pair's own bootstrap-t p-value, (1 + #{|null| >= |z|}) / (1 + B) (Phipson & Smyth
        2010): its observed |z| against its own resamples (equal up to rounding counts as equal)."""
        return _exceeding(np.abs(self.z), np.abs(self.null))

    def one_sided(self, q: int, first_better: bool) -> float:
        """Pair q's bootstrap-t p of "first beats second" (or the reverse): (1 + #{null >= z}) / (1 + B)
        with the signs turned for the reverse. Second-order accurate when the per-subject differences
        are skewed, where a sign flip tests symmetry rather than a zero mean."""
        sign = 1.0 if first_better else -1.0
        return float(_exceeding(sign * self.z[q : q + 1], sign * self.null[:, q : q + 1])[0])


@dataclass(frozen=True)
class Pair:
    """The pairs' indices, observed gaps (image-weighted) and sizes (sum |d|: what rounding is
    relative to)."""

    first: np.ndarray
    second: np.ndarray
    gap: np.ndarray
    size: np.ndarray


def _exceeding(stat: np.ndarray, null: np.ndarray) -> np.ndarray:
    """(1 + #{null >= stat}) / (1 + B) per column, equal up to rounding counting as equal."""
    finite = np.isfinite(stat)
    threshold = np.where(finite, stat - _TOL * (1.0 + np.abs(np.where(finite, stat, 0.0))), stat)
    return (1.0 + np.count_nonzero(null >= threshold, axis=0)) / (1.0 + null.shape[0])


def _studentised(moments: tuple, weight: np.ndarray, square: np.ndarray, pair: Pair, extra: np.ndarray):
    """(B, p) signed studentised resampled gaps from (sum c d, sum c d^2, sum c d w), each (B, p)."""
    sums, squares, cross = moments
    gap_b = sums / weight[:, None]
    var_b = squares - 2.0 * gap_b * cross + gap_b**2 * square[:, None] + extra
    moved = (gap_b - pair.gap) * weight[:, None]
    # A resample whose subjects all differ alike (and whose seeds agree) has no spread: its
    # studentised gap is 0 if the gap did not move, else unbounded. Unbounded is held as the largest
    # finite float: more extreme than any observed gap that has spread, less than one that has none
    # (a constant gap on every subject). The expansion above cancels to rounding, about 1e-16 of the
    # squares, rarely to 0, so "flat" is decided relative to them: an absolute test let the same
    # data give p = 0.35 or 0.002 as the rounding fell.
    flat = var_b <= 1e-10 * (squares + extra)
    studentised = _ratio(moved, np.sqrt(np.where(flat, 1.0, var_b)), pair.size)
    unbounded = np.where(np.abs(moved) > _TOL * (1.0 + pair.size), np.copysign(_UNBOUNDED, moved), 0.0)
    return np.where(flat, unbounded, studentised)


def _nulls(boot: Resamples, t: np.ndarray, w: np.ndarray, pair: Pair, draws: SeedDraws | None) -> np.ndarray:
    """(B, P) the bootstrap-t resamples of every pair: subjects drawn, and seeds with them if given."""
    weight, square = boot.sums(w), boot.sums(w * w)
    null = np.empty((boot.counts.shape[0], pair.first.size))
    if draws is not None:  # d* differs per resample: one pair at a time, elementwise
        for q, (j, k) in enumerate(zip(pair.first, pair.second)):
            moments = tuple(m[:, None] for m in draws.pair_moments(boot.counts, t, w, j, k))
            extra = (draws.resampled[:, j] + draws.resampled[:, k])[:, None]
            null[:, q : q + 1] = _studentised(moments, weight, square, _pick(pair, [q]), extra)
        return null
    d = t[pair.first] - t[pair.second]
    for start in range(0, pair.first.size, _PAIR_BLOCK):  # a few pairs at a time: memory stays (B, P)
        block = slice(start, start + _PAIR_BLOCK)
        moments = tuple(boot.sums(x.T) for x in (d[block], d[block] ** 2, d[block] * w))
        null[:, block] = _studentised(moments, weight, square, _pick(pair, block), np.zeros(1))
    return null


def _pick(pair: Pair, q: slice | list[int]) -> Pair:
    return Pair(pair.first[q], pair.second[q], pair.gap[q], pair.size[q])


def _worst(beaten: np.ndarray, sums: np.ndarray, alive: np.ndarray) -> int:
    """The remaining model most significantly beaten; ties: the lower total, then the later index."""
    score = np.where(alive, beaten, -np.inf)
    top = score[alive].max()
    tied = np.flatnonzero(alive & (score >= top - (_TOL * (1.0 + abs(top)) if np.isfinite(top) else 0.0)))
    return int(max(tied, key=lambda m: (-sums[m], m)))


def best_set(pairs: Pairs, members: list[int] | None = None) -> np.ndarray:
    """Model confidence set p-values for ``members`` (default: every model), in that order.

    In the (1 - alpha) set for the best image-weighted mean iff p >= alpha. One model, fewer than
    MIN_SUBJECTS subjects, or models identical on every image give p = 1.
    """
    k = pairs.sums.size
    members = list(range(k)) if members is None else list(members)
    alive = np.zeros(k, bool)
    alive[members] = True
    p = np.ones(k)
    if len(members) < 2 or pairs.n_subjects < MIN_SUBJECTS:
        return p[members]
    observed = pairs.marginal
    strength = np.where(pairs.z > 0, 1.0, -1.0) * (1.0 - observed)  # > 0: first beats second
    beaten_by = np.full((k, k), -np.inf)  # [o, m]: how significantly o beats m
    beaten_by[pairs.first, pairs.second], beaten_by[pairs.second, pairs.first] = strength, -strength
    running = 0.0
    for _ in range(len(members) - 1):
        live = np.flatnonzero(alive[pairs.first] & alive[pairs.second])
        step = min(1.0, live.size * float(observed[live].min()))  # Bonferroni over the remaining pairs
        running = max(running, step)
        worst = _worst(np.where(alive[:, None], beaten_by, -np.inf).max(axis=0), pairs.sums, alive)
        p[worst], alive[worst] = running, False
    return p[members]


def simultaneous_pvalues(pairs: Pairs) -> np.ndarray:
    """(P,) p-value of every pair, corrected over ALL pairs: its own bootstrap-t p times the number
    of pairs (Bonferroni), at most 1.

    Together they hold the familywise error at alpha whichever pairs are read, so also a model's
    pair with a top that was picked on the same data, and whatever the pairs' dependence. A pair
    whose resamples often move without spread (models equal on most subjects) weakens only its own
    verdict. All ones with fewer than MIN_SUBJECTS subjects.
    """
    if pairs.n_subjects < MIN_SUBJECTS or pairs.z.size == 0:
        return np.ones(pairs.z.size)
    return np.minimum(1.0, pairs.z.size * pairs.marginal)


def simultaneous_criticals(pairs: Pairs, alpha: float = 0.05) -> np.ndarray:
    """(P,) the |z| each pair must exceed for a simultaneous p below ``alpha`` (inf: none can, or
    only a constant gap can)."""
    b, out = pairs.null.shape[0], np.full(pairs.z.size, np.inf)
    # P (1 + A) / (1 + B) < alpha  <=>  A <= j - 1: fewer than j of the pair's resamples >= |z|
    j = int(np.ceil(alpha * (1 + b) / max(pairs.z.size, 1) - 1 - 1e-9))
    if pairs.z.size == 0 or not 1 <= j <= b:
        return out
    ranked = np.sort(np.abs(pairs.null), axis=0)[b - j]  # |z| above the pair's j-th largest resample
    return np.where(ranked < _UNBOUNDED, ranked, np.inf)


def rank_intervals(pairs: Pairs, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi): simultaneous (1 - alpha) intervals for every model's rank, rank 1 = highest mean.

    A pair differs significantly when its simultaneous p-value (:func:`simultaneous_pvalues`) is
    below alpha, so each pair is judged once and both of its rows agree; the intervals then cover
    all true ranks together with probability >= 1 - alpha.
    """
    k = pairs.sums.size
    lo, hi = np.ones(k, dtype=np.int64), np.full(k, k, dtype=np.int64)
    if k < 2 or pairs.n_subjects < MIN_SUBJECTS:
        return lo, hi
    significant = simultaneous_pvalues(pairs) < alpha
    better, worse = pairs.first[significant & (pairs.z > 0)], pairs.second[significant & (pairs.z > 0)]
    below, above = pairs.first[significant & (pairs.z < 0)], pairs.second[significant & (pairs.z < 0)]
    np.add.at(lo, np.concatenate([worse, below]), 1)  # someone significantly better
    np.subtract.at(hi, np.concatenate([better, above]), 1)  # someone significantly worse
    return lo, hi


def _power_curve(
    resid: np.ndarray, w: np.ndarray, critical: np.ndarray, boot: Resamples, seed_var: np.ndarray, seed: int
):
    """power(gaps) per row: share of subject resamples, shifted by gap * w, whose studentised gap
    (the pair statistic z of :class:`Pairs`) exceeds the row's ``critical`` in size. The seeds'
    variance ``seed_var``, scaled to the resample's size, joins the denominator, and a normal draw of
    it the gap (a new data set's seeds differ too). Averaged over the residuals' two signs, so the
    direction of the gap does not matter."""
    size, sq = boot.sums(w)[:, None], boot.sums(w * w)[:, None]
    extra = seed_var * (size / w.sum()) ** 2
    noise = np.random.default_rng([seed, 3]).standard_normal((size.size, 1)) * np.sqrt(extra)
    sums, rr, rw = (boot.sums(x.T) for x in (resid, resid * resid, resid * w))  # (B, rows)

    def power(true_gap: np.ndarray) -> np.ndarray:
        hits = np.zeros(true_gap.size)
        gap = true_gap + noise / size  # the seeds' draw moves every subject alike, by its frames
        for sign in (1.0, -1.0):  # d = sign * r + gap * w, resampled; no division: spread 0 handled
            total, cross = sign * sums + gap * size, sign * rw + gap * sq
            squares = rr + 2.0 * sign * gap * rw + gap * gap * sq
            mean = total / size
            spread = squares - 2.0 * mean * cross + mean * mean * sq  # sum of (d - mean * w)^2
            hits += np.count_nonzero(total * total > critical * critical * (spread + extra), axis=0)
        return hits / (2.0 * size.size)

    return power


def detectable_differences(
    diffs: np.ndarray,
    weights: np.ndarray,
    critical: float | np.ndarray,
    power: float = 0.8,
    resamples: Resamples | None = None,
    seed: int = 0,
    seed_var: np.ndarray | None = None,
) -> list[float | None]:
    """Per row of ``diffs`` (comparisons x subjects: per-subject totals of per-image differences),
    the smallest true image-weighted gap whose studentised difference exceeds the row's ``critical``
    (one for all rows or one per row; the board's: :func:`simultaneous_criticals`) with probability
    ``power``; ``weights`` are the subjects' image counts; ``seed_var`` per row the training seeds'
    share of its studentising variance (``Pairs.seed_var``; held fixed at its observed value).

    None with fewer than MIN_SUBJECTS subjects, an infinite critical value, or when no gap up to 1 (the
    whole Dice range) reaches that power; 0 when a row's differences have no spread at all. The gap
    is found by bisection (all rows at once) on a power curve that is monotone in practice.
    """
    d = _matrix(np.asarray(diffs, dtype=np.float64).reshape(-1, np.shape(diffs)[-1]))
    w = _weights(weights, d.shape[1])
    if d.shape[1] < MIN_SUBJECTS:
        return [None] * d.shape[0]
    # sqrt(n / (n - 1)): resampling n subjects understates their spread by (n - 1) / n
    resid = (d - np.outer(d.sum(axis=1) / w.sum(), w)) * np.sqrt(w.size / (w.size - 1))
    extra = np.zeros(d.shape[0]) if seed_var is None else np.asarray(seed_var, dtype=np.float64).reshape(-1)
    flat = (np.sqrt((resid**2).sum(axis=1)) <= 1e-12 * (1.0 + np.abs(d).sum(axis=1))) & (extra <= 0)
    out: list[float | None] = [0.0 if f else None for f in flat]
    bar = np.broadcast_to(np.asarray(critical, dtype=np.float64), (d.shape[0],))
    rows = np.flatnonzero(~flat & np.isfinite(bar))
    if rows.size == 0:
        return out
    boot = Resamples.draw(w.size, seed=seed) if resamples is None else resamples
    curve = _power_curve(resid[rows], w, bar[rows], boot, extra[rows], seed)
    reach = curve(np.ones(rows.size)) >= power
    low, high = np.zeros(rows.size), np.ones(rows.size)
    for _ in range(24):  # 2^-24: far below any printed decimal
        mid = (low + high) / 2.0
        short = curve(mid) < power
        low, high = np.where(short, mid, low), np.where(short, high, mid)
    for row, gap, ok in zip(rows, high, reach):
        out[row] = float(gap) if ok else None
    return out

"""Uncertainty for the leaderboard: subject-level intervals and paired tests (pure numpy).

Frames of one patient are strongly correlated, so the unit of independence is the SUBJECT, not
the image; per-image intervals and tests are far too optimistic (see
tests/benchmark/test_stats_simulation.py, which measures it).

* ``subject_totals`` / ``subject_means``: per-subject total / mean of per-image values. The board
  ranks by the image-weighted mean, sum of totals / sum of counts; tests of it use the totals
  (``benchmark.scoring.ranking`` and ``sign_flip_pvalue`` below), never the means, which weight
  every subject equally.
* ``subject_bootstrap_ci``: cluster (subject) bootstrap of the image mean (Davison & Hinkley,
  "Bootstrap Methods and their Application", 1997, sec. 3.8): resample subjects with replacement
  and recompute the mean over all images of the drawn subjects. The percentile interval is
  "expanded" (Hesterberg, "What Teachers Should Know About the Bootstrap", Am. Stat. 2015,
  sec. 6.4) so that with few subjects it is as wide as a t interval, not a z interval.
* ``sign_flip_pvalue``: paired permutation test of zero sum (Fisher, 1935; Good, "Permutation
  Tests", 2000): under H0 each subject's sign is exchangeable. Given per-subject TOTALS of the
  per-image differences it tests the image-weighted mean difference, the ranked quantity (the
  weights stay fixed under the flips); given per-subject means it would test the subject-weighted
  one. Exact over all 2^n sign patterns for n <= ``exact_max``, else Monte Carlo with the +1
  correction (Phipson & Smyth, Stat. Appl. Genet. Mol. Biol., 2010) so p is never 0.
* ``holm``: Holm's step-down adjustment (Scand. J. Statist., 1979). The leaderboard no longer uses
  it: Holm against the OBSERVED top model ignores that the top was picked on the same data (with 5
  equal models it excluded one 8.5% of the time in tests/benchmark/test_stats_simulation.py, 16.2%
  on per-subject means, instead of 5%); ``ranking.best_set`` replaces it.

Older helpers (``bootstrap_ci``, ``holm``) remain; the simulation tests use them to show why they
must not be used for the board (the per-image paired bootstrap test lives in tests/benchmark/oracles.py).
Every resampling is seeded, so the leaderboard is reproducible byte for byte.
"""

from __future__ import annotations

import numpy as np
from scipy import stats as sps

from benchmark.scoring.seed_draws import seed_mix

_BLOCK_CELLS = 4_000_000  # resample indices generated per block: ~32 MB of int64


def _vector(values: np.ndarray, name: str = "values") -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _bootstrap_means(values: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Means of ``n_boot`` resamples with replacement, generated in memory-bounded blocks."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    n = values.size
    block = max(1, _BLOCK_CELLS // n)
    means = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, block):
        stop = min(start + block, n_boot)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = values[idx].mean(axis=1)
    return means


def bootstrap_ci(
    values: np.ndarray, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, lo, hi): the sample mean and its percentile-bootstrap (1 - alpha) interval."""
    x = _vector(values)
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    means = _bootstrap_means(x, n_boot, seed)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(x.mean()), float(lo), float(hi)


def _groups(values: np.ndarray, subjects: np.ndarray | list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(subject_ids, per-subject sums, per-subject counts) after checking alignment."""
    x = _vector(values)
    subj = np.asarray(subjects).reshape(-1)
    if subj.size != x.size:
        raise ValueError(f"subjects has {subj.size} entries but values has {x.size}")
    ids, inverse, counts = np.unique(subj, return_inverse=True, return_counts=True)
    return ids, np.bincount(inverse.reshape(-1), weights=x, minlength=ids.size), counts


def subject_totals(
    values: np.ndarray, subjects: np.ndarray | list
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(subject_ids sorted, sum of ``values`` per subject, image count per subject)."""
    return _groups(values, subjects)


def subject_means(
    values: np.ndarray, subjects: np.ndarray | list
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(subject_ids sorted, mean of ``values`` per subject, image count per subject)."""
    ids, sums, counts = _groups(values, subjects)
    return ids, sums / counts, counts


def _expanded_alpha(alpha: float, n_subjects: int) -> float:
    """Tail level whose normal quantile equals sqrt(n / (n - 1)) t_{1 - alpha/2, n - 1} (Hesterberg 2015)."""
    t = float(sps.t.ppf(1 - alpha / 2, n_subjects - 1))
    return float(2 * sps.norm.sf(np.sqrt(n_subjects / (n_subjects - 1)) * t))


def _cluster_boot_means(
    sums: np.ndarray, counts: np.ndarray, n_boot: int, seed: int, seed_sums: np.ndarray | None = None
) -> np.ndarray:
    """Image means of ``n_boot`` subject resamples: (draw counts @ sums) / (draw counts @ counts).

    Draw counts per resample come from one bincount over row-offset indices (multinomial, but
    vectorised), in memory-bounded blocks. With ``seed_sums`` (seeds x subjects), the seeds are drawn
    too, per resample, their deviations from the seed mean inflated by sqrt(S / (S - 1))
    (``benchmark.scoring.seed_draws``): the interval then covers training randomness as well.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng, n = np.random.default_rng(seed), sums.size
    mixed = None if seed_sums is None else seed_mix(seed_sums, n_boot, [seed, 1])
    block = max(1, _BLOCK_CELLS // n)
    means = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, block):
        rows = min(block, n_boot - start)
        idx = rng.integers(0, n, size=(rows, n)) + (np.arange(rows) * n)[:, None]
        draws = np.bincount(idx.reshape(-1), minlength=rows * n).reshape(rows, n).astype(np.float64)
        top = (
            draws @ sums if mixed is None else ((draws @ mixed[0].T) * mixed[1][start : start + rows]).sum(1)
        )
        means[start : start + rows] = top / (draws @ counts)
    return means


def subject_bootstrap_ci(
    values: np.ndarray,
    subjects: np.ndarray | list,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
    seeds: np.ndarray | None = None,
) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean over all images and its subject-bootstrap (1 - alpha) interval.

    ``seeds`` (S x images, S >= 2): the per-seed values whose mean ``values`` is; the seeds are then
    resampled with the subjects. With one subject there is no between-subject variation to
    resample: (mean, nan, nan).
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    _, sums, counts = _groups(values, subjects)
    mean = float(sums.sum() / counts.sum())
    if sums.size < 2:
        return mean, float("nan"), float("nan")
    per_seed = None
    if seeds is not None and np.shape(seeds)[0] >= 2:
        per_seed = np.stack([_groups(row, subjects)[1] for row in np.asarray(seeds, dtype=np.float64)])
    means = _cluster_boot_means(sums, counts.astype(np.float64), n_boot, seed, per_seed)
    tail = _expanded_alpha(alpha, sums.size) / 2
    lo, hi = np.quantile(means, [tail, 1 - tail])
    return mean, float(lo), float(hi)


def _half_sums(d: np.ndarray) -> np.ndarray:
    """All 2^k signed sums of ``d`` (k = d.size): bit j of pattern i set means d[j] is negated."""
    bits = (np.arange(2**d.size)[:, None] >> np.arange(d.size)[None]) & 1
    return (1 - 2 * bits) @ d


def _exact_extreme_fraction(d: np.ndarray, threshold: float) -> float:
    """Fraction of all 2^n sign patterns s with |s . d| >= threshold (> 0), meet-in-the-middle.

    The 2^n sums are a + b over the two halves' 2^(n/2) sums; for each a, sorted b gives the
    count of b >= threshold - a and b <= -threshold - a (disjoint as threshold > 0).
    """
    half = d.size // 2
    a, b = _half_sums(d[:half]), np.sort(_half_sums(d[half:]))
    upper = b.size - np.searchsorted(b, threshold - a, side="left")
    lower = np.searchsorted(b, -threshold - a, side="right")
    return float((upper.sum() + lower.sum()) / (a.size * b.size))


def sign_flip_pvalue(
    diffs: np.ndarray, n_resamples: int = 20000, seed: int = 0, exact_max: int = 20
) -> float:
    """Two-sided p of H0 "the per-subject differences (totals or means) are symmetric about 0".

    Statistic: |sum of diffs| (equivalent to |mean|). Exact over all 2^n sign patterns when
    n <= ``exact_max``; otherwise ``n_resamples`` seeded random patterns and
    p = (1 + #{|stat*| >= |stat|}) / (1 + n_resamples). All-zero differences give 1.
    """
    d = _vector(diffs, "diffs")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    # Tolerance: a pattern equal to the observed one in exact arithmetic may differ by rounding.
    threshold = abs(float(d.sum())) - 1e-9 * (1.0 + float(np.abs(d).sum()))
    if threshold <= 0:
        return 1.0
    if d.size <= exact_max:
        return _exact_extreme_fraction(d, threshold)
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK_CELLS // d.size)
    extreme = 0
    for start in range(0, n_resamples, block):
        rows = min(block, n_resamples - start)
        signs = 1.0 - 2.0 * rng.integers(0, 2, size=(rows, d.size))
        extreme += int(np.count_nonzero(np.abs(signs @ d) >= threshold))
    return (1 + extreme) / (1 + n_resamples)


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm step-down adjusted p-values in the input order; None entries stay None and do not count.

    Sorted ascending p_(1) <= ... <= p_(m): adjusted p_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)).
    """
    present = [(float(p), i) for i, p in enumerate(pvalues) if p is not None]
    for p, _ in present:
        if not 0.0 <= p <= 1.0 or np.isnan(p):
            raise ValueError(f"p-values must be in [0, 1], got {p}")
    out: list[float | None] = [None] * len(pvalues)
    running, m = 0.0, len(present)
    for rank, (p, i) in enumerate(sorted(present)):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out

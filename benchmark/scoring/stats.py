"""Uncertainty for the leaderboard: bootstrap and t confidence intervals, paired tests (pure numpy).

* ``bootstrap_ci``: percentile bootstrap of the mean over per-image values (Efron & Tibshirani,
  "An Introduction to the Bootstrap", 1993, ch. 13), for a single run.
* ``mean_ci_t``: Student-t interval over independent runs (folds x seeds).
* ``paired_bootstrap_pvalue``: two-sided test of zero mean paired difference by resampling the
  mean-centred differences (Efron & Tibshirani 1993, sec. 16.4), with the +1 correction of
  Davison & Hinkley, "Bootstrap Methods and their Application", 1997, so p is never 0.
* ``wilcoxon_pvalue``: Wilcoxon signed-rank test (Wilcoxon, Biometrics Bulletin 1945) via scipy.

Every resampling is seeded, so the leaderboard is reproducible byte for byte.
"""

from __future__ import annotations

import numpy as np
from scipy import stats as sps

_BLOCK_CELLS = 4_000_000  # resample indices generated per block: ~32 MB of int64


def _vector(values: np.ndarray, name: str = "values") -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _paired(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a - b after checking both are equal-length finite vectors."""
    x, y = _vector(a, "a"), _vector(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"paired samples differ in length: {x.size} vs {y.size}")
    return x - y


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


def mean_ci_t(values: np.ndarray, alpha: float = 0.05) -> tuple[float, float, float]:
    """(mean, lo, hi) with mean +- t_{1-alpha/2, n-1} s / sqrt(n); (mean, nan, nan) when n = 1."""
    x = _vector(values)
    mean = float(x.mean())
    if x.size == 1:
        return mean, float("nan"), float("nan")
    half = float(sps.t.ppf(1 - alpha / 2, x.size - 1)) * float(x.std(ddof=1)) / np.sqrt(x.size)
    return mean, mean - half, mean + half


def paired_bootstrap_pvalue(a: np.ndarray, b: np.ndarray, n_boot: int = 10000, seed: int = 0) -> float:
    """Two-sided p-value of H0 "mean(a - b) = 0" on per-image paired values.

    The differences are centred (H0 imposed) and resampled; p = (1 + #{|mean*| >= |observed|}) /
    (1 + n_boot). Identical vectors give exactly 1.
    """
    d = _paired(a, b)
    observed = abs(float(d.mean()))
    null = np.abs(_bootstrap_means(d - d.mean(), n_boot, seed))
    # Tolerance: centred resample means of an all-equal vector are ~1e-17, not exactly 0.
    extreme = int(np.count_nonzero(null >= observed - 1e-12))
    return (1 + extreme) / (1 + n_boot)


def wilcoxon_pvalue(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value (zero differences dropped); 1.0 when all are zero."""
    d = _paired(a, b)
    if not np.any(d != 0):
        return 1.0
    return float(sps.wilcoxon(d).pvalue)

"""Training randomness in the board's tests: each model's seeds resampled beside the subjects (pure numpy).

A model's score on a subject is the mean over its S training seeds (each seed: one network per outer
fold). Resampling subjects alone treats those networks as fixed, so two architectures with the same
expected score were called different in 31% of simulated boards at a nominal 5% (47 subjects, 5
folds, 3 seeds, a per-run offset of sd 0.04: seed SD about 0.01, as the README's real seeds;
tests/benchmark/test_seed_draws.py). Here, inside every subject resample, each model's seeds are
drawn too, whole (all outer folds of a seed together: they share initialisation and augmentation
stream), independently per model, and

* the resampled per-seed totals are the seed mean plus sqrt(S / (S - 1)) times each seed's deviation
  from it, so the seed draw's variance is the unbiased between-seed one, not (S - 1) / S of it;
* the variance of a model's seed-mean total, var_s(total of seed s) / S (ddof 1), joins the
  studentising variance of every pair it is in, on the data and on each resample (a bootstrap-t
  with both components in the denominator held its level, 4.8% with 3 seeds, where subject-only
  studentising with seeds drawn in the numerator called equal models different in 7-12%).

Limits, measured: with 2 seeds the level is about 7% (the seed variance has one degree of freedom,
and half of a model's draws repeat one seed); and seed noise that differs image by image (no shift
of a whole run) is counted twice, once in the seed-mean subject totals and again here, so the test
is then conservative (2-3% at a nominal 5%, less power). A model with one seed contributes no
training variance (nothing to estimate it from); the board says so. Everything is seeded: one
board, one answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def seed_mix(seed_sums: np.ndarray, n_boot: int, key: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(inflated per-seed sums (S, n), seed weights per resample (n_boot, S), each row S draws / S):
    the resampled seed-mean sums are weights @ inflated. ``key`` seeds the draw."""
    r = np.asarray(seed_sums, dtype=np.float64)
    s = r.shape[0]
    mean = r.mean(axis=0)
    weights = np.random.default_rng(key).multinomial(s, np.full(s, 1.0 / s), size=n_boot) / s
    return mean + np.sqrt(s / (s - 1)) * (r - mean), weights


def seed_variance(totals: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(B,) the seed mean's variance in each resample: the variance (ddof 1) over its drawn seeds
    (``weights[b, s]`` x S copies of seed s) of the per-seed totals ``totals`` (B, S), over S."""
    mean = (weights * totals).sum(axis=1)
    return (weights * (totals - mean[:, None]) ** 2).sum(axis=1) / (weights.shape[1] - 1)


@dataclass(frozen=True)
class SeedDraws:
    """Per model: its resampled seed-mean per-subject totals (B, n), or None with one seed (fixed),
    and the variance of its seed-mean total on the data (K,) and on each resample (B, K)."""

    mixed: list[np.ndarray | None]
    observed: np.ndarray
    resampled: np.ndarray

    @classmethod
    def draw(
        cls, per_seed: list[np.ndarray], counts: np.ndarray, seed: int = 0, keys: list[int] | None = None
    ) -> SeedDraws:
        """``per_seed[m]``: model m's per-seed per-subject totals (S_m, n); ``counts``: the subject
        resamples (B, n), how often each subject is drawn; ``keys[m]``: model m's own draw stream
        (the board: a hash of its name, so adding a model leaves the others' draws; default m)."""
        b, k = counts.shape[0], len(per_seed)
        mixed: list[np.ndarray | None] = []
        observed, resampled = np.zeros(k), np.zeros((b, k))
        for m, runs in enumerate(per_seed):
            r = np.asarray(runs, dtype=np.float64)
            if r.shape[0] < 2:
                mixed.append(None)
                continue
            observed[m] = r.sum(axis=1).var(ddof=1) / r.shape[0]
            key = m if keys is None else keys[m]
            inflated, weights = seed_mix(r, b, [seed, 2, key])  # a stream per model: drawn independently
            mixed.append(weights @ inflated)
            resampled[:, m] = seed_variance(counts @ inflated.T, weights)
        return cls(mixed, observed, resampled)

    @property
    def any(self) -> bool:
        return any(m is not None for m in self.mixed)

    def totals_of(self, m: int, totals: np.ndarray) -> np.ndarray:
        """Model m's per-subject totals: (B, n) resampled over its seeds, or its fixed (n,) ones."""
        mixed = self.mixed[m]
        return totals[m] if mixed is None else mixed

    def pair_moments(
        self, counts: np.ndarray, totals: np.ndarray, w: np.ndarray, j: int, k: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sums, squares, cross) over each resample's subjects of d* = mixed_j - mixed_k: (B,) each,
        sum c d*, sum c d*^2 and sum c d* w."""
        d = np.broadcast_to(self.totals_of(j, totals) - self.totals_of(k, totals), counts.shape)
        cd = counts * d
        return cd.sum(axis=1), (cd * d).sum(axis=1), cd @ w

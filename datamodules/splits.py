"""Subject-grouped cross-validation and hold-out splits (pure functions).

Frames of one patient are near-duplicates, so a random frame-level split leaks anatomy from
training into validation and inflates scores; every split here keeps a subject on one side.
Folds are balanced by frame count with the greedy longest-processing-time rule (Graham, 1969):
subjects, shuffled by the seed and then ordered largest first, each go to the currently smallest
fold. This bounds the gap between the largest and smallest fold by the largest subject's size.
"""

from __future__ import annotations

import numpy as np


def _groups(subjects: np.ndarray | list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique subjects, per-sample group index, and samples per subject."""
    arr = np.asarray(subjects)
    if arr.ndim != 1:
        raise ValueError(f"subjects must be a 1-D sequence, got shape {arr.shape}")
    unique, inverse, counts = np.unique(arr, return_inverse=True, return_counts=True)
    return unique, inverse.reshape(-1), counts


def _seeded_order(counts: np.ndarray, seed: int) -> np.ndarray:
    """Subjects shuffled by ``seed``, then stably sorted by size (largest first)."""
    shuffled = np.random.default_rng(seed).permutation(counts.size)
    return shuffled[np.argsort(-counts[shuffled], kind="stable")]


def kfold_by_subject(subjects: np.ndarray | list, n_folds: int = 5, seed: int = 0) -> np.ndarray:
    """Fold id (0..n_folds-1) for each sample; no subject spans two folds."""
    unique, inverse, counts = _groups(subjects)
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    if n_folds > unique.size:
        raise ValueError(f"n_folds={n_folds} is more than the {unique.size} subjects; every fold needs one")
    fold_of_group = np.empty(unique.size, dtype=np.int64)
    load = np.zeros(n_folds, dtype=np.int64)
    for g in _seeded_order(counts, seed):
        fold = int(np.argmin(load))  # ties go to the lowest fold id
        fold_of_group[g] = fold
        load[fold] += counts[g]
    return fold_of_group[inverse]


def fold_indices(
    subjects: np.ndarray | list, fold: int, n_folds: int = 5, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx) for one fold of :func:`kfold_by_subject`, both sorted."""
    if not 0 <= fold < n_folds:
        raise ValueError(f"fold must be in 0..{n_folds - 1}, got {fold}")
    folds = kfold_by_subject(subjects, n_folds, seed)
    return np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)


def holdout_by_subject(
    subjects: np.ndarray | list, fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx) with about ``fraction`` of the samples in validation, by subject.

    Subjects are taken in a seeded random order; the prefix whose sample count is closest to
    ``fraction * N`` becomes validation, keeping at least one subject on each side.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be strictly between 0 and 1, got {fraction}")
    unique, inverse, counts = _groups(subjects)
    if unique.size < 2:
        raise ValueError(f"a hold-out split needs at least 2 subjects, got {unique.size}")
    order = np.random.default_rng(seed).permutation(unique.size)
    cumulative = np.cumsum(counts[order])[:-1]  # prefixes of 1..n-1 subjects
    n_val_subjects = int(np.argmin(np.abs(cumulative - fraction * inverse.size))) + 1
    is_val = np.zeros(unique.size, dtype=bool)
    is_val[order[:n_val_subjects]] = True
    return np.flatnonzero(~is_val[inverse]), np.flatnonzero(is_val[inverse])

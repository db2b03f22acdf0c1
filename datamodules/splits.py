"""Subject-grouped cross-validation and hold-out splits (pure functions).

Frames of one patient are near-duplicates, so a random frame-level split leaks anatomy from
training into validation and inflates scores; every split here keeps a subject on one side.

Without per-sample ``positive`` flags, folds are balanced by frame count with the greedy
longest-processing-time rule (Graham, 1969): subjects, shuffled by the seed and then ordered
largest first, each go to the currently smallest fold. This bounds the gap between the largest
and smallest fold by the largest subject's size.

With ``positive`` (nerve present), the fold's empty fraction sets its floor score directly, so
folds are balanced in image count AND positive fraction together: the same seeded largest-first
order, each subject going to the fold that least increases
``sum_f (n_f - N/K)^2 + W * sum_f (p_f - r n_f)^2`` (n_f images, p_f positives in fold f, r the
overall positive fraction), then best-improvement subject moves and swaps until none lowers it.
"""

from __future__ import annotations

from typing import Protocol

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


_POSITIVE_WEIGHT = 4.0  # W: a fold's excess positives (in images) count twice its size excess
_MAX_IMPROVEMENTS = 10_000  # local-search steps; each strictly lowers the cost, so this never binds


def _positive_per_group(positive: np.ndarray | list, inverse: np.ndarray) -> np.ndarray:
    """Positives per subject from per-sample bool/0-1 flags aligned with ``subjects``."""
    flags = np.asarray(positive).reshape(-1)
    if flags.size != inverse.size:
        raise ValueError(f"positive has {flags.size} entries but subjects has {inverse.size}")
    values = flags.astype(np.float64)
    if not np.isin(values, (0.0, 1.0)).all():
        raise ValueError("positive must hold booleans or 0/1 flags, one per sample")
    return np.bincount(inverse, weights=values, minlength=int(inverse.max(initial=-1)) + 1)


def _greedy_balanced(counts: np.ndarray, excess: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Seeded largest-first greedy: each subject to the fold whose cost rises least.

    Adding (n, e) to fold f raises the cost by 2 n (n_f - T) + n^2 + W (2 e e_f + e^2); only
    ``n n_f + W e e_f`` depends on f, so that is what is minimised (ties: lowest fold id). The
    first ``n_folds`` subjects open one fold each, so no fold is left empty.
    """
    fold_of_group = np.empty(counts.size, dtype=np.int64)
    load, load_excess = np.zeros(n_folds), np.zeros(n_folds)
    for rank, g in enumerate(_seeded_order(counts, seed)):
        delta = counts[g] * load + _POSITIVE_WEIGHT * excess[g] * load_excess
        fold = rank if rank < n_folds else int(np.argmin(delta))
        fold_of_group[g] = fold
        load[fold] += counts[g]
        load_excess[fold] += excess[g]
    return fold_of_group


def _best_step(fold_of_group: np.ndarray, counts: np.ndarray, excess: np.ndarray, n_folds: int):
    """Most cost-lowering single move (subject, fold) or swap (subject, subject); None if none lowers it."""
    onehot = np.eye(n_folds)[fold_of_group]  # (G, K)
    # Fold totals by bincount (one sum in subject order), not a matrix product: BLAS kernels sum in
    # CPU-dependent orders, and the last bits of the excess totals decided some moves, so the same
    # split_seed gave other folds on another CPU (5 of 400 cases on the Kaggle subjects).
    load = np.bincount(fold_of_group, weights=counts, minlength=n_folds)
    load_excess = np.bincount(fold_of_group, weights=excess, minlength=n_folds)
    n_f, e_f = load[fold_of_group], load_excess[fold_of_group]  # own fold's totals per subject
    # Move g to fold k: own fold loses (n, e), fold k gains it.
    move = 2 * counts[:, None] * (
        load[None] - n_f[:, None] + counts[:, None]
    ) + _POSITIVE_WEIGHT * 2 * excess[:, None] * (load_excess[None] - e_f[:, None] + excess[:, None])
    sizes = np.bincount(fold_of_group, minlength=n_folds)
    move[(onehot > 0) | (sizes[fold_of_group] < 2)[:, None]] = np.inf  # no-op moves; never empty a fold
    # Swap a (fold fa) with b (fold fb): fold fa changes by (dn, de) = (n_b - n_a, e_b - e_a).
    dn, de = counts[None] - counts[:, None], excess[None] - excess[:, None]
    swap = 2 * dn * (n_f[:, None] - n_f[None] + dn) + _POSITIVE_WEIGHT * 2 * de * (
        e_f[:, None] - e_f[None] + de
    )
    swap[fold_of_group[:, None] == fold_of_group[None]] = np.inf
    scale = 1e-9 * (1.0 + counts.sum() ** 2)  # ignore float-noise "improvements"
    best_move = np.unravel_index(np.argmin(move), move.shape)
    best_swap = np.unravel_index(np.argmin(swap), swap.shape)
    if min(move[best_move], swap[best_swap]) >= -scale:
        return None
    return ("move", *best_move) if move[best_move] <= swap[best_swap] else ("swap", *best_swap)


def _stratified_folds(counts: np.ndarray, positives: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Fold per subject balancing image count and positive fraction (greedy, then local search)."""
    excess = positives - counts * (positives.sum() / counts.sum())  # positives above the overall rate
    counts = counts.astype(np.float64)
    fold_of_group = _greedy_balanced(counts, excess, n_folds, seed)
    for _ in range(_MAX_IMPROVEMENTS):
        step = _best_step(fold_of_group, counts, excess, n_folds)
        if step is None:
            break
        kind, a, b = step
        if kind == "move":
            fold_of_group[a] = b
        else:
            fold_of_group[a], fold_of_group[b] = fold_of_group[b], fold_of_group[a]
    return fold_of_group


def _count_folds(counts: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Fold per subject balancing image counts only (greedy largest-first, smallest fold)."""
    fold_of_group = np.empty(counts.size, dtype=np.int64)
    load = np.zeros(n_folds, dtype=np.int64)
    for g in _seeded_order(counts, seed):
        fold = int(np.argmin(load))  # ties go to the lowest fold id
        fold_of_group[g] = fold
        load[fold] += counts[g]
    return fold_of_group


def kfold_by_subject(
    subjects: np.ndarray | list, n_folds: int = 5, seed: int = 0, positive: np.ndarray | list | None = None
) -> np.ndarray:
    """Fold id (0..n_folds-1) for each sample; no subject spans two folds.

    ``positive`` (per-sample bool/0-1, e.g. "mask is non-empty") switches from count-only
    balancing to balancing counts and positive fraction together.
    """
    unique, inverse, counts = _groups(subjects)
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    if n_folds > unique.size:
        raise ValueError(f"n_folds={n_folds} is more than the {unique.size} subjects; every fold needs one")
    if positive is None:
        return _count_folds(counts, n_folds, seed)[inverse]
    positives = _positive_per_group(positive, inverse)
    return _stratified_folds(counts, positives, n_folds, seed)[inverse]


def fold_indices(
    subjects: np.ndarray | list,
    fold: int,
    n_folds: int = 5,
    seed: int = 0,
    positive: np.ndarray | list | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx) for one fold of :func:`kfold_by_subject`, both sorted."""
    _, rest, outer = _cut_fold(subjects, positive, fold, n_folds, seed)
    return rest, outer


def _cut_fold(
    subjects: np.ndarray | list, positive: np.ndarray | list | None, fold: int, n_folds: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fold id per sample, the other folds' indices, this fold's indices); ValueError on a bad fold."""
    if not 0 <= fold < n_folds:
        raise ValueError(f"fold must be in 0..{n_folds - 1}, got {fold}")
    folds = kfold_by_subject(subjects, n_folds, seed, positive)
    return folds, np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)


_INNER_CANDIDATES = 256  # seeded random subject sets scored for the inner split


def inner_split(
    subjects: np.ndarray | list, positive: np.ndarray | list | None, fraction: float = 0.15, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(fit_pos, inner_pos): sorted positions into ``subjects``, split by subject.

    The inner (selection) set has ``round(fraction * n_subjects)`` subjects, at least 1 and at
    most n_subjects - 1. Among seeded random candidate sets of that size, the one whose pooled
    positive fraction is closest to the overall one is chosen (first such on ties), so the
    selection set's empty-image floor resembles the data it stands in for.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"inner fraction must be strictly between 0 and 1, got {fraction}")
    unique, inverse, counts = _groups(subjects)
    if unique.size < 2:
        raise ValueError(
            f"an inner split needs at least 2 subjects to keep one for fitting, got {unique.size}"
        )
    n_inner = min(unique.size - 1, max(1, int(np.floor(fraction * unique.size + 0.5))))
    rng = np.random.default_rng(seed)
    chosen = np.argsort(rng.random((_INNER_CANDIDATES, unique.size)), axis=1)[:, :n_inner]
    member = np.zeros((_INNER_CANDIDATES, unique.size))
    np.put_along_axis(member, chosen, 1.0, axis=1)
    best = 0
    if positive is not None:
        positives = _positive_per_group(positive, inverse)
        cand_fraction = (member @ positives) / (member @ counts)
        best = int(np.argmin(np.abs(cand_fraction - positives.sum() / counts.sum())))
    is_inner = member[best].astype(bool)
    return np.flatnonzero(~is_inner[inverse]), np.flatnonzero(is_inner[inverse])


def fold_table(
    subjects: np.ndarray | list, positive: np.ndarray | list | None, folds: np.ndarray | list
) -> list[dict]:
    """One row per fold id: {"fold", "subjects" (sorted ids), "n_images", "positive_fraction"}.

    ``positive_fraction`` is None when ``positive`` is None. Values are plain Python types (JSON-ready).
    """
    subj, fold_ids = np.asarray(subjects), np.asarray(folds).reshape(-1)
    if subj.shape != fold_ids.shape:
        raise ValueError(f"folds has {fold_ids.size} entries but subjects has {subj.size}")
    flags = None if positive is None else np.asarray(positive).reshape(-1).astype(np.float64)
    if flags is not None and flags.size != subj.size:
        raise ValueError(f"positive has {flags.size} entries but subjects has {subj.size}")
    rows = []
    for fold in np.unique(fold_ids).tolist():
        in_fold = fold_ids == fold
        frac = None if flags is None else float(flags[in_fold].mean())
        rows.append(
            {
                "fold": int(fold),
                "subjects": np.unique(subj[in_fold]).tolist(),
                "n_images": int(in_fold.sum()),
                "positive_fraction": frac,
            }
        )
    return rows


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


def nested_split(
    subjects: np.ndarray,
    positive: np.ndarray,
    fold: int,
    n_folds: int,
    holdout_fraction: float | None,
    inner_fraction: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(fit, inner, outer, outer fold id per sample): a run's whole split, each index array sorted.

    The outer fold is ``fold`` of :func:`kfold_by_subject` (or the hold-out set, fold 0, when
    ``holdout_fraction`` is given); the rest is cut by :func:`inner_split` into the part that trains
    and the inner set that selects. ValueError when the data cannot be split so.
    """
    subjects, positive = np.asarray(subjects), np.asarray(positive)
    if holdout_fraction is not None:
        rest, outer = holdout_by_subject(subjects, holdout_fraction, seed)
        outer_folds = np.ones(len(subjects), np.int64)
        outer_folds[outer] = 0
    else:
        outer_folds, rest, outer = _cut_fold(subjects, positive, fold, n_folds, seed)
    fit_pos, inner_pos = inner_split(subjects[rest], positive[rest], inner_fraction, seed)
    return np.sort(rest[fit_pos]), np.sort(rest[inner_pos]), np.sort(outer), outer_folds


class SplitFields(Protocol):
    """The fields of a run's config that decide its split (DataConfig and TrainConfig have them)."""

    @property
    def fold(self) -> int: ...
    @property
    def n_folds(self) -> int: ...
    @property
    def holdout_fraction(self) -> float | None: ...
    @property
    def inner_fraction(self) -> float: ...
    @property
    def split_seed(self) -> int: ...


def split_for(config: SplitFields, subjects: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, ...]:
    """:func:`nested_split` with a run's split fields: (fit, inner, outer, outer fold ids)."""
    return nested_split(
        subjects,
        positive,
        config.fold,
        config.n_folds,
        config.holdout_fraction,
        config.inner_fraction,
        config.split_seed,
    )

"""Subject-grouped splits: no subject leaks, determinism, coverage, balance, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from datamodules.splits import fold_indices, holdout_by_subject, kfold_by_subject

subject_lists = st.lists(st.integers(0, 30), min_size=2, max_size=120)


def test_hand_computed_folds():
    # sizes 3, 2, 1 (no ties, so the seed cannot matter): 1 -> fold 0, 2 -> fold 1, then 3 joins
    # the smaller fold 1 (load 2 < 3).
    subjects = [1, 1, 1, 2, 2, 3]
    for seed in range(5):
        assert kfold_by_subject(subjects, n_folds=2, seed=seed).tolist() == [0, 0, 0, 1, 1, 1]
    train, val = fold_indices(subjects, fold=1, n_folds=2)
    assert train.tolist() == [0, 1, 2] and val.tolist() == [3, 4, 5]


def test_unordered_subject_labels():
    folds = kfold_by_subject(np.array([7, 3, 7, 3, 9, 7]), n_folds=2)
    assert folds[0] == folds[2] == folds[5] and folds[1] == folds[3]
    assert folds[0] == 0 and set(folds[[1, 4]].tolist()) == {1}  # 7 (3 frames) first; 3 and 9 share


@given(subject_lists, st.integers(2, 6), st.integers(0, 2**31))
@settings(max_examples=150, deadline=None)
def test_kfold_properties(subjects, n_folds, seed):
    subjects = np.array(subjects)
    unique, counts = np.unique(subjects, return_counts=True)
    assume(n_folds <= unique.size)
    folds = kfold_by_subject(subjects, n_folds, seed)
    assert folds.shape == subjects.shape and folds.dtype.kind == "i"
    for s in unique:  # no subject in two folds
        assert np.unique(folds[subjects == s]).size == 1
    sizes = np.bincount(folds, minlength=n_folds)
    assert sizes.size == n_folds and (sizes > 0).all()  # every fold used, ids in range
    assert sizes.max() - sizes.min() <= counts.max()  # greedy largest-first bound
    np.testing.assert_array_equal(folds, kfold_by_subject(subjects.tolist(), n_folds, seed))  # deterministic


@given(subject_lists, st.integers(2, 5), st.integers(0, 1000))
@settings(max_examples=100, deadline=None)
def test_fold_indices_partition(subjects, n_folds, seed):
    subjects = np.array(subjects)
    assume(n_folds <= np.unique(subjects).size)
    seen = []
    for fold in range(n_folds):
        train, val = fold_indices(subjects, fold, n_folds, seed)
        assert np.intersect1d(subjects[train], subjects[val]).size == 0  # no leak
        assert np.union1d(train, val).tolist() == list(range(subjects.size))
        assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
        seen.append(val)
    assert np.sort(np.concatenate(seen)).tolist() == list(range(subjects.size))  # each sample validated once


@given(subject_lists, st.floats(0.05, 0.95), st.integers(0, 1000))
@settings(max_examples=150, deadline=None)
def test_holdout_properties(subjects, fraction, seed):
    subjects = np.array(subjects)
    unique, counts = np.unique(subjects, return_counts=True)
    assume(unique.size >= 2)
    train, val = holdout_by_subject(subjects, fraction, seed)
    assert train.size and val.size
    assert np.intersect1d(subjects[train], subjects[val]).size == 0
    assert np.union1d(train, val).tolist() == list(range(subjects.size))
    assert abs(val.size - fraction * subjects.size) <= counts.max()
    a, b = holdout_by_subject(subjects, fraction, seed)
    assert a.tolist() == train.tolist() and b.tolist() == val.tolist()


def test_seed_changes_the_split():
    subjects = np.repeat(np.arange(20), 5)  # equal sizes: only the shuffle decides
    folds = {tuple(kfold_by_subject(subjects, 5, seed)) for seed in range(4)}
    assert len(folds) > 1
    vals = {tuple(holdout_by_subject(subjects, 0.2, seed)[1]) for seed in range(4)}
    assert len(vals) > 1


def test_holdout_equal_subjects_exact_fraction():
    subjects = np.repeat(np.arange(10), 4)
    train, val = holdout_by_subject(subjects, 0.3, seed=3)
    assert val.size == 12 and train.size == 28 and np.unique(subjects[val]).size == 3


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: kfold_by_subject([1, 1, 2, 2], n_folds=3), "n_folds=3 is more than the 2 subjects"),
        (lambda: kfold_by_subject([1, 2, 3], n_folds=1), "n_folds must be >= 2"),
        (lambda: kfold_by_subject(np.zeros((2, 2)), n_folds=2), "1-D"),
        (lambda: fold_indices([1, 2, 3], fold=3, n_folds=3), r"fold must be in 0..2"),
        (lambda: holdout_by_subject([1, 2], 0.0), "strictly between 0 and 1"),
        (lambda: holdout_by_subject([1, 2], 1.0), "strictly between 0 and 1"),
        (lambda: holdout_by_subject([4, 4, 4], 0.5), "at least 2 subjects"),
    ],
)
def test_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()

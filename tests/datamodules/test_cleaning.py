"""Contradictory near-duplicate detection on constructed frames (and the real sample's known pair)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from datamodules.cleaning import block_histograms, find_contradictions, pair_distances


def _frames(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 42, 58), dtype=np.uint8)


def test_block_histograms_hand_computed() -> None:
    img = np.zeros((1, 4, 4), np.uint8)
    img[0, :, 2:] = 255  # left half black, right half white
    feats = block_histograms(img, grid=(1, 2), bins=2)
    np.testing.assert_allclose(feats, [[1, 0, 0, 1]])  # block 0: all in bin 0; block 1: all in bin 1
    inverted = block_histograms(255 - img, grid=(1, 2), bins=2)
    np.testing.assert_allclose(inverted, [[0, 1, 1, 0]])
    # each block's histograms are disjoint: total variation 1 per block, mean 1
    assert pair_distances(np.vstack([feats, inverted]), blocks=2)[0, 1] == pytest.approx(1.0)


def test_distance_is_zero_for_copies_and_symmetric() -> None:
    imgs = _frames(3)
    imgs[1] = imgs[0]
    d = pair_distances(block_histograms(imgs), blocks=48)
    assert d[0, 1] == 0 and d[0, 0] == 0
    np.testing.assert_array_equal(d, d.T)
    assert d[0, 2] > 0.1


def test_finds_the_empty_member_of_a_near_duplicate_pair() -> None:
    imgs = _frames(6)
    imgs[3] = imgs[1]
    imgs[3, ::6, ::6] = 0  # near-copy of frame 1 (a few pixels differ)
    masks = np.zeros((6, 42, 58), np.uint8)
    masks[1, 10:20, 10:20] = 1  # frame 1 labelled, its near-copy 3 left empty
    masks[4, 5:9, 5:9] = 1
    subjects = np.array([1, 1, 1, 1, 2, 2])
    found = find_contradictions(imgs, masks, subjects)
    assert [(k, d) for k, d, _ in found] == [(1, 3)]
    assert 0 <= found[0][2] < 0.04


def test_ignores_agreeing_pairs_other_subjects_and_far_pairs() -> None:
    imgs = _frames(6)
    imgs[1] = imgs[0]  # duplicates, both empty: consistent labels
    imgs[3] = imgs[2]  # duplicates across subjects: never compared
    imgs[5] = imgs[4]  # duplicates, both labelled
    masks = np.zeros((6, 42, 58), np.uint8)
    masks[2, :3, :3] = masks[4, :3, :3] = masks[5, :3, :3] = 1
    subjects = np.array([1, 1, 1, 2, 3, 3])
    assert find_contradictions(imgs, masks, subjects) == []
    masks[0, :3, :3] = 1  # now frame 0 (labelled) vs its copy 1 (empty) contradict; 2 is far from both
    assert find_contradictions(imgs, masks, subjects) == [(0, 1, 0.0)]


def test_closest_labelled_frame_is_reported_once() -> None:
    imgs = np.repeat(_frames(1), 3, axis=0)
    imgs[1, ::3, ::3] = 0  # frame 1 differs more from frame 0 than frame 2 does
    imgs[2, ::9, ::9] = 0
    masks = np.zeros((3, 42, 58), np.uint8)
    masks[1, :2, :2] = masks[2, :2, :2] = 1
    found = find_contradictions(imgs, masks, np.array([7, 7, 7]), threshold=0.5)
    assert [(k, d) for k, d, _ in found] == [(2, 0)]


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="power of two"):
        find_contradictions(_frames(2), np.zeros((2, 42, 58)), np.array([1, 1]), bins=10)
    with pytest.raises(ValueError, match="differ in length"):
        find_contradictions(_frames(2), np.zeros((3, 42, 58)), np.array([1, 1]))
    with pytest.raises(ValueError, match="uint8"):
        block_histograms(np.zeros((2, 4, 4), np.float32))


def test_real_sample_known_contradiction(uns_sample: Path) -> None:
    from datamodules.kaggle import load_train

    ts = load_train(uns_sample)
    found = find_contradictions(ts.images, ts.masks, ts.subjects)
    assert [(ts.stems[k], ts.stems[d]) for k, d, _ in found] == [("1_14", "1_9")]

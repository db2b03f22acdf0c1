"""Contradictory-label cleaning: near-duplicate frames of one subject whose masks disagree.

The Kaggle annotators labelled some near-identical frames of a sweep with a nerve and others
without, so a model is trained to give two answers for one picture. The common competition
practice (e.g. the top public kernels) is to find such pairs by image similarity and drop the
frame with the *empty* mask. Similarity here is a block-histogram distance: the frame is cut into
a ``grid`` of blocks, each block gets a normalised intensity histogram, and the distance of two
frames is the mean total-variation distance between corresponding block histograms (0 for equal
frames, 1 for disjoint intensities). Block histograms tolerate speckle and small probe shifts but
keep the spatial layout, unlike a global histogram (Swain & Ballard 1991, colour indexing).
"""

from __future__ import annotations

import numpy as np

DEFAULT_GRID = (6, 8)  # (rows, cols) of blocks: about 70x72 px on a 420x580 frame
DEFAULT_BINS = 16
DEFAULT_THRESHOLD = 0.04  # real contradictions sit near 0.01; distinct frames of a sweep at >= 0.1


def block_histograms(
    images: np.ndarray, grid: tuple[int, int] = DEFAULT_GRID, bins: int = DEFAULT_BINS
) -> np.ndarray:
    """(N, gy * gx * bins) float32: per-block intensity histograms, each summing to 1."""
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected (N, H, W) uint8 images, got {images.shape} {images.dtype}")
    n, h, w = images.shape
    gy, gx = grid
    block = (np.arange(h)[:, None] * gy // h) * gx + (np.arange(w)[None, :] * gx // w)
    code_base = (block * bins).ravel()
    shift = 8 - int(np.log2(bins))  # uint8 value -> bin by a bit shift (bins is a power of two)
    counts = np.bincount(block.ravel(), minlength=gy * gx).repeat(bins).astype(np.float32)
    out = np.empty((n, gy * gx * bins), np.float32)
    for i in range(n):
        codes = code_base + (images[i].ravel() >> shift)
        out[i] = np.bincount(codes, minlength=gy * gx * bins) / counts
    return out


def pair_distances(features: np.ndarray, blocks: int) -> np.ndarray:
    """(n, n) mean total-variation distance between the block histograms of every pair."""
    n = features.shape[0]
    dist = np.zeros((n, n), np.float32)
    for i in range(n - 1):  # a row at a time keeps memory at O(n * features)
        d = np.abs(features[i + 1 :] - features[i]).sum(axis=1) / (2.0 * blocks)
        dist[i, i + 1 :] = dist[i + 1 :, i] = d
    return dist


def find_contradictions(
    images: np.ndarray,
    masks: np.ndarray,
    subjects: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    grid: tuple[int, int] = DEFAULT_GRID,
    bins: int = DEFAULT_BINS,
) -> list[tuple[int, int, float]]:
    """Contradictory near-duplicates as (keep_idx, drop_idx, distance), sorted by drop_idx.

    Only frames of the same subject are compared. A pair is contradictory when its distance is
    below ``threshold`` and exactly one mask is empty; the empty one is dropped. A frame matched
    by several labelled frames is listed once, with its closest match.
    """
    if bins & (bins - 1) or not 1 < bins <= 256:
        raise ValueError(f"bins must be a power of two in 2..256, got {bins}")
    if not len(images) == len(masks) == len(subjects):
        raise ValueError(
            f"images, masks and subjects differ in length: {len(images)}, {len(masks)}, {len(subjects)}"
        )
    empty = ~np.asarray(masks).reshape(len(masks), -1).any(axis=1)
    subjects = np.asarray(subjects)
    best: dict[int, tuple[int, float]] = {}
    for subject in np.unique(subjects):
        idx = np.flatnonzero(subjects == subject)
        if not (empty[idx].any() and (~empty[idx]).any()):
            continue  # no possible contradiction in this subject
        dist = pair_distances(block_histograms(images[idx], grid, bins), grid[0] * grid[1])
        close = (dist < threshold) & empty[idx][:, None] & ~empty[idx][None, :]
        for a, b in zip(*np.nonzero(close)):  # a: empty (drop), b: labelled (keep)
            drop, keep, d = int(idx[a]), int(idx[b]), float(dist[a, b])
            if drop not in best or d < best[drop][1]:
                best[drop] = (keep, d)
    return [(keep, drop, d) for drop, (keep, d) in sorted(best.items())]

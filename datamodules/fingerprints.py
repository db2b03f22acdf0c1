"""Frame fingerprints: the same picture found again, re-encoded, in another subject or another copy.

A fingerprint is one bit per block of a fixed grid (21 x 29 blocks, 20 x 20 px on a 420 x 580
frame): whether the block's mean grey is above the frame's median block mean (an average hash,
Zauner 2010, "Implementation and benchmarking of perceptual image hash functions"). Block means
ignore speckle, blur and compression; comparing with the median ignores any monotone change of
brightness or contrast. Two frames are the same picture when at most ``NEAR_FRACTION`` of their
bits differ.

Measured on real frames (uns-positive: the 1,969 nerve-positive frames of 37 of the 47 subjects,
../shared/data; the full set is not here): a frame and its re-encoded copy (the Kaggle tif against
the 256-px JPEG restored to 580 x 420, or JPEG quality 20) differ in at most 8 of 609 bits; frames
of different patients in at least 108. The Kaggle data itself holds one such pair of "subjects":
12 frames of 17 match 9 of 18 within 5% (24 pairs, two of them pixel-identical), while no other pair
of subjects comes within 17% (among those frames).

Uses: subjects that share a frame are one unit of independence when splitting and resampling
(:func:`linked_units`), and ``evaluate`` finds a checkpoint's training frames in a re-encoded
copy of its data (:func:`near_pairs`). Every step is integer arithmetic or an exact comparison,
so a fingerprint is the same on every CPU.
"""

from __future__ import annotations

import numpy as np

GRID = (21, 29)  # (rows, cols) of blocks: 20 x 20 px on a 420 x 580 Kaggle frame
NEAR_FRACTION = 0.05  # re-encoded copies <= 1.3% of bits apart, other patients' frames >= 17%
MIN_SET_FRACTION = 0.125  # fewer set bits: a flat frame (most blocks at the median), matches anything
MAX_TIED_FRACTION = 0.25  # this share of blocks equal to the median: a frame with a flat region, blanked
VERSION = 1  # bump when a fingerprint changes: cached fingerprints of another version are not read
_CHUNK = 256  # frames per step: bounds the temporary row sums at about 12 MB on Kaggle frames


def grid_for(shape: tuple[int, int]) -> tuple[int, int]:
    """The block grid of frames of ``shape``: ``GRID``, or one block per pixel on smaller frames."""
    return min(GRID[0], shape[0]), min(GRID[1], shape[1])


def _starts(size: int, blocks: int) -> np.ndarray:
    return -(-np.arange(blocks) * size // blocks)  # ceil(i * size / blocks): as even as integers allow


def _block_sums(part: np.ndarray, rows: np.ndarray, cols: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(n, gy, gx) exact integer pixel sums per block."""
    n, h, w = part.shape
    (gy, gx), by = grid, h // grid[0]
    if (
        h % gy == 0 and w % gx == 0 and by <= 257
    ):  # equal blocks (Kaggle frames): 6x faster; 257 * 255 fits uint16
        column_sums = part.reshape(n, gy, by, w).sum(axis=2, dtype=np.uint16)
        return column_sums.reshape(n, gy, gx, w // gx).sum(axis=3, dtype=np.uint32)
    return np.add.reduceat(np.add.reduceat(part, cols, axis=2, dtype=np.uint32), rows, axis=1)


def fingerprints(images: np.ndarray) -> np.ndarray:
    """(N, ceil(blocks / 8)) uint8: each frame's block bits, packed (``np.packbits`` order)."""
    if images.ndim != 3:
        raise ValueError(f"expected (N, H, W) images, got shape {images.shape}")
    n, h, w = images.shape
    gy, gx = grid_for((h, w))
    rows, cols = _starts(h, gy), _starts(w, gx)
    area = np.diff(np.append(rows, h))[:, None] * np.diff(np.append(cols, w))[None, :]
    out = np.empty((n, (gy * gx + 7) // 8), np.uint8)
    for s in range(0, n, _CHUNK):
        part = np.asarray(images[s : s + _CHUNK])
        sums = _block_sums(part, rows, cols, (gy, gx))
        means = (sums / area).reshape(len(part), -1)  # exact integer sums, one rounding each
        median = np.median(means, axis=1, keepdims=True)
        above = means > median
        # Many blocks AT the median (a black half, a flat border) leave only the flat region's shape:
        # such a frame is left blank, uninformative, rather than matched to every frame of that shape.
        above[(means == median).mean(axis=1) >= MAX_TIED_FRACTION] = False
        out[s : s + len(part)] = np.packbits(above, axis=1)
    return out


def _signs(fps: np.ndarray, bits: int) -> np.ndarray:
    return np.unpackbits(fps, axis=1, count=bits).astype(np.float32) * 2.0 - 1.0


def informative(fps: np.ndarray, bits: int) -> np.ndarray:
    """(N,) bool: fingerprints with enough set bits to tell a frame apart (not a flat frame)."""
    return np.unpackbits(fps, axis=1, count=bits).sum(axis=1) >= MIN_SET_FRACTION * bits


def near_pairs(a: np.ndarray, b: np.ndarray, bits: int, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(i, j): every pair of an informative ``a[i]`` and ``b[j]`` at most ``NEAR_FRACTION`` of their
    ``bits`` apart, i ascending. The Hamming distance is (bits - dot) / 2 over +-1 vectors; the dot
    products are sums of at most ``bits`` terms of +-1, exact in float32 whatever the order."""
    limit = NEAR_FRACTION * bits
    keep_a, keep_b = np.flatnonzero(informative(a, bits)), np.flatnonzero(informative(b, bits))
    sa, sb = _signs(a[keep_a], bits), _signs(b[keep_b], bits)
    found_i, found_j = [], []
    for s in range(0, len(sa), chunk):
        distance = (bits - sa[s : s + chunk] @ sb.T) / 2.0
        i, j = np.nonzero(distance <= limit)
        found_i.append(keep_a[i + s])
        found_j.append(keep_b[j])
    if not found_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(found_i).astype(np.int64), np.concatenate(found_j).astype(np.int64)


def bits_of(shape: tuple[int, int]) -> int:
    """Fingerprint bits of a frame of ``shape``."""
    gy, gx = grid_for(shape)
    return gy * gx


def linked_units(
    subjects: np.ndarray, fps: np.ndarray, bits: int
) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """(unit per frame, links): subjects that share a frame (within ``NEAR_FRACTION``) are one unit,
    named by its smallest subject id, transitively. ``links`` lists each linked pair of subjects once
    as (smaller id, larger id, how many of the smaller's frames match, how many of the larger's).
    Without links, units equal subjects."""
    subjects = np.asarray(subjects, dtype=np.int64)
    i, j = near_pairs(fps, fps, bits)
    cross = (i < j) & (subjects[i] != subjects[j])
    low_first = subjects[i] < subjects[j]  # each matching pair as (frame of the smaller id, of the larger)
    lows, highs = np.where(low_first, i, j)[cross], np.where(low_first, j, i)[cross]
    pairs = np.stack([subjects[lows], subjects[highs]], axis=1)
    found = np.unique(pairs, axis=0).tolist()
    links = []
    for low, high in found:
        match = (pairs[:, 0] == low) & (pairs[:, 1] == high)
        links.append(
            (int(low), int(high), int(np.unique(lows[match]).size), int(np.unique(highs[match]).size))
        )
    unit_of = {s: group[0] for group in link_groups(found) for s in group}  # the smallest id names it
    return np.array([unit_of.get(int(s), int(s)) for s in subjects], dtype=np.int64), links


def link_groups(pairs: list[list[int]]) -> list[list[int]]:
    """Linked pairs of subjects joined transitively into groups, each sorted (1-5 and 5-7: 1, 5, 7)."""
    groups: list[set[int]] = []
    for pair in pairs:
        touching = [g for g in groups if g & set(pair)]
        groups = [g for g in groups if g not in touching] + [set(pair).union(*touching)]
    return sorted(sorted(g) for g in groups)


def link_records(links: list[tuple[int, int, int, int]]) -> list[dict]:
    """:func:`linked_units`' links as JSON rows: {"subjects": [a, b], "matching_frames": [n_a, n_b]}."""
    return [
        {"subjects": [low, high], "matching_frames": [n_low, n_high]} for low, high, n_low, n_high in links
    ]


def describe(link: tuple[int, int, int, int] | list) -> str:
    """'subjects 17 and 18 share frames (12 of 17's and 9 of 18's match, identical or re-encoded)'."""
    low, high, n_low, n_high = link
    return (
        f"subjects {low} and {high} share frames ({n_low} of {low}'s and {n_high} of {high}'s match, "
        "identical or re-encoded)"
    )


def unlinked(link: tuple[int, int, int, int] | list) -> str:
    """The warning for a linked pair that a split with ``link_subjects: false`` may put apart."""
    return f"{describe(link)}, but link_subjects is false: the split may put them apart"


def counted_once(links: list[tuple[int, int, int, int]]) -> str:
    """' (subjects that share frames count once: 17+18)' for messages that count units, else ''."""
    return (
        f" (subjects that share frames count once: {', '.join(f'{a}+{b}' for a, b, *_ in links)})"
        if links
        else ""
    )

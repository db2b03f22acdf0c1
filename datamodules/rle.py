"""Kaggle run-length encoding for the Ultrasound Nerve Segmentation masks.

Convention (from train_masks.csv and sample_submission.csv): the mask is flattened in
column-major order (top to bottom, then left to right), and runs are written as
space-separated ``start length`` pairs with 1-indexed starts. An empty mask is ``""``.
"""

from __future__ import annotations

import numpy as np

KAGGLE_SHAPE = (420, 580)  # (H, W)


class RLEError(ValueError):
    """A malformed RLE string or a run outside the image."""


def encode(mask: np.ndarray) -> str:
    """Encode a 2-D mask (any nonzero = foreground) as a Kaggle RLE string."""
    if mask.ndim != 2:
        raise ValueError(f"encode expects a 2-D mask, got shape {mask.shape}")
    flat = (np.asarray(mask).T.reshape(-1) != 0).astype(np.int8)
    edges = np.diff(np.concatenate([[0], flat, [0]]))
    starts = np.flatnonzero(edges == 1)
    lengths = np.flatnonzero(edges == -1) - starts
    return " ".join(f"{s + 1} {n}" for s, n in zip(starts.tolist(), lengths.tolist()))


_LARGEST = 2**40


def parse_runs(pixels: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse ``"s1 n1 s2 n2 ..."`` into (0-indexed starts, lengths); raises RLEError."""
    text = "" if pixels is None else str(pixels).strip()
    if not text or text.lower() == "nan":
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    try:
        numbers = [int(v) for v in text.split()]
    except ValueError as exc:
        raise RLEError(f"RLE has a non-integer token ({exc})") from None
    # Far beyond any image, yet summed without overflow: 2**63 - 1 twice wrapped negative and passed
    # the range checks, a larger one was an OverflowError traceback.
    if any(abs(v) > _LARGEST for v in numbers):
        raise RLEError(f"RLE has a value beyond any image ({str(max(numbers, key=abs))[:24]})")
    values = np.array(numbers, dtype=np.int64)
    if values.size % 2:
        raise RLEError(f"RLE has an odd number of values ({values.size})")
    starts, lengths = values[0::2] - 1, values[1::2]
    if (starts < 0).any() or (lengths <= 0).any():
        raise RLEError("RLE has a start below 1 or a non-positive length")
    return starts, lengths


def decode(pixels: str, shape: tuple[int, int] = KAGGLE_SHAPE) -> np.ndarray:
    """Decode a Kaggle RLE string into a uint8 {0, 1} mask of ``shape`` (H, W)."""
    h, w = shape
    starts, lengths = parse_runs(pixels)
    ends = starts + lengths
    if ends.size and ends.max() > h * w:
        raise RLEError(f"RLE run ends at pixel {int(ends.max())}, beyond the {h}x{w} image ({h * w} pixels)")
    flat = np.zeros(h * w + 1, dtype=np.int32)
    np.add.at(flat, starts, 1)
    np.add.at(flat, ends, -1)
    return (np.cumsum(flat[:-1]) > 0).astype(np.uint8).reshape(w, h).T.copy()

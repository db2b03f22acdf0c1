"""Auxiliary training targets derived from a mask (pure): nerve presence and its bounding box."""

from __future__ import annotations

import numpy as np


def presence(mask: np.ndarray) -> float:
    """1.0 if any mask pixel is nonzero, else 0.0."""
    return float(np.any(mask))


def bbox(mask: np.ndarray) -> np.ndarray:
    """Normalised (cx, cy, w, h) of the nonzero pixels, float32; zeros for an empty mask.

    Pixel i covers [i, i + 1), so a box over columns x0..x1 (inclusive) has width
    ``(x1 - x0 + 1) / W`` and centre ``(x0 + x1 + 1) / 2 / W``; rows likewise with H.
    """
    if mask.ndim != 2:
        raise ValueError(f"bbox expects a 2-D mask, got shape {mask.shape}")
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return np.zeros(4, np.float32)
    h, w = mask.shape
    y0, y1, x0, x1 = rows[0], rows[-1], cols[0], cols[-1]
    return np.array(
        [(x0 + x1 + 1) / 2 / w, (y0 + y1 + 1) / 2 / h, (x1 - x0 + 1) / w, (y1 - y0 + 1) / h], np.float32
    )

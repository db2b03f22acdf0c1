"""Per-image confusion counts and the scores computed from them (pure; numpy and torch only).

Everything is scored at the original 420x580 from per-image (tp, fp, fn, tn), so a metric never
depends on the batch size, the network input size or the number of devices.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from benchmark.scoring import metrics


def confusion_counts_torch(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per-image (tp, fp, fn, tn) as an int64 (B, 4) tensor, on the device the masks live on."""
    pred = pred.bool()
    truth = truth.bool()
    dims = tuple(range(1, pred.ndim))
    tp = (pred & truth).sum(dims)
    fp = (pred & ~truth).sum(dims)
    fn = (~pred & truth).sum(dims)
    tn = (~pred & ~truth).sum(dims)
    return torch.stack([tp, fp, fn, tn], dim=1).long()


def dedupe_sorted(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Keep the first row of each index, sorted by index."""
    if np.all(np.diff(arrays["index"]) > 0):
        return arrays  # already unique and sorted: avoid copying large probability stacks
    _, first = np.unique(arrays["index"], return_index=True)
    return {k: v[first] for k, v in arrays.items()}


def per_image_scores(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image Dice and IoU (empty prediction on empty truth = 1) and whether the truth is empty."""
    counts = np.asarray(counts, dtype=np.int64)
    return {
        "dice": metrics.image_dice(counts),
        "iou": metrics.image_iou(counts),
        "true_empty": (counts[:, 0] + counts[:, 2]) == 0,
    }


def score_counts(counts: np.ndarray, presence_prob: np.ndarray | None) -> dict[str, float]:
    """Every named metric (docs/architecture.md) from per-image counts, as plain floats.

    ``presence_prob=None``: predicted presence is "mask non-empty" (used for post-processed masks,
    whose presence is decided by the gate, not by the raw score).
    """
    prob = None if presence_prob is None else np.asarray(presence_prob, dtype=np.float64)
    out = metrics.compute_metrics(np.asarray(counts, dtype=np.int64), prob)
    return {k: float(v) for k, v in out.items()}


def score_rows(rows: dict[str, np.ndarray]) -> dict[str, Any]:
    """Gathered rows -> ``{"index", "counts", "presence_prob", "dice", "iou", "true_empty", "metrics"}``."""
    return {
        **rows,
        **per_image_scores(rows["counts"]),
        "metrics": score_counts(rows["counts"], rows["presence_prob"]),
    }

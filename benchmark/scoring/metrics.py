"""Segmentation and presence metrics from per-image confusion counts (pure numpy).

Every metric is computed at the original 420x580 resolution from four per-image counts
(tp, fp, fn, tn), so scores are exact whatever the batch size, network input size or number of
devices. Image-wise Dice/IoU follow the Kaggle "Ultrasound Nerve Segmentation" rule: an empty
prediction on an empty truth scores 1 and exactly one empty mask scores 0. Dice: Dice,
"Measures of the amount of ecologic association between species", Ecology 1945.

Zero-denominator conventions (also in :data:`METRIC_DOCS`):
  * ``dice_pooled`` 0/0 (no foreground predicted or true anywhere) -> 1.0, the empty-mask rule.
  * ``sensitivity``, ``precision`` and ``f1`` 0/0 -> 0.0 (scikit-learn's ``zero_division=0``), so a
    model that predicts nothing gets precision 0 rather than an undefined or flattering value.
  * image-level ``presence_sensitivity``/``presence_specificity``, ``presence_auc`` and
    ``dice_positive`` are NaN when the class they condition on is absent.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy.stats import rankdata

COUNT_KEYS = ("tp", "fp", "fn", "tn")
METRIC_NAMES = (
    "kaggle_dice", "dice_positive", "dice_pooled", "iou", "sensitivity", "precision", "f1",
    "pixel_accuracy", "presence_accuracy", "presence_sensitivity", "presence_specificity", "presence_auc",
)  # fmt: skip

METRIC_DOCS: dict[str, str] = {
    "kaggle_dice": "Mean over images of Dice 2TP/(2TP+FP+FN); empty prediction on empty truth = 1, "
    "exactly one empty = 0 (the Kaggle leaderboard metric).",
    "dice_positive": "Mean image Dice over images whose truth has a nerve (empty rule irrelevant; "
    "NaN when no image has one).",
    "dice_pooled": "2TP/(2TP+FP+FN) over all pixels of all images; 1 when no pixel is predicted or true.",
    "iou": "Mean over images of TP/(TP+FP+FN); empty prediction on empty truth = 1, exactly one empty = 0.",
    "sensitivity": "Pixel recall TP/(TP+FN) pooled over all images; 0 when no pixel is true.",
    "precision": "Pixel precision TP/(TP+FP) pooled over all images; 0 when no pixel is predicted.",
    "f1": "Harmonic mean of pooled precision and sensitivity (= dice_pooled except: 0 when both are 0).",
    "pixel_accuracy": "(TP+TN)/all pixels, pooled; misleading: ~0.98 for a model predicting nothing.",
    "presence_accuracy": "Fraction of images whose predicted nerve presence matches the truth "
    "(predicted = presence prob >= 0.5, or prediction non-empty).",
    "presence_sensitivity": "Fraction of images with a nerve predicted as present; NaN when none has one.",
    "presence_specificity": "Fraction of empty-truth images predicted as empty; NaN when none is empty.",
    "presence_auc": "ROC AUC of the presence score (presence head or max pixel prob) vs truth non-empty, "
    "ties count 1/2; NaN when only one class.",
}

_CHUNK = 64  # images per chunk: bounds the temporaries of confusion_counts to ~16 MB


def confusion_counts(pred: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image int64 ``tp, fp, fn, tn`` of (N,H,W) boolean (or 0/1) prediction and truth masks."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.ndim != 3 or pred.shape != truth.shape:
        raise ValueError(
            f"pred and truth must be (N,H,W) arrays of one shape, got {pred.shape} and {truth.shape}"
        )
    n, pixels = pred.shape[0], pred.shape[1] * pred.shape[2]
    tp, n_pred, n_true = (np.zeros(n, dtype=np.int64) for _ in range(3))
    for start in range(0, n, _CHUNK):
        sl = slice(start, start + _CHUNK)
        p, t = pred[sl].astype(bool, copy=False), truth[sl].astype(bool, copy=False)
        tp[sl] = np.count_nonzero(p & t, axis=(1, 2))
        n_pred[sl] = np.count_nonzero(p, axis=(1, 2))
        n_true[sl] = np.count_nonzero(t, axis=(1, 2))
    fp, fn = n_pred - tp, n_true - tp
    return {"tp": tp, "fp": fp, "fn": fn, "tn": pixels - tp - fp - fn}


def as_count_arrays(counts: Mapping[str, np.ndarray] | np.ndarray) -> tuple[np.ndarray, ...]:
    """(tp, fp, fn, tn) int64 arrays from a :func:`confusion_counts` dict or an (N,4) array."""
    if isinstance(counts, Mapping):
        missing = [k for k in COUNT_KEYS if k not in counts]
        if missing:
            raise ValueError(f"confusion counts lack keys {missing}")
        arrays = tuple(np.asarray(counts[k], dtype=np.int64).reshape(-1) for k in COUNT_KEYS)
    else:
        arr = np.asarray(counts, dtype=np.int64)
        if arr.ndim != 2 or arr.shape[1] != 4:
            raise ValueError(f"confusion counts must be (N,4) in order tp,fp,fn,tn, got shape {arr.shape}")
        arrays = tuple(arr[:, i] for i in range(4))
    if len({a.shape for a in arrays}) != 1:
        raise ValueError("confusion counts tp, fp, fn, tn differ in length")
    if any((a < 0).any() for a in arrays):
        raise ValueError("confusion counts must be non-negative")
    return arrays


def counts_to_array(counts: Mapping[str, np.ndarray]) -> np.ndarray:
    """A :func:`confusion_counts` dict as an (N,4) int64 array (columns tp, fp, fn, tn)."""
    return np.stack(as_count_arrays(counts), axis=1)


def _ratio(num: np.ndarray, den: np.ndarray, when_zero: float) -> np.ndarray:
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, when_zero, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def image_dice(counts: Mapping[str, np.ndarray] | np.ndarray) -> np.ndarray:
    """Per-image Dice 2tp/(2tp+fp+fn); 1.0 when prediction and truth are both empty."""
    tp, fp, fn, _ = as_count_arrays(counts)
    return _ratio(2 * tp, 2 * tp + fp + fn, when_zero=1.0)


def image_iou(counts: Mapping[str, np.ndarray] | np.ndarray) -> np.ndarray:
    """Per-image IoU tp/(tp+fp+fn); 1.0 when prediction and truth are both empty."""
    tp, fp, fn, _ = as_count_arrays(counts)
    return _ratio(tp, tp + fp + fn, when_zero=1.0)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC via the Mann-Whitney U statistic on average ranks (ties count 1/2); NaN for one class."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)  # average ranks: a tied positive/negative pair contributes 1/2
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _mean_or_nan(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")


def _presence_metrics(
    pred_present: np.ndarray, true_present: np.ndarray, scores: np.ndarray
) -> dict[str, float]:
    hit = pred_present == true_present
    return {
        "presence_accuracy": _mean_or_nan(hit),
        "presence_sensitivity": _mean_or_nan(hit[true_present]),
        "presence_specificity": _mean_or_nan(hit[~true_present]),
        "presence_auc": roc_auc(scores, true_present),
    }


class NonFiniteError(ValueError):
    """A per-image score is NaN or infinite: scores computed from it would mean nothing."""


def _check_vector(name: str, values: np.ndarray | None, n: int) -> np.ndarray | None:
    if values is None:
        return None
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have one value per image ({n}), got shape {np.shape(values)}")
    if not np.isfinite(arr).all():
        raise NonFiniteError(f"{name} contains NaN or infinite values")
    return arr


def compute_metrics(
    counts: Mapping[str, np.ndarray] | np.ndarray,
    presence_prob: np.ndarray | None = None,
    presence_true: np.ndarray | None = None,
    presence_from_mask: bool = False,
) -> dict[str, float]:
    """Every metric of :data:`METRIC_NAMES` (definitions in :data:`METRIC_DOCS`) as floats.

    ``counts``: per-image confusion counts (dict or (N,4) array). ``presence_prob``: per-image
    presence score (presence head, or max pixel probability); when None the predicted presence is
    "prediction non-empty" and also serves as a (binary) AUC score. ``presence_true`` defaults to
    "truth non-empty". ``presence_from_mask=True`` takes the predicted presence from the (e.g.
    post-processed) mask even when ``presence_prob`` is given; the AUC still scores
    ``presence_prob``. ``pixel_accuracy`` is reported for completeness only: with ~1-2% foreground
    pixels a model predicting nothing reaches ~0.98.
    """
    tp, fp, fn, tn = as_count_arrays(counts)
    n = tp.shape[0]
    if n == 0:
        return {name: float("nan") for name in METRIC_NAMES}
    prob = _check_vector("presence_prob", presence_prob, n)
    true_vec = _check_vector("presence_true", presence_true, n)
    true_present = (tp + fn) > 0 if true_vec is None else true_vec > 0.5
    pred_present = (tp + fp) > 0 if prob is None or presence_from_mask else prob >= 0.5
    stacked = np.stack([tp, fp, fn, tn], axis=1)
    dice = image_dice(stacked)
    TP, FP, FN, TN = (int(a.sum()) for a in (tp, fp, fn, tn))  # noqa: N806 - pooled totals
    precision = float(_ratio(TP, TP + FP, 0.0))
    sensitivity = float(_ratio(TP, TP + FN, 0.0))
    out = {
        "kaggle_dice": float(dice.mean()),
        "dice_positive": _mean_or_nan(dice[(tp + fn) > 0]),
        "dice_pooled": float(_ratio(2 * TP, 2 * TP + FP + FN, 1.0)),
        "iou": float(image_iou(stacked).mean()),
        "sensitivity": sensitivity,
        "precision": precision,
        "f1": float(_ratio(2 * precision * sensitivity, precision + sensitivity, 0.0)),
        "pixel_accuracy": float(_ratio(TP + TN, TP + FP + FN + TN, float("nan"))),
    }
    scores = pred_present.astype(np.float64) if prob is None else prob
    out.update(_presence_metrics(pred_present, true_present, scores))
    return out

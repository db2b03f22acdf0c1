"""Metrics against hand-computed values; the empty-mask rule in every corner."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmark.scoring import metrics


def _mask(shape: tuple[int, int], on: list[int]) -> np.ndarray:
    """A boolean mask with the given flat pixel indices set."""
    m = np.zeros(shape[0] * shape[1], dtype=bool)
    m[on] = True
    return m.reshape(shape)


def _three_images() -> tuple[np.ndarray, np.ndarray]:
    """A: truth 6 px, pred 4 px, overlap 3. B: both empty. C: truth 10, pred 10, overlap 5 (4x5 images)."""
    shape = (4, 5)
    truth = np.stack([_mask(shape, list(range(6))), _mask(shape, []), _mask(shape, list(range(10)))])
    pred = np.stack([_mask(shape, [3, 4, 5, 6]), _mask(shape, []), _mask(shape, list(range(5, 15)))])
    return pred, truth


def test_confusion_counts_hand_values():
    pred, truth = _three_images()
    c = metrics.confusion_counts(pred, truth)
    assert c["tp"].tolist() == [3, 0, 5]
    assert c["fp"].tolist() == [1, 0, 5]
    assert c["fn"].tolist() == [3, 0, 5]
    assert c["tn"].tolist() == [13, 20, 5]
    assert all(v.dtype == np.int64 for v in c.values())


def test_confusion_counts_across_chunks_match_naive():
    rng = np.random.default_rng(0)
    pred = rng.random((150, 6, 7)) > 0.6  # more images than one chunk
    truth = rng.random((150, 6, 7)) > 0.7
    c = metrics.confusion_counts(pred, truth.astype(np.uint8))
    np.testing.assert_array_equal(c["tp"], (pred & truth).sum((1, 2)))
    np.testing.assert_array_equal(c["tn"], (~pred & ~truth).sum((1, 2)))
    np.testing.assert_array_equal(c["fp"] + c["fn"], (pred ^ truth).sum((1, 2)))


def test_confusion_counts_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="one shape"):
        metrics.confusion_counts(np.zeros((2, 4, 4), bool), np.zeros((2, 4, 5), bool))
    with pytest.raises(ValueError, match=r"\(N,H,W\)"):
        metrics.confusion_counts(np.zeros((4, 4), bool), np.zeros((4, 4), bool))


def test_empty_rule_dice_and_iou():
    empty, one = np.zeros((1, 3, 3), bool), _mask((3, 3), [4])[None]
    both_empty = metrics.confusion_counts(empty, empty)
    assert metrics.image_dice(both_empty).tolist() == [1.0]
    assert metrics.image_iou(both_empty).tolist() == [1.0]
    for pred, truth in ((one, empty), (empty, one)):
        c = metrics.confusion_counts(pred, truth)
        assert metrics.image_dice(c).tolist() == [0.0]
        assert metrics.image_iou(c).tolist() == [0.0]


def test_partial_overlap_dice_and_iou():
    pred, truth = _three_images()
    c = metrics.confusion_counts(pred[:1], truth[:1])  # pred 4, truth 6, overlap 3
    assert metrics.image_dice(c)[0] == pytest.approx(6 / 10)
    assert metrics.image_iou(c)[0] == pytest.approx(3 / 7)


def test_three_image_set_every_metric():
    pred, truth = _three_images()
    counts = metrics.confusion_counts(pred, truth)
    m = metrics.compute_metrics(counts)
    assert set(m) == set(metrics.METRIC_NAMES)
    assert m["kaggle_dice"] == pytest.approx((0.6 + 1.0 + 0.5) / 3)  # 0.7
    assert m["dice_positive"] == pytest.approx((0.6 + 0.5) / 2)  # 0.55
    assert m["dice_pooled"] == pytest.approx(2 * 8 / (2 * 8 + 6 + 8))  # 16/30
    assert m["iou"] == pytest.approx((3 / 7 + 1.0 + 5 / 15) / 3)
    assert m["sensitivity"] == pytest.approx(8 / 16)
    assert m["precision"] == pytest.approx(8 / 14)
    assert m["f1"] == pytest.approx(8 / 15)
    assert m["pixel_accuracy"] == pytest.approx((8 + 38) / 60)
    for name in ("presence_accuracy", "presence_sensitivity", "presence_specificity", "presence_auc"):
        assert m[name] == pytest.approx(1.0)
    # The (N,4) array form used by benchmark.evaluation gives the same numbers.
    assert metrics.compute_metrics(metrics.counts_to_array(counts)) == m


def test_all_empty_prediction_baseline():
    truth = np.zeros((4, 10, 10), bool)
    truth[0, :1, :2] = True  # 3 of 400 pixels true; 2 of 4 truths empty
    truth[1, 5, 5] = True
    pred = np.zeros_like(truth)
    m = metrics.compute_metrics(metrics.confusion_counts(pred, truth))
    assert m["kaggle_dice"] == pytest.approx(0.5)  # = fraction of empty truths (2 of 4)
    assert m["pixel_accuracy"] == pytest.approx(397 / 400)  # high although useless
    assert m["dice_positive"] == 0.0
    assert m["dice_pooled"] == 0.0
    assert (m["precision"], m["sensitivity"], m["f1"]) == (0.0, 0.0, 0.0)  # 0/0 precision -> 0
    assert m["presence_sensitivity"] == 0.0
    assert m["presence_specificity"] == 1.0
    assert m["presence_auc"] == pytest.approx(0.5)  # constant score: every pair is a tie


def test_no_positive_images_gives_nan_where_conditioned():
    empty = np.zeros((2, 3, 3), bool)
    m = metrics.compute_metrics(metrics.confusion_counts(empty, empty))
    assert m["kaggle_dice"] == 1.0 and m["dice_pooled"] == 1.0 and m["iou"] == 1.0
    assert math.isnan(m["dice_positive"])
    assert math.isnan(m["presence_sensitivity"]) and math.isnan(m["presence_auc"])
    assert m["presence_specificity"] == 1.0


def test_auc_with_ties_hand_example():
    # Positives {0.4, 0.8} vs negatives {0.1, 0.4}: pairs 1 + 0.5 + 1 + 1 = 3.5 of 4.
    assert metrics.roc_auc(np.array([0.1, 0.4, 0.4, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.875)
    assert metrics.roc_auc(np.array([0.8, 0.1]), np.array([0, 1])) == 0.0
    assert math.isnan(metrics.roc_auc(np.array([0.3, 0.9]), np.array([1, 1])))


def test_presence_metrics_use_presence_prob():
    counts = np.array([[5, 0, 0, 15], [0, 0, 0, 20], [3, 0, 3, 14]])  # truth: pos, neg, pos
    m = metrics.compute_metrics(counts, presence_prob=np.array([0.9, 0.6, 0.2]))
    assert m["presence_accuracy"] == pytest.approx(1 / 3)  # predicted pos, pos, neg
    assert m["presence_sensitivity"] == pytest.approx(1 / 2)
    assert m["presence_specificity"] == 0.0
    assert m["presence_auc"] == pytest.approx(1 / 2)  # 0.9 > 0.6 but 0.2 < 0.6
    m2 = metrics.compute_metrics(counts, np.array([0.9, 0.6, 0.2]), presence_true=np.array([1, 1, 1]))
    assert m2["presence_accuracy"] == pytest.approx(2 / 3)
    assert math.isnan(m2["presence_auc"])
    # Presence from the (post-processed) masks: images 0 and 2 non-empty; AUC still uses the probs.
    m3 = metrics.compute_metrics(counts, np.array([0.9, 0.6, 0.2]), presence_from_mask=True)
    assert m3["presence_accuracy"] == 1.0 and m3["presence_specificity"] == 1.0
    assert m3["presence_auc"] == pytest.approx(1 / 2)


def test_presence_prob_of_one_half_predicts_present():
    """The presence cut is p >= 0.5 (the mask's is strictly above): one positive image at exactly 0.5
    is predicted present (accuracy 1; with p > 0.5 it would be 0)."""
    m = metrics.compute_metrics(np.array([[5, 0, 0, 15]]), presence_prob=np.array([0.5]))
    assert m["presence_accuracy"] == 1.0 and m["presence_sensitivity"] == 1.0


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="one value per image"):
        metrics.compute_metrics(np.zeros((3, 4), np.int64), presence_prob=np.zeros(2))
    with pytest.raises(ValueError, match="NaN"):
        metrics.compute_metrics(np.zeros((1, 4), np.int64), presence_prob=np.array([np.nan]))
    with pytest.raises(ValueError, match=r"\(N,4\)"):
        metrics.image_dice(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="non-negative"):  # a wrapped or subtracted count
        metrics.compute_metrics(np.array([[1, -1, 0, 5]]))
    with pytest.raises(ValueError, match="lack keys"):
        metrics.image_dice({"tp": np.zeros(1)})
    assert all(math.isnan(v) for v in metrics.compute_metrics(np.zeros((0, 4), np.int64)).values())


def test_metric_docs_cover_every_metric():
    assert set(metrics.METRIC_DOCS) == set(metrics.METRIC_NAMES)
    assert all(doc and "\n" not in doc for doc in metrics.METRIC_DOCS.values())


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 50), st.integers(0, 50), st.integers(0, 50))
def test_dice_iou_relation(tp: int, fp: int, fn: int):
    counts = np.array([[tp, fp, fn, 100]])
    dice, iou = metrics.image_dice(counts)[0], metrics.image_iou(counts)[0]
    assert 0.0 <= iou <= dice <= 1.0
    assert dice == pytest.approx(2 * iou / (1 + iou))
    assert (dice == 1.0) == (fp + fn == 0)

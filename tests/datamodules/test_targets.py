"""Presence and bounding-box targets, checked against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from datamodules.targets import bbox, presence


def test_presence() -> None:
    mask = np.zeros((4, 5), np.uint8)
    assert presence(mask) == 0.0
    mask[3, 4] = 255
    assert presence(mask) == 1.0


def test_bbox_hand_computed() -> None:
    mask = np.zeros((10, 20), np.uint8)
    mask[2:5, 5:10] = 1  # rows 2..4, cols 5..9
    # cx = (5 + 9 + 1) / 2 / 20, cy = (2 + 4 + 1) / 2 / 10, w = 5 / 20, h = 3 / 10
    np.testing.assert_allclose(bbox(mask), [0.375, 0.35, 0.25, 0.3], rtol=0, atol=1e-7)
    assert bbox(mask).dtype == np.float32


def test_bbox_single_pixel_and_full_frame() -> None:
    mask = np.zeros((4, 8), np.uint8)
    mask[0, 7] = 1
    np.testing.assert_allclose(bbox(mask), [0.9375, 0.125, 0.125, 0.25], atol=1e-7)
    np.testing.assert_allclose(bbox(np.ones((4, 8))), [0.5, 0.5, 1.0, 1.0], atol=1e-7)


def test_bbox_of_two_blobs_spans_both() -> None:
    mask = np.zeros((10, 10), np.uint8)
    mask[1, 1] = mask[8, 6] = 1
    np.testing.assert_allclose(bbox(mask), [0.4, 0.5, 0.6, 0.8], atol=1e-7)


def test_bbox_empty_is_zeros_and_rejects_3d() -> None:
    np.testing.assert_array_equal(bbox(np.zeros((3, 3))), np.zeros(4))
    with pytest.raises(ValueError, match="2-D"):
        bbox(np.zeros((1, 3, 3)))

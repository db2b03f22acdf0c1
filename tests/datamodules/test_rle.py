"""Kaggle RLE: hand-computed strings (column-major, 1-indexed), round-trips, and decode errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from datamodules.rle import KAGGLE_SHAPE, RLEError, decode, encode, parse_runs

# 3 rows x 2 columns. Column-major flattening: column 0 = (0, 1, 0), column 1 = (1, 1, 0),
# so flat = 0 1 0 1 1 0 -> runs start at pixel 2 (length 1) and pixel 4 (length 2), 1-indexed.
MASK_3x2 = np.array([[0, 1], [1, 1], [0, 0]], dtype=np.uint8)
RLE_3x2 = "2 1 4 2"


def test_encode_hand_computed_3x2():
    assert encode(MASK_3x2) == RLE_3x2


def test_decode_hand_computed_3x2():
    out = decode(RLE_3x2, (3, 2))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, MASK_3x2)


@pytest.mark.parametrize(
    ("mask", "expected"),
    [
        # 2x3, top row set: each column contributes its first pixel -> starts 1, 3, 5.
        (np.array([[1, 1, 1], [0, 0, 0]]), "1 1 3 1 5 1"),
        # the very last pixel in column-major order (row 2, column 1 of a 3x2) is pixel 6.
        (np.array([[0, 0], [0, 0], [0, 1]]), "6 1"),
        (np.ones((2, 2)), "1 4"),
        (np.zeros((4, 5)), ""),
        (np.array([[255, 0], [255, 0]]), "1 2"),  # any nonzero is foreground
    ],
)
def test_encode_exact_cases(mask, expected):
    assert encode(mask) == expected
    np.testing.assert_array_equal(decode(expected, mask.shape), (mask != 0).astype(np.uint8))


def test_decode_default_shape_is_kaggle():
    out = decode("1 1", shape=KAGGLE_SHAPE)
    assert out.shape == (420, 580)
    assert out[0, 0] == 1 and out.sum() == 1
    # pixel 421 is the top of the second column
    assert decode("421 1")[0, 1] == 1


@pytest.mark.parametrize("empty", ["", "   ", None, "nan"])
def test_decode_empty_forms(empty):
    assert decode(empty, (3, 4)).sum() == 0


@given(
    arrays(
        np.uint8,
        st.tuples(st.integers(1, 24), st.integers(1, 24)),
        elements=st.sampled_from([0, 1, 255]),
    )
)
@settings(max_examples=200, deadline=None)
def test_round_trip_random_masks(mask):
    text = encode(mask)
    np.testing.assert_array_equal(decode(text, mask.shape), (mask != 0).astype(np.uint8))
    assert encode(decode(text, mask.shape)) == text  # canonical: re-encoding is stable


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1 2 3", "odd number"),
        ("1 x", "non-integer"),
        ("1.5 2", "non-integer"),
        ("0 2", "start below 1"),
        ("3 0", "non-positive length"),
        ("5 3", "beyond the 2x3 image"),  # run covers pixels 5..7 of 6
        # int64's largest twice wrapped negative and passed; a larger value was an OverflowError
        ("9223372036854775807 9223372036854775807", r"beyond any image \(9223372036854775807\)"),
        ("1 99999999999999999999", r"beyond any image \(99999999999999999999\)"),
    ],
)
def test_decode_errors(text, message):
    with pytest.raises(RLEError, match=message):
        decode(text, (2, 3))


def test_run_ending_exactly_at_last_pixel_is_valid():
    assert decode("5 2", (2, 3)).sum() == 2


def test_parse_runs_is_zero_indexed():
    starts, lengths = parse_runs("2 1 4 2")
    assert starts.tolist() == [1, 3] and lengths.tolist() == [1, 2]


def test_encode_rejects_non_2d():
    with pytest.raises(ValueError, match="2-D"):
        encode(np.zeros((2, 2, 2)))

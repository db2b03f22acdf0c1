"""Network-size mapping: shapes, exact pad/crop inverse, and a near-inverse for resize."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from datamodules.geometry import input_shape, pad_offsets, prepare, restore


def _oval(h: int = 420, w: int = 580) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return ((((xx - 300) / 60.0) ** 2 + ((yy - 200) / 40.0) ** 2) <= 1).astype(np.uint8)


def test_input_shapes() -> None:
    assert input_shape("resize", 128) == (128, 128)
    assert input_shape("pad", 128) == (448, 608)
    assert pad_offsets() == (14, 14)
    with pytest.raises(ValueError, match="resize_mode"):
        input_shape("crop", 128)


@pytest.mark.parametrize(
    "mode,size,shape", [("resize", 64, (64, 64)), ("resize", 512, (512, 512)), ("pad", 64, (448, 608))]
)
def test_prepare_shapes_and_dtype(mode: str, size: int, shape: tuple) -> None:
    img = np.random.default_rng(0).integers(0, 256, (420, 580), dtype=np.uint8)
    out = prepare(img, mode, size)
    assert out.shape == shape and out.dtype == np.uint8
    mask = prepare(_oval(), mode, size, is_mask=True)
    assert set(np.unique(mask)) == {0, 1}  # majority vote / zero padding keep masks binary
    assert set(np.unique(prepare(_oval() * 255, mode, size, is_mask=True))) == {0, 255}


def test_pad_reflects_images_and_zero_pads_masks() -> None:
    img = np.arange(420 * 580, dtype=np.int64).reshape(420, 580) % 251
    out = prepare(img.astype(np.uint8), "pad", 0)
    assert out[13, 14] == img[1, 0] and out[14, 13] == img[0, 1]  # reflect: the edge row is not repeated
    mask = prepare(np.ones((420, 580), np.uint8), "pad", 0, is_mask=True)
    assert mask.sum() == 420 * 580 and mask[:14].sum() == 0 and mask[:, -14:].sum() == 0


@settings(max_examples=15, deadline=None)
@given(arrays(np.uint8, (2, 1, 420, 580), elements=st.integers(0, 255)))
def test_pad_then_restore_is_identity(batch: np.ndarray) -> None:
    padded = np.stack([[prepare(c, "pad", 0) for c in item] for item in batch])
    back = restore(torch.from_numpy(padded), "pad", 0)
    np.testing.assert_array_equal(back.numpy(), batch)


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 100), st.integers(1, 100))
def test_pad_restore_identity_any_shape(h: int, w: int) -> None:
    x = np.random.default_rng(h * 1000 + w).integers(0, 256, (h, w), dtype=np.uint8)
    padded = prepare(x, "pad", 0)
    assert padded.shape == (-(-h // 32) * 32, -(-w // 32) * 32)
    back = restore(torch.from_numpy(padded)[None, None], "pad", 0, orig=(h, w))
    np.testing.assert_array_equal(back[0, 0].numpy(), x)


@pytest.mark.parametrize("size,min_iou", [(64, 0.9), (128, 0.95), (256, 0.95)])  # 64 px: quantisation
def test_resize_mask_round_trip_keeps_a_big_oval(size: int, min_iou: float) -> None:
    truth = _oval()
    small = prepare(truth, "resize", size, is_mask=True)
    back = restore(torch.from_numpy(small).float()[None, None], "resize", size)
    pred = back[0, 0].numpy() > 0.5
    assert back.shape == (1, 1, 420, 580)
    iou = (pred & (truth > 0)).sum() / (pred | (truth > 0)).sum()
    assert iou > min_iou


def test_restore_rejects_wrong_shape() -> None:
    with pytest.raises(ValueError, match="448, 608"):
        restore(torch.zeros(1, 1, 420, 580), "pad", 0)
    with pytest.raises(ValueError, match="64, 64"):
        restore(torch.zeros(1, 64, 64), "resize", 64)


def test_resize_mask_is_a_majority_vote() -> None:
    mask = np.zeros((4, 4), np.uint8)
    mask[:2, :2] = 1  # top-left 2x2 block: fully foreground
    mask[2, 2:] = 1  # bottom-right block: 2 of 4 pixels, exactly half -> foreground
    mask[:1, 2] = 1  # top-right block: 1 of 4 -> background
    np.testing.assert_array_equal(prepare(mask, "resize", 2, is_mask=True), [[1, 0], [0, 1]])


def test_resize_restore_uses_half_pixel_centres() -> None:
    """Two columns 0 and 1 stretched to four: output centres (x + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75,
    1.25 in input pixels, clamped at the edges. Catches align_corners=True (0, 1/3, 2/3, 1), which
    does not match cv2's resize in prepare."""
    back = restore(torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]]), "resize", 2, orig=(2, 4))
    np.testing.assert_allclose(back[0, 0].numpy(), [[0.0, 0.25, 0.75, 1.0]] * 2, atol=1e-6)


def test_odd_pad_margins_put_the_extra_row_below() -> None:
    """419 x 579 pads to 448 x 608: 29 spare rows and columns, 14 before and 15 after (floor)."""
    assert pad_offsets((419, 579)) == (14, 14)
    mask = prepare(np.ones((419, 579), np.uint8), "pad", 0, is_mask=True)
    assert np.flatnonzero(mask.any(axis=1)).tolist() == list(range(14, 433))  # 15 empty rows below
    assert np.flatnonzero(mask.any(axis=0)).tolist() == list(range(14, 593))

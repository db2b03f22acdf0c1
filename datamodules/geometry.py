"""Mapping 420x580 frames to the network input size and predictions back (pure).

Two modes, chosen by ``TrainConfig.resize_mode``:

* ``"resize"``: squash to ``size x size`` (``cv2.INTER_AREA`` when shrinking images, which
  averages instead of aliasing speckle; ``INTER_LINEAR`` when enlarging; "shrinking" means the
  area, size^2 < 420 * 580, so 448-480 shrink though their height grows). Masks stay binary: a
  network pixel is foreground when at least half of the area it covers is (a majority vote, which
  round-trips a 120x80 px oval with IoU 0.97 at 128 px where ``INTER_NEAREST`` only reaches 0.92);
  nearest when enlarging. ``restore`` resizes back bilinearly (half-pixel centres, the same
  convention as OpenCV), so it is an approximate inverse.
* ``"pad"``: keep full resolution and pad to the next multiple of 32 (420x580 -> 448x608) so every
  U-Net stage divides evenly; reflect padding for images (no artificial edges), zeros for masks.
  ``size`` is ignored. ``restore`` crops, an exact inverse.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from datamodules.rle import KAGGLE_SHAPE

MODES = ("resize", "pad")
PAD_MULTIPLE = 32


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"resize_mode={mode!r} is not one of {', '.join(MODES)}")


def _padded(n: int) -> int:
    return -(-n // PAD_MULTIPLE) * PAD_MULTIPLE


def pad_offsets(orig: tuple[int, int] = KAGGLE_SHAPE) -> tuple[int, int]:
    """(top, left) of the original frame inside the padded one: centred, floor on odd margins."""
    return (_padded(orig[0]) - orig[0]) // 2, (_padded(orig[1]) - orig[1]) // 2


def input_shape(mode: str, size: int, orig: tuple[int, int] = KAGGLE_SHAPE) -> tuple[int, int]:
    """(h, w) the network sees for this mode."""
    _check_mode(mode)
    if mode == "resize":
        return size, size
    return _padded(orig[0]), _padded(orig[1])


def _resize_mask(mask: np.ndarray, size: int, shrink: bool) -> np.ndarray:
    """Binary mask at size x size: area fraction >= 1/2 when shrinking, nearest when enlarging."""
    fg = (mask > 0).astype(np.float32)
    interp = cv2.INTER_AREA if shrink else cv2.INTER_NEAREST
    keep = cv2.resize(fg, (size, size), interpolation=interp) >= 0.5
    return np.where(keep, mask.max(), 0).astype(mask.dtype)


def prepare(image_hw: np.ndarray, mode: str, size: int, is_mask: bool = False) -> np.ndarray:
    """One 2-D frame (or mask) at network size, same dtype as the input."""
    _check_mode(mode)
    if image_hw.ndim != 2:
        raise ValueError(f"prepare expects a 2-D array, got shape {image_hw.shape}")
    h, w = image_hw.shape
    if mode == "resize":
        shrink = size * size < h * w
        if is_mask:
            return _resize_mask(image_hw, size, shrink)
        interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        return cv2.resize(np.ascontiguousarray(image_hw), (size, size), interpolation=interp)
    top, left = pad_offsets((h, w))
    ph, pw = input_shape(mode, size, (h, w))
    pad = ((top, ph - h - top), (left, pw - w - left))
    return np.pad(image_hw, pad, mode="constant" if is_mask else "reflect")


def restore(t: torch.Tensor, mode: str, size: int, orig: tuple[int, int] = KAGGLE_SHAPE) -> torch.Tensor:
    """Map network-size maps (B, C, h, w) back to (B, C, *orig): bilinear for resize, a crop for pad."""
    _check_mode(mode)
    expected = input_shape(mode, size, orig)
    if t.ndim != 4 or tuple(t.shape[-2:]) != expected:
        raise ValueError(f"restore expects (B, C, {expected[0]}, {expected[1]}), got {tuple(t.shape)}")
    if mode == "resize":
        return F.interpolate(t.float(), size=orig, mode="bilinear", align_corners=False)
    top, left = pad_offsets(orig)
    return t[..., top : top + orig[0], left : left + orig[1]]

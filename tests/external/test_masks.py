"""An outside method's mask reads alike as a TIFF or a PNG: a grayscale RGB export and 0/1 values in
any integer or float type are accepted in both; colour and non-binary values are refused, naming the file.
Before, an RGB TIFF with equal channels passed while the same PNG was refused, and a float or uint16
0/1 TIFF was refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from benchmark.external.masks import read_mask
from datamodules.errors import DataError


def _truth() -> np.ndarray:
    mask = np.zeros((420, 580), np.uint8)
    mask[100:180, 200:330] = 1
    return mask


def _save(path: Path, array: np.ndarray) -> Path:
    if path.suffix == ".png":
        import cv2

        assert cv2.imwrite(str(path), array)
    else:
        tifffile.imwrite(path, array)
    return path


def _rgb(mask: np.ndarray) -> np.ndarray:
    return np.repeat(mask[..., None], 3, axis=2)


CASES = {
    "uint8 0/1": lambda m: m,
    "uint8 0/255": lambda m: m * 255,
    "rgb 0/255": lambda m: _rgb(m * 255),
    "rgba 0/255, opaque": lambda m: np.dstack([_rgb(m * 255), np.full(m.shape, 255, np.uint8)]),
    "uint16 0/1": lambda m: m.astype(np.uint16),
    "uint16 0/255": lambda m: m.astype(np.uint16) * 255,
}
TIFF_ONLY = {"float32 0/1": lambda m: m.astype(np.float32), "bool": lambda m: m.astype(bool)}


# PNG holds integers only
FORMATS = [(c, s) for c in CASES for s in (".tif", ".png")] + [(c, ".tif") for c in TIFF_ONLY]


@pytest.mark.parametrize(("case", "suffix"), FORMATS)
def test_binary_masks_read_alike_in_any_format(case, suffix, tmp_path) -> None:
    make = {**CASES, **TIFF_ONLY}[case]
    mask = read_mask(_save(tmp_path / f"a{suffix}", make(_truth())))
    assert mask.dtype == bool and mask.sum() == 80 * 130 and (mask == _truth().astype(bool)).all()


@pytest.mark.parametrize("suffix", [".tif", ".png"])
def test_colour_and_non_binary_masks_are_refused(suffix, tmp_path) -> None:
    green = np.zeros((420, 580, 3), np.uint8)
    green[..., 1] = _truth() * 255
    path = _save(tmp_path / f"green{suffix}", green)
    with pytest.raises(DataError, match="colour image: its red, green and blue channels differ") as info:
        read_mask(path)
    assert info.value.path == path
    # the mask in the transparency over black (or white) RGB read as all empty (or full): 0.50 (0.04)
    alpha = _save(tmp_path / f"alpha{suffix}", np.dstack([_rgb(_truth() * 0), _truth() * 255]))
    with pytest.raises(DataError, match="alpha channel varies across the image"):
        read_mask(alpha)
    half = _save(tmp_path / f"half{suffix}", (_truth() * 7).astype(np.uint16))
    with pytest.raises(DataError, match=r"mask is not binary: values 0, 7 \(expected 0/1 or 0/255\)"):
        read_mask(half)

"""Predicted masks of an outside method: one binary 420x580 tif or png per outer-fold image, by stem.

Everything is checked before anything is scored or written, and every problem is reported at once,
a line naming the file each: a missing or extra image, two files for one stem, a wrong shape, a
non-binary mask.
Files other than .tif/.tiff/.png (nnU-Net writes its json files beside its masks) are ignored.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from datamodules.errors import DataError, collect, raise_all
from datamodules.io import as_gray, read_tif
from datamodules.rle import KAGGLE_SHAPE

MASK_SUFFIXES = (".tif", ".tiff", ".png")
BINARY_LEVELS = ((0, 1), (0, 255))  # a mask uses one of these pairs (or one value of it)


def list_masks(folder: Path, errors: list[DataError]) -> dict[str, Path]:
    """Stem -> mask file in ``folder``; DataError on a missing folder; a second file for one stem
    goes to ``errors``."""
    if not folder.is_dir():
        raise DataError(folder, "predictions directory not found")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in MASK_SUFFIXES or path.name.startswith(".") or not path.is_file():
            continue
        stem = path.stem.removesuffix("_mask")
        if stem in found:
            errors.append(DataError(path, f"a second prediction for image {stem} (also {found[stem].name})"))
            continue
        found[stem] = path
    return found


def match_stems(
    found: dict[str, Path], stems: list[str], folder: Path, fold: int, errors: list[DataError]
) -> list[Path]:
    """The files of ``stems`` that are there, in order; extra files and missing stems go to
    ``errors`` (a line each kind, with the first file and a count)."""
    extra = sorted(set(found) - set(stems))
    if extra:
        more = f" ({len(extra)} such files)" if len(extra) > 1 else ""
        errors.append(
            DataError(found[extra[0]], f"not an image of outer fold {fold}: an extra prediction{more}")
        )
    absent = [s for s in stems if s not in found]
    if absent:
        more = f"; {len(absent)} of the fold's {len(stems)} images have none" if len(absent) > 1 else ""
        errors.append(
            DataError(
                folder, f"no prediction for outer-fold image {absent[0]} ({absent[0]}.png or .tif){more}"
            )
        )
    return [found[s] for s in stems if s in found]


def _read(path: Path) -> np.ndarray:
    """The mask's pixels in any integer or float type, as a TIFF or a PNG alike: a grayscale RGB
    export becomes one channel in both (a PNG of one was refused where the same TIFF passed)."""
    if path.suffix.lower() != ".png":
        return read_tif(path, any_dtype=True)
    import cv2

    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise DataError(path, "cannot be read as a PNG image")
    return as_gray(image, path)


def read_mask(path: Path) -> np.ndarray:
    """A bool (420, 580) mask from a binary tif/png ({0,1} or {0,255}, in any integer or float type);
    DataError naming the file."""
    mask = _read(path)
    if mask.shape != KAGGLE_SHAPE:
        h, w = KAGGLE_SHAPE
        raise DataError(path, f"expected a {w}x{h} single-channel mask (H={h}), got shape {mask.shape}")
    values = np.unique(mask)
    if not any(set(values.tolist()) <= set(levels) for levels in BINARY_LEVELS):
        shown = ", ".join(str(v) for v in values[:6].tolist()) + (", ..." if values.size > 6 else "")
        raise DataError(path, f"mask is not binary: values {shown} (expected 0/1 or 0/255)")
    return mask > 0


def read_predictions(folder: Path, stems: list[str], fold: int) -> np.ndarray:
    """(N, 420, 580) bool masks for ``stems`` (in that order), every file checked first: all the
    problems at once (:class:`DataErrors`), so a damaged folder is mended in one attempt."""
    errors: list[DataError] = []
    paths = match_stems(list_masks(folder, errors), stems, folder, fold, errors)
    masks = [collect(errors, partial(read_mask, p)) for p in paths]
    raise_all(folder, errors)
    read = [m for m in masks if m is not None]  # all of them: any problem was raised above
    return np.stack(read) if read else np.zeros((0, *KAGGLE_SHAPE), bool)

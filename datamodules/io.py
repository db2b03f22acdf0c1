"""TIFF reading and writing. The Kaggle originals are LZW-compressed (needs imagecodecs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from datamodules.errors import DataError


def read_tif(path: str | Path) -> np.ndarray:
    """Read a single-page grayscale tif as a 2-D uint8 array; DataError when unreadable."""
    path = Path(path)
    try:
        arr = tifffile.imread(path)
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except Exception as exc:  # tifffile raises many types for truncated/corrupt files
        raise DataError(path, f"corrupt or truncated tif ({type(exc).__name__}: {exc})") from None
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):  # tolerate RGB exports of grayscale frames
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise DataError(path, f"expected a 2-D grayscale image, got array of shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise DataError(path, f"expected uint8 pixels, got {arr.dtype}")
    return arr


def write_tif(path: str | Path, arr: np.ndarray, lzw: bool = True) -> None:
    """Write a 2-D uint8 array as a (by default LZW-compressed, like Kaggle's) tif."""
    tifffile.imwrite(Path(path), np.ascontiguousarray(arr, dtype=np.uint8), compression="lzw" if lzw else None)

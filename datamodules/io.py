"""TIFF reading and writing. The Kaggle originals are LZW-compressed (needs imagecodecs).

tifffile reports some damage (a truncated file whose IFD lies past the end, a bad tag) only as a
log warning and returns an empty or partial array; ``read_tif`` turns those warnings into
DataError and keeps them off stderr, so a bad file gives exactly one clear error line.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import tifffile

from datamodules.errors import DataError

# What a file decodes to, as a version: the decoded-data cache keys its entries by it, so a change
# here is not hidden by entries decoded under the old rule (2: a colour tif is refused, where 1
# read its red channel; 3: a tif of several pages is refused, where 2 read its first).
DECODE_VERSION = 3

_capture = threading.local()  # per thread: warnings tifffile logged during the current read_tif


def _swallow_while_reading(record: logging.LogRecord) -> bool:
    """Logger filter: inside read_tif, record tifffile's warnings and drop them from the log."""
    sink = getattr(_capture, "messages", None)
    if sink is None:
        return True
    sink.append(record.getMessage())
    return False


logging.getLogger("tifffile").addFilter(_swallow_while_reading)


TRUNCATED = "corrupt or truncated tif"


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _imread(path: Path) -> np.ndarray:
    _capture.messages = []
    try:
        with tifffile.TiffFile(path) as tif:
            if len(tif.pages) > 1:  # imread would return the first page alone, without a word
                raise DataError(path, f"{len(tif.pages)} pages; expected one image per file", "multi-page")
            # maxworkers=1: callers parallelise over files; tifffile's own pool would oversubscribe.
            arr = tif.asarray(maxworkers=1)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except Exception as exc:  # tifffile raises many types for truncated/corrupt files
        if "imagecodecs" in str(exc):  # an intact file this install cannot decode: not "corrupt"
            raise DataError(path, f"{_one_line(exc)} to decode it (pip install imagecodecs)") from None
        raise DataError(
            path, f"corrupt or truncated tif ({type(exc).__name__}: {_one_line(exc)})", TRUNCATED
        ) from None
    finally:
        warnings, _capture.messages = _capture.messages, None
    if warnings or arr.size == 0:
        detail = _one_line(warnings[0]) if warnings else "no image data"
        raise DataError(path, f"corrupt or truncated tif ({detail})", TRUNCATED)
    return arr


def read_tif(path: str | Path, any_dtype: bool = False) -> np.ndarray:
    """Read a single-page grayscale tif as a 2-D uint8 array (any dtype with ``any_dtype``: a
    predicted mask may be saved as 0/1 floats); DataError when unreadable."""
    path = Path(path)
    arr = as_gray(_imread(path), path)
    if arr.dtype != np.uint8 and not any_dtype:
        raise DataError(path, f"expected uint8 pixels, got {arr.dtype}", "not uint8")
    return arr


def as_gray(arr: np.ndarray, path: Path) -> np.ndarray:
    """A 2-D image from a grayscale one saved as RGB(A) with equal channels (any format's export);
    DataError naming ``path`` for a colour image or another shape."""
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):  # tolerate RGB exports of grayscale frames
        if not ((arr[..., 0] == arr[..., 1]).all() and (arr[..., 0] == arr[..., 2]).all()):
            # a mask painted in green would otherwise read as empty (its red channel)
            raise DataError(path, "colour image: its red, green and blue channels differ; expected grayscale",
                            "colour")  # fmt: skip
        if arr.shape[-1] == 4 and not (arr[..., 3] == arr[0, 0, 3]).all():
            # a mask kept in the transparency read as its RGB (all empty, or all full): wrong scores
            raise DataError(path, "its alpha channel varies across the image (a mask in the transparency?); "
                            "expected grayscale: save it with one channel", "alpha")  # fmt: skip
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise DataError(path, f"expected a 2-D grayscale image, got array of shape {arr.shape}", "not 2-D")
    return arr


def write_tif(path: str | Path, arr: np.ndarray, lzw: bool = True) -> None:
    """Write a 2-D uint8 array as a (by default LZW-compressed, like Kaggle's) tif."""
    tifffile.imwrite(
        Path(path), np.ascontiguousarray(arr, dtype=np.uint8), compression="lzw" if lzw else None
    )

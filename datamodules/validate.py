"""Checks for the Kaggle layout files: ``train_masks.csv`` rows, image shapes, mask values.

Every failure raises ``DataError(path, problem)`` with a one-line problem, so the CLI prints one
line naming the file to fix (and, for the csv, the line number); several bad csv rows are reported
together (``DataErrors``), a line each.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datamodules.errors import DataError
from datamodules.io import read_tif
from datamodules.rle import RLEError, decode, parse_runs

CSV_HEADER = ("subject", "img", "pixels")
_SHOWN = 40  # characters of a csv field echoed in a message: a whole RLE can be kilobytes


def _short(text: object, limit: int = _SHOWN) -> str:
    """``text`` on one line, cut to ``limit`` characters: messages name the problem, not the data."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else f"{flat[: limit - 3]}..."


def _rle_kind(exc: RLEError) -> str:
    """An RLE problem without its particulars (the token, the count): what DataErrors groups by."""
    return str(exc).split(" (", 1)[0].split(" at pixel", 1)[0]


@dataclass(frozen=True)
class CsvRow:
    line: int  # 1-based line in the csv file (the header is line 1)
    rle: str


def _parse_int(text: str, csv_path: Path, line: int, column: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise DataError(
            csv_path,
            f"line {line}: {column} {_short(text)!r} is not an integer",
            f"{column} is not an integer",
        ) from None


def _check_header(header: list[str] | None, csv_path: Path) -> None:
    got = tuple(h.strip().lower() for h in header) if header else ()
    if got == CSV_HEADER:
        return
    expected = ",".join(CSV_HEADER)
    if got and got[0].isdigit():  # the first row is data: the header line is missing
        raise DataError(
            csv_path,
            f"line 1: no header (starts with data {_short(','.join(got))!r}); expected the header {expected}",
        )
    raise DataError(csv_path, f"line 1: header is {_short(','.join(got)) or '(empty)'}, expected {expected}")


def _check_rle(rle: str, shape: tuple[int, int], csv_path: Path, line: int) -> None:
    """Token and range checks without decoding pixels (cheap enough for all 5,635 rows)."""
    try:
        starts, lengths = parse_runs(rle)
    except RLEError as exc:
        raise DataError(csv_path, f"line {line}: {_short(exc, 120)}", _rle_kind(exc)) from None
    n_pixels = shape[0] * shape[1]
    if starts.size and int((starts + lengths).max()) > n_pixels:
        end = int((starts + lengths).max())
        raise DataError(
            csv_path,
            f"line {line}: RLE run ends at pixel {end}, beyond the {shape[0]}x{shape[1]} image "
            f"({n_pixels} pixels)",
            "RLE run ends beyond the image",
        )


def check_runs_ordered(rle: str, csv_path: Path, line: int, stem: str) -> None:
    """Runs sorted by start, disjoint and not repeated, as Kaggle's encoder writes them.

    Only for a mask the csv alone defines (no ``_mask.tif``): decoding would silently merge such
    runs into some mask, and there is no tif to show that it is not the intended one.
    """
    try:
        starts, lengths = parse_runs(rle)
    except RLEError as exc:
        raise DataError(csv_path, f"line {line}: {_short(exc, 120)}", _rle_kind(exc)) from None
    bad = np.flatnonzero(starts[1:] < starts[:-1] + lengths[:-1])
    if not bad.size:
        return
    k = int(bad[0]) + 1  # 0-based index of the first offending run; messages count runs from 1
    (s0, n0), (s1, n1) = (int(starts[k - 1]) + 1, int(lengths[k - 1])), (int(starts[k]) + 1, int(lengths[k]))
    if (s0, n0) == (s1, n1):
        what = f"run {k + 1} ({s1} {n1}) repeats run {k}"
    elif s1 < s0:
        what = f"run {k + 1} starts at pixel {s1}, before run {k} at {s0} (runs must be in increasing order)"
    else:
        what = f"run {k + 1} ({s1} {n1}) overlaps run {k} ({s0} {n0}, pixels {s0}-{s0 + n0 - 1})"
    raise DataError(
        csv_path,
        f"line {line} ({stem}): RLE {what}; this mask has no tif to check it against",
        "RLE runs out of order or overlapping (no tif to check against)",
    )


def read_masks_csv(
    csv_path: Path, shape: tuple[int, int], errors: list[DataError]
) -> tuple[dict[tuple[int, int], CsvRow], set[tuple[int, int]] | None]:
    """Parse and check every row of ``train_masks.csv``: the good rows keyed by (subject, img), and
    the keys of the bad ones (None when a bad row's key itself is unreadable: it may be any image's).
    Every bad row goes to ``errors`` and the good rows are kept, so the other checks still run on
    them; a bad header or an unreadable file raises."""
    rows: dict[tuple[int, int], CsvRow] = {}
    bad: set[tuple[int, int]] | None = set()
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            _check_header(next(reader, None), csv_path)
            for record in reader:
                try:
                    _add_row(record, reader.line_num, rows, csv_path, shape)
                except _BadRow as exc:  # its key was read: only that image has no usable row
                    errors.append(exc.error)
                    if bad is not None:
                        bad.add(exc.key)
                except DataError as exc:
                    errors.append(exc.with_traceback(None))
                    bad = None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(csv_path, f"unreadable csv ({type(exc).__name__}: {_short(exc, 120)})") from None
    return rows, bad


class _BadRow(Exception):
    """A csv row whose key was read but whose mask is unusable: the DataError, and the key."""

    def __init__(self, error: DataError, key: tuple[int, int]) -> None:
        super().__init__(str(error))
        self.error, self.key = error, key


def _add_row(
    record: list[str], line: int, rows: dict[tuple[int, int], CsvRow], csv_path: Path, shape: tuple[int, int]
) -> None:
    """Check one csv record and add it to ``rows``; a blank line is skipped. A row whose key was read
    but whose runs are bad (or repeated) raises :class:`_BadRow`, any other bad row a DataError."""
    if not record or (len(record) == 1 and not record[0].strip()):
        return
    if len(record) != 3:
        raise DataError(csv_path, f"line {line}: expected 3 columns, got {len(record)}", "not 3 columns")
    key = (
        _parse_int(record[0], csv_path, line, "subject"),
        _parse_int(record[1], csv_path, line, "img"),
    )
    try:
        _check_rle(record[2], shape, csv_path, line)
        if key in rows:
            raise DataError(
                csv_path,
                f"line {line}: duplicate row for {key[0]}_{key[1]} (first on line {rows[key].line})",
                "duplicate row",
            )
    except DataError as exc:
        raise _BadRow(exc.with_traceback(None), key) from None
    rows[key] = CsvRow(line, record[2].strip())


def check_shape(arr: np.ndarray, path: Path, shape: tuple[int, int], what: str = "image") -> None:
    if arr.shape != tuple(shape):
        raise DataError(
            path,
            f"{what} is {arr.shape[0]}x{arr.shape[1]} (HxW), expected {shape[0]}x{shape[1]}",
            f"{what} is not {shape[0]}x{shape[1]} (HxW)",
        )


def read_image(path: Path, shape: tuple[int, int]) -> np.ndarray:
    arr = read_tif(path)
    check_shape(arr, path, shape)
    return arr


def read_mask(path: Path, shape: tuple[int, int], validate: bool = True) -> np.ndarray:
    """Read a ``*_mask.tif`` as uint8 {0, 1}; its values must be {0, 255} or {0, 1}."""
    arr = read_tif(path)
    check_shape(arr, path, shape, what="mask")
    if validate:
        top = int(arr.max())
        if top not in (0, 1, 255) or np.count_nonzero((arr != 0) & (arr != top)):
            values = np.unique(arr)
            shown = ", ".join(str(v) for v in values[:6]) + (", ..." if values.size > 6 else "")
            raise DataError(
                path,
                f"mask is not binary: values {{{shown}}}, expected {{0, 255}} or {{0, 1}}",
                "mask is not binary",
            )
    return (arr != 0).view(np.uint8)


def decode_row(row: CsvRow, csv_path: Path, shape: tuple[int, int]) -> np.ndarray:
    try:
        return decode(row.rle, shape)
    except RLEError as exc:
        raise DataError(csv_path, f"line {row.line}: {_short(exc, 120)}", _rle_kind(exc)) from None


def check_agree(
    tif_mask: np.ndarray, csv_mask: np.ndarray, mask_path: Path, csv_path: Path, line: int
) -> None:
    differ = int(np.count_nonzero(tif_mask != csv_mask))
    if differ:
        raise DataError(
            mask_path,
            f"disagrees with {csv_path.name} line {line}: {differ} pixels differ "
            f"({int(tif_mask.sum())} foreground in the tif, {int(csv_mask.sum())} in the csv)",
            f"mask tif disagrees with {csv_path.name}",
        )

"""Reader for the Kaggle "Ultrasound Nerve Segmentation" layout, with validation.

Layout: ``train/<subject>_<img>.tif`` + ``train/<subject>_<img>_mask.tif`` (and/or a row of
``train_masks.csv``), ``test/<id>.tif``. Images and masks are paired by file stem, never by
position in sorted listings ("1_10.tif" sorts before "1_1_mask.tif", so positional pairing
silently shifts masks). Files are read in a thread pool: LZW decoding releases the GIL, and the
full set is 5,635 pairs. A damaged copy is reported whole: every bad file, a line per problem
(``DataErrors``), not one per attempt.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.errors import DataError, DataErrors, raise_all
from datamodules.rle import KAGGLE_SHAPE
from datamodules.validate import (
    CsvRow,
    check_agree,
    check_runs_ordered,
    decode_row,
    read_image,
    read_mask,
    read_masks_csv,
)

_TRAIN_STEM = re.compile(r"^(\d+)_(\d+)$")
_TEST_STEM = re.compile(r"^(\d+)$")
CSV_NAME = "train_masks.csv"


@dataclass(frozen=True)
class TrainRecord:
    stem: str  # "1_10"
    subject: int
    img: int
    image_path: Path
    mask_path: Path | None  # None when the mask comes from train_masks.csv
    rle: str | None  # the csv row, when train_masks.csv has one
    csv_line: int | None = None  # line of that row in train_masks.csv (for error messages)


@dataclass
class TrainSet:
    records: list[TrainRecord]  # sorted by (subject, img)
    images: np.ndarray  # (N, H, W) uint8
    masks: np.ndarray  # (N, H, W) uint8 {0, 1}
    mask_source: str  # "tif", "csv" or "tif+csv"

    @property
    def subjects(self) -> np.ndarray:
        return np.array([r.subject for r in self.records], dtype=np.int64)

    @property
    def stems(self) -> list[str]:
        return [r.stem for r in self.records]

    @property
    def positive(self) -> np.ndarray:
        """(N,) bool: whether each frame's mask shows a nerve."""
        return np.asarray(self.masks.reshape(len(self.masks), -1).any(axis=1))

    def __len__(self) -> int:
        return len(self.records)


def _require_dir(path: Path) -> Path:
    if not path.exists():
        raise DataError(
            path, "directory not found (expected the Kaggle layout: train/, test/, train_masks.csv)"
        )
    if not path.is_dir():
        raise DataError(path, "is not a directory")
    return path


def _tif_files(directory: Path) -> list[Path]:
    """The ``*.tif`` files of a directory; other files (README, .DS_Store, ._x.tif) are ignored."""
    return [
        p for p in directory.iterdir() if p.suffix == ".tif" and not p.name.startswith(".") and p.is_file()
    ]


def _split_train_dir(
    train_dir: Path, errors: list[DataError]
) -> tuple[dict[tuple[int, int], Path], dict[tuple[int, int], Path]]:
    """Map (subject, img) -> image path and -> mask path; a bad file name goes to ``errors``."""
    images: dict[tuple[int, int], Path] = {}
    masks: dict[tuple[int, int], Path] = {}
    for path in sorted(_tif_files(train_dir)):
        is_mask = path.stem.endswith("_mask")
        match = _TRAIN_STEM.match(path.stem[: -len("_mask")] if is_mask else path.stem)
        if match is None:
            errors.append(DataError(path, "file name is not <subject>_<img>.tif or <subject>_<img>_mask.tif"))
            continue
        key = (int(match[1]), int(match[2]))
        table = masks if is_mask else images
        if key in table:
            errors.append(
                DataError(path, f"duplicate of {table[key].name} (same subject {key[0]}, img {key[1]})")
            )
            continue
        table[key] = path
    return images, masks


def _read_csv_rows(
    csv_path: Path, shape: tuple[int, int], errors: list[DataError]
) -> dict[tuple[int, int], CsvRow]:
    """``train_masks.csv``'s rows ({} without one); its problems go to ``errors``."""
    if not csv_path.is_file():
        return {}
    try:
        return read_masks_csv(csv_path, shape)
    except DataErrors as exc:
        errors.extend(exc.errors)
    except DataError as exc:
        errors.append(exc)
    return {}


def _record(key: tuple[int, int], images: dict, masks: dict, row: CsvRow | None) -> TrainRecord:
    return TrainRecord(
        stem=images[key].stem,
        subject=key[0],
        img=key[1],
        image_path=images[key],
        mask_path=masks.get(key),
        rle=row.rle if row else None,
        csv_line=row.line if row else None,
    )


def _pairing_errors(images: dict, masks: dict, rows: dict, csv_path: Path) -> list[DataError]:
    """Masks without an image, images without a mask, csv-only masks whose runs are out of order."""
    errors = [
        DataError(path, f"mask has no matching image {key[0]}_{key[1]}.tif")
        for key, path in masks.items()
        if key not in images
    ]
    for key in sorted(images):
        row = rows.get(key)
        if key in masks:
            continue
        if row is None:
            where = f"no row in {CSV_NAME}" if csv_path.is_file() else f"no {CSV_NAME}"
            errors.append(DataError(images[key], f"has no mask: no {images[key].stem}_mask.tif and {where}"))
            continue
        try:  # csv-only: the row is the only truth
            check_runs_ordered(row.rle, csv_path, row.line, images[key].stem)
        except DataError as exc:
            errors.append(exc)
    return errors


def scan_train(data_dir: str | Path, shape: tuple[int, int] = KAGGLE_SHAPE) -> list[TrainRecord]:
    """Pair images with masks by stem and check train_masks.csv; reads no pixels.

    Every problem is reported at once (:class:`DataErrors`), in two stages so that one fault is not
    echoed by another: file names and csv rows first, then the pairing of what they name.
    """
    root = _require_dir(Path(data_dir))
    train_dir = _require_dir(root / "train")
    csv_path = root / CSV_NAME
    errors: list[DataError] = []
    images, masks = _split_train_dir(train_dir, errors)
    rows = _read_csv_rows(csv_path, shape, errors)
    raise_all(root, errors)
    if not images:
        raise DataError(train_dir, "no training images (<subject>_<img>.tif) found")
    raise_all(root, _pairing_errors(images, masks, rows, csv_path))
    return [_record(key, images, masks, rows.get(key)) for key in sorted(images)]


def _parallel_for(fn: Callable[[int, Any], object], items: Sequence[Any], where: Path) -> None:
    """Run ``fn(i, item)`` over a thread pool. Every item's DataError is reported (in item order,
    :func:`raise_all`); any other failure is re-raised at once."""
    workers = max(1, min(8, os.cpu_count() or 1, len(items)))
    pool = ThreadPoolExecutor(max_workers=workers)
    errors: list[DataError] = []
    try:
        for future in [pool.submit(fn, i, item) for i, item in enumerate(items)]:
            try:
                future.result()
            except DataError as exc:
                errors.append(exc)
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    raise_all(where, errors)


def _mask_of(rec: TrainRecord, csv_path: Path, shape: tuple[int, int], validate: bool) -> np.ndarray:
    if rec.mask_path is None:
        return decode_row(CsvRow(rec.csv_line or 0, rec.rle or ""), csv_path, shape)
    mask = read_mask(rec.mask_path, shape, validate=validate)
    if validate and rec.rle is not None:
        csv_mask = decode_row(CsvRow(rec.csv_line or 0, rec.rle), csv_path, shape)
        check_agree(mask, csv_mask, rec.mask_path, csv_path, rec.csv_line or 0)
    return mask


def mask_source_of(records: Sequence[TrainRecord]) -> str:
    sources = [
        s
        for s, has in (
            ("tif", any(r.mask_path for r in records)),
            ("csv", any(r.rle is not None for r in records)),
        )
        if has
    ]
    return "+".join(sources)


def load_train(
    data_dir: str | Path, validate: bool = True, shape: tuple[int, int] = KAGGLE_SHAPE
) -> TrainSet:
    """Read every training pair. ``validate`` also checks mask values and tif-vs-csv agreement."""
    records = scan_train(data_dir, shape)
    csv_path = Path(data_dir) / CSV_NAME
    images = np.empty((len(records), *shape), dtype=np.uint8)
    masks = np.empty((len(records), *shape), dtype=np.uint8)

    def load_one(i: int, rec: TrainRecord) -> None:
        images[i] = read_image(rec.image_path, shape)
        masks[i] = _mask_of(rec, csv_path, shape, validate)

    _parallel_for(load_one, records, Path(data_dir))
    return TrainSet(records=records, images=images, masks=masks, mask_source=mask_source_of(records))


def scan_test(data_dir: str | Path) -> list[tuple[int, Path]]:
    """``test/<id>.tif`` files as (id, path), sorted by numeric id (2 before 10); every bad name reported."""
    test_dir = _require_dir(_require_dir(Path(data_dir)) / "test")
    found: dict[int, Path] = {}
    errors: list[DataError] = []
    for path in sorted(_tif_files(test_dir)):
        match = _TEST_STEM.match(path.stem)
        if match is None:
            errors.append(DataError(path, "file name is not <id>.tif"))
        elif int(match[1]) in found:
            errors.append(
                DataError(path, f"duplicate of {found[int(match[1])].name} (same id {int(match[1])})")
            )
        else:
            found[int(match[1])] = path
    raise_all(test_dir, errors)
    return sorted(found.items())


def content_hash(train_set: TrainSet) -> str:
    """16 hex of sha256 over stems, image bytes and {0,1} mask bytes: labels leaderboards."""
    digest = hashlib.sha256()
    for i, stem in enumerate(train_set.stems):
        digest.update(stem.encode() + b"\0")
        digest.update(np.ascontiguousarray(train_set.images[i]).tobytes())
        digest.update(np.ascontiguousarray(train_set.masks[i]).tobytes())
    return digest.hexdigest()[:16]


def _check_test(data_dir: Path, shape: tuple[int, int]) -> int:
    """Validate every test image without keeping them; test/ is optional for a check."""
    if not (data_dir / "test").exists():
        return 0
    items = scan_test(data_dir)
    _parallel_for(lambda i, item: read_image(item[1], shape), items, data_dir / "test")
    return len(items)


def check_dataset(data_dir: str | Path, shape: tuple[int, int] = KAGGLE_SHAPE) -> dict:
    """Read and validate everything; the summary printed by ``data check --json``."""
    return dataset_summary(load_train(data_dir, validate=True, shape=shape), data_dir, shape)


def dataset_summary(train: TrainSet, data_dir: str | Path, shape: tuple[int, int] = KAGGLE_SHAPE) -> dict:
    """``check_dataset``'s summary of an already validated training set (the test images are read)."""
    n_positive = int(np.count_nonzero(train.positive))
    return {
        "data_dir": str(data_dir),
        "n_train": len(train),
        "n_subjects": int(np.unique(train.subjects).size),
        "n_positive": n_positive,
        "positive_fraction": round(n_positive / len(train), 6),
        "n_test": _check_test(Path(data_dir), shape),
        "image_size": [int(shape[0]), int(shape[1])],  # (H, W)
        "mask_source": train.mask_source,
        "content_hash": content_hash(train),
    }

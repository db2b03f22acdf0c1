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
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from datamodules import fingerprints as fingerprint
from datamodules.errors import DataError, collect, raise_all
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
LAYOUT_NAMES = (CSV_NAME, "sample_submission.csv", "train", "test")  # what a command never writes over


def layout_paths(data_dir: str | Path) -> list[Path]:
    """The Kaggle layout's own files and folders in ``data_dir``: an output path must not be one of
    them, nor lie inside one (``core.files.check_output_file``'s ``reads``)."""
    return [Path(data_dir) / name for name in LAYOUT_NAMES]


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
    frame_fingerprints: np.ndarray | None = field(default=None, repr=False, compare=False)
    linked: tuple[np.ndarray, list] | None = field(default=None, repr=False, compare=False)
    digest: str | None = field(default=None, repr=False, compare=False)  # content_hash of a read-only set

    def fingerprints(self) -> np.ndarray:
        """(N, bytes) uint8 per-frame fingerprints (:mod:`datamodules.fingerprints`), computed once."""
        if self.frame_fingerprints is None:
            self.frame_fingerprints = fingerprint.fingerprints(self.images)
        return self.frame_fingerprints

    def units(self, link: bool = True) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
        """(unit per frame, links): what a split keeps together and a CI resamples. With ``link``,
        subjects sharing a frame are one unit (:func:`fingerprints.linked_units`); else each subject.
        ``links`` are the data's linked subjects either way."""
        if self.linked is None:  # all pairs of frames compared once per set, not once per split
            bits = fingerprint.bits_of(self.images.shape[1:])
            self.linked = fingerprint.linked_units(self.subjects, self.fingerprints(), bits)
        units, links = self.linked
        return (units if link else self.subjects), links

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


def parent_hint(data_dir: Path) -> str:
    """A hint when ``data_dir`` is itself a Kaggle ``train/`` or ``test/`` folder (its tifs are
    here, no ``train/`` below): the data directory is its parent. Else ""."""
    if (
        data_dir.name in ("train", "test")
        and not (data_dir / "train").exists()
        and any(data_dir.glob("*.tif"))
    ):
        return (
            f"; {data_dir} holds the {data_dir.name}/ images themselves: give its parent, {data_dir.parent}"
        )
    return ""


def _require_dir(path: Path) -> Path:
    if not path.exists():
        raise DataError(
            path,
            "directory not found (expected the Kaggle layout: train/, test/, train_masks.csv)"
            + parent_hint(path.parent),
        )
    if not path.is_dir():
        raise DataError(path, "is not a directory")
    return path


def _tif_files(directory: Path, errors: list[DataError], any_case: bool = False) -> list[Path]:
    """The ``*.tif`` files of a directory; other files (README, .DS_Store, ._x.tif) are ignored,
    except a tif under another extension (``.TIF``, ``.tiff``) or a tif name that is no file: read
    as nothing, those frames would quietly be lost, so each is a problem naming the file. With
    ``any_case`` (test/, which ``predict`` reads so) every spelling of the extension is a tif."""
    found = []
    for p in directory.iterdir():
        if p.name.startswith(".") or p.suffix.lower() not in (".tif", ".tiff"):
            continue
        if not p.is_file():  # a frame as a directory or a link to nothing would vanish from the set
            errors.append(DataError(p, "not a readable file (a directory or a broken link)", "not a file"))
        elif p.suffix == ".tif" or any_case:
            found.append(p)
        else:
            problem = f"extension {p.suffix}: the layout reads .tif only; rename it"
            errors.append(DataError(p, problem, "not .tif"))
    return found


def _split_train_dir(
    train_dir: Path, errors: list[DataError]
) -> tuple[dict[tuple[int, int], Path], dict[tuple[int, int], Path]]:
    """Map (subject, img) -> image path and -> mask path; a bad file name goes to ``errors``."""
    images: dict[tuple[int, int], Path] = {}
    masks: dict[tuple[int, int], Path] = {}
    for path in sorted(_tif_files(train_dir, errors)):
        is_mask = path.stem.endswith("_mask")
        match = _TRAIN_STEM.match(path.stem[: -len("_mask")] if is_mask else path.stem)
        if match is None:
            errors.append(DataError(path, "file name is not <subject>_<img>.tif or <subject>_<img>_mask.tif"))
            continue
        key = (int(match[1]), int(match[2]))
        table = masks if is_mask else images
        if key in table:
            problem = f"duplicate of {table[key].name} (same subject {key[0]}, img {key[1]})"
            errors.append(DataError(path, problem, "duplicate file"))
            continue
        table[key] = path
    return images, masks


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


def _pair(
    images: dict, masks: dict, rows: dict, csv_path: Path, bad: set | None, errors: list
) -> list[tuple]:
    """The keys with an image and a usable mask. Problems go to ``errors``: a mask without its image,
    an image without a mask (not one whose csv row is reported bad, the likelier fault, and none at
    all when ``bad`` is None: a bad row whose key is unreadable, or an unreadable csv, may be any
    image's), a csv-only mask whose runs are out of order."""
    errors += [
        DataError(path, f"mask has no matching image {key[0]}_{key[1]}.tif", "mask has no matching image")
        for key, path in masks.items()
        if key not in images
    ]
    usable = []
    for key in sorted(images):
        row = rows.get(key)
        if key in masks:
            usable.append(key)
        elif row is None and bad is not None and key not in bad:
            where = f"no row in {CSV_NAME}" if csv_path.is_file() else f"no {CSV_NAME}"
            errors.append(
                DataError(
                    images[key], f"has no mask: no {images[key].stem}_mask.tif and {where}", "has no mask"
                )
            )
        elif row is not None:  # csv-only: the row is the only truth
            found = _attempt(partial(check_runs_ordered, row.rle, csv_path, row.line, images[key].stem))
            errors += found
            usable += [] if found else [key]
    return usable


def _scan(data_dir: str | Path, shape: tuple[int, int], errors: list[DataError]) -> list[TrainRecord]:
    """The records of every usable pair; every problem on the way goes to ``errors``."""
    root = _require_dir(Path(data_dir))
    train_dir = _require_dir(root / "train")
    csv_path = root / CSV_NAME
    images, masks = _split_train_dir(train_dir, errors)
    rows: dict[tuple[int, int], CsvRow] = {}
    bad: set[tuple[int, int]] | None = set()
    if csv_path.is_file():
        rows, bad = collect(errors, partial(read_masks_csv, csv_path, shape, errors)) or ({}, None)
    elif csv_path.exists() or csv_path.is_symlink():  # a directory, a broken link: not "no csv"
        errors.append(DataError(csv_path, "not a readable file (a directory or a broken link)"))
    if not images:
        errors.append(DataError(train_dir, "no training images (<subject>_<img>.tif) found"))
        return []
    usable = _pair(images, masks, rows, csv_path, bad, errors)
    return [_record(key, images, masks, rows.get(key)) for key in usable]


def scan_train(data_dir: str | Path, shape: tuple[int, int] = KAGGLE_SHAPE) -> list[TrainRecord]:
    """Pair images with masks by stem and check train_masks.csv; reads no pixels. Every problem is
    reported at once (:class:`DataErrors`)."""
    errors: list[DataError] = []
    records = _scan(data_dir, shape, errors)
    raise_all(Path(data_dir), errors)
    return records


def _attempt(fn: Callable[[], object]) -> list[DataError]:
    errors: list[DataError] = []
    collect(errors, fn)
    return errors


def _read_all(fn: Callable[[int, Any], list[DataError]], items: Sequence[Any]) -> list[DataError]:
    """``fn(i, item)`` over a thread pool; every item's DataErrors in item order. Any other failure
    is re-raised at once."""
    workers = max(1, min(8, os.cpu_count() or 1, len(items)))
    pool = ThreadPoolExecutor(max_workers=workers)
    errors: list[DataError] = []
    try:
        for future in [pool.submit(fn, i, item) for i, item in enumerate(items)]:
            errors += future.result()
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return errors


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
    """Read every training pair. ``validate`` also checks mask values and tif-vs-csv agreement.
    Every problem, of names, csv rows, pairing and pixels, is reported at once."""
    errors: list[DataError] = []
    records = _scan(data_dir, shape, errors)
    csv_path = Path(data_dir) / CSV_NAME
    images = np.empty((len(records), *shape), dtype=np.uint8)
    masks = np.empty((len(records), *shape), dtype=np.uint8)

    def load_one(i: int, rec: TrainRecord) -> list[DataError]:
        found: list[DataError] = []
        image = collect(found, partial(read_image, rec.image_path, shape))
        mask = collect(found, partial(_mask_of, rec, csv_path, shape, validate))
        images[i] = image if image is not None else 0
        masks[i] = mask if mask is not None else 0
        return found

    errors += _read_all(load_one, records)
    raise_all(Path(data_dir), errors)
    return TrainSet(records=records, images=images, masks=masks, mask_source=mask_source_of(records))


def _scan_test(data_dir: Path, errors: list[DataError]) -> list[tuple[int, Path]]:
    test_dir = _require_dir(_require_dir(Path(data_dir)) / "test")
    found: dict[int, Path] = {}
    for path in sorted(_tif_files(test_dir, errors, any_case=True)):
        match = _TEST_STEM.match(path.stem)
        if match is None:
            errors.append(DataError(path, "file name is not <id>.tif"))
        elif int(match[1]) in found:
            problem = f"duplicate of {found[int(match[1])].name} (same id {int(match[1])})"
            errors.append(DataError(path, problem, "duplicate file"))
        else:
            found[int(match[1])] = path
    return sorted(found.items())


def scan_test(data_dir: str | Path) -> list[tuple[int, Path]]:
    """``test/<id>.tif`` files as (id, path), sorted by numeric id (2 before 10); every bad name reported."""
    errors: list[DataError] = []
    items = _scan_test(Path(data_dir), errors)
    raise_all(Path(data_dir) / "test", errors)
    return items


def frame_digests(images: Iterable[np.ndarray]) -> list[str]:
    """16 hex of sha256 over each frame's pixels: the same frame in any copy of the data, whatever
    its file name or position, so a checkpoint can tell its training frames apart anywhere."""
    return [hashlib.sha256(np.ascontiguousarray(frame).tobytes()).hexdigest()[:16] for frame in images]


def content_hash(train_set: TrainSet) -> str:
    """16 hex of sha256 over stems, image bytes and {0,1} mask bytes: labels leaderboards. Seconds for
    the full data, so the node's decoded copy keeps it (``digest``: its arrays are read-only); a
    writable set is hashed as it is now, every time."""
    if train_set.digest is not None:
        return train_set.digest
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
    errors: list[DataError] = []
    items = _scan_test(data_dir, errors)
    errors += _read_all(lambda i, item: _attempt(partial(read_image, item[1], shape)), items)
    raise_all(data_dir / "test", errors)
    return len(items)


def check_dataset(data_dir: str | Path, shape: tuple[int, int] = KAGGLE_SHAPE) -> dict:
    """Read and validate everything, train/ and test/ alike, every problem reported together; the
    summary printed by ``data check --json``."""
    errors: list[DataError] = []
    train = collect(errors, partial(load_train, data_dir, True, shape))
    n_test = collect(errors, partial(_check_test, Path(data_dir), shape))
    raise_all(Path(data_dir), errors)
    assert train is not None and n_test is not None  # noqa: S101 - raise_all raised otherwise
    return dataset_summary(train, data_dir, shape, n_test)


def dataset_summary(
    train: TrainSet, data_dir: str | Path, shape: tuple[int, int] = KAGGLE_SHAPE, n_test: int | None = None
) -> dict:
    """``check_dataset``'s summary of an already validated training set (the test images are read
    unless their count ``n_test`` is given)."""
    n_positive = int(np.count_nonzero(train.positive))
    return {
        "data_dir": str(data_dir),
        "n_train": len(train),
        "n_subjects": int(np.unique(train.subjects).size),
        "n_positive": n_positive,
        "positive_fraction": round(n_positive / len(train), 6),
        "n_test": _check_test(Path(data_dir), shape) if n_test is None else n_test,
        "image_size": [int(shape[0]), int(shape[1])],  # (H, W)
        "mask_source": train.mask_source,
        "content_hash": content_hash(train),
        # subjects sharing frames: the same patient, one unit in splits and CIs (link_subjects)
        "linked_subjects": fingerprint.link_records(train.units()[1]),
    }

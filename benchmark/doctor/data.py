"""The doctor's synthetic Kaggle layout, generated one subject per process on a many-core box.

``datamodules.synth.generate`` renders about ten frames a second per core; the GPU doctor needs
some 640 frames, so each subject is generated on its own (``subjects=1`` with the subject's number
as the seed) and renamed into one layout. The result is the same bytes whatever the number of
processes.
"""

from __future__ import annotations

import csv
import itertools
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

PARALLEL_FROM = 120  # frames; below this, process start-up costs more than it saves


def _one_subject(args: tuple[str, int, int]) -> str:
    from datamodules.synth import generate

    out, subject, frames = args
    generate(out, subjects=1, per_subject=frames, n_test=1, seed=subject)
    return out


def _merge(parts: list[Path], out: Path) -> None:
    """Subject 1 of part k becomes subject k+1 of ``out``; the test image comes from part 0."""
    (out / "train").mkdir(parents=True)
    (out / "test").mkdir()
    rows = []
    for k, part in enumerate(parts, start=1):
        for src in sorted((part / "train").glob("1_*.tif")):
            os.replace(src, out / "train" / f"{k}_{src.name[2:]}")
        with open(part / "train_masks.csv", newline="") as fh:
            rows += [[k, row["img"], row["pixels"]] for row in csv.DictReader(fh)]
    os.replace(parts[0] / "test" / "1.tif", out / "test" / "1.tif")
    os.replace(parts[0] / "sample_submission.csv", out / "sample_submission.csv")
    with open(out / "train_masks.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["subject", "img", "pixels"])
        writer.writerows(rows)


def generate_layout(out: Path, subjects: int, frames: int) -> Path:
    """``subjects`` x ``frames`` synthetic training pairs and one test image in ``out`` (new)."""
    out = Path(out)
    tmp = Path(tempfile.mkdtemp(prefix=".doctor-data-", dir=out.parent))
    try:
        jobs = [(str(tmp / f"part{k}"), k, frames) for k in range(1, subjects + 1)]
        workers = min(subjects, os.cpu_count() or 1)
        if subjects * frames < PARALLEL_FROM or workers < 2:
            parts = [_one_subject(job) for job in jobs]
        else:  # spawn: the parent may already run OpenMP threads, which a fork would deadlock
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                parts = list(pool.map(_one_subject, jobs))
        _merge([Path(p) for p in parts], out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def first_subjects(data_dir: Path, out: Path, min_frames: int, min_subjects: int) -> tuple[Path, int, int]:
    """The fits' share of a Kaggle layout: its first subjects (by number) until they hold
    ``min_frames`` frames and number ``min_subjects``, linked into ``out`` with their rows of
    train_masks.csv. The doctor's fits then cost the same on the 1,969 frames of uns-positive as on
    the 5,635 of the Kaggle set. Returns (layout, subjects, frames); ``data_dir`` itself when it
    holds no more than that."""
    from datamodules.kaggle import CSV_NAME, scan_train

    records = scan_train(data_dir)  # sorted by (subject, img)
    kept: list = []
    for n, (_, frames) in enumerate(itertools.groupby(records, key=lambda r: r.subject), start=1):
        kept += list(frames)
        if len(kept) >= min_frames and n >= min_subjects:
            break
    if len(kept) == len(records):
        return Path(data_dir), len({r.subject for r in records}), len(records)
    (out / "train").mkdir(parents=True)
    for rec in kept:
        for path in (rec.image_path, rec.mask_path):
            if path is not None:
                _link(path.resolve(), out / "train" / path.name)
    rows = [[r.subject, r.img, r.rle] for r in kept if r.rle is not None]
    if rows:
        with open(out / CSV_NAME, "w", newline="") as fh:
            csv.writer(fh).writerows([["subject", "img", "pixels"], *rows])
    return out, len({r.subject for r in kept}), len(kept)


def _link(src: Path, dst: Path) -> None:
    """A symbolic link (the frame stays where it is), else a hard link, else a copy: Windows without
    the symlink privilege, or a file system that refuses links."""
    for make in (dst.symlink_to, lambda target: os.link(target, dst)):
        try:
            make(src)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)

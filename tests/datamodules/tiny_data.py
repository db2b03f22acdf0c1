"""A hand-made 3-pair Kaggle-layout data set for reader and ``data check`` tests."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from datamodules.io import write_tif
from datamodules.rle import encode

SHAPE = (420, 580)
TINY_STEMS = ("1_1", "1_2", "2_1")


def tiny_masks(shape: tuple[int, int] = SHAPE) -> dict[str, np.ndarray]:
    """1_1 and 2_1 hold a rectangle (different places), 1_2 is empty; values {0, 1}."""
    masks = {stem: np.zeros(shape, np.uint8) for stem in TINY_STEMS}
    masks["1_1"][100:140, 200:260] = 1
    masks["2_1"][300:310, 10:500] = 1
    return masks


def write_csv(root: Path, rows: list[list], header: tuple = ("subject", "img", "pixels")) -> None:
    with open(root / "train_masks.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def write_tiny_dataset(root: Path) -> Path:
    """train/{1_1,1_2,2_1}{.tif,_mask.tif}, train_masks.csv (+ a row with no image), test/{1,2,10}.tif."""
    rng = np.random.default_rng(0)
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    rows = [[3, 5, "1 10"]]  # like the real csv: a row for an image that is not present
    for stem, mask in tiny_masks().items():
        write_tif(root / "train" / f"{stem}.tif", rng.integers(0, 256, SHAPE, dtype=np.uint8))
        write_tif(root / "train" / f"{stem}_mask.tif", mask * 255)
        rows.append([*stem.split("_"), encode(mask)])
    write_csv(root, rows)
    for test_id in (10, 2, 1):
        write_tif(root / "test" / f"{test_id}.tif", np.full(SHAPE, test_id, np.uint8))
    (root / "train" / "README.txt").write_text("stray non-tif files are ignored")
    return root

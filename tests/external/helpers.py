"""Shared bits of the outside-method tests: a two-fold config and masks written from the truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datamodules.io import write_tif

TWO_FOLDS = """name: two_folds
models: [unet]
train: {n_folds: 2, image_size: 64, epochs: 1, accelerator: cpu, devices: 1, precision: "32", logger: none}
"""


def two_fold_config(tmp_path: Path) -> Path:
    path = tmp_path / "two_folds.yaml"
    path.write_text(TWO_FOLDS)
    return path


def write_png(path: Path, mask: np.ndarray) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(mask, dtype=np.uint8))


def write_masks(folder: Path, stems: list[str], masks: np.ndarray, kind: str = "png") -> Path:
    """One file per stem: png with values 0/1, or tif with values 0/255."""
    folder.mkdir(parents=True, exist_ok=True)
    for stem, mask in zip(stems, masks):
        if kind == "png":
            write_png(folder / f"{stem}.png", mask.astype(np.uint8))
        else:
            write_tif(folder / f"{stem}.tif", mask.astype(np.uint8) * 255)
    return folder

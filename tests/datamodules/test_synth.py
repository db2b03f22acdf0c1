"""The synthetic generator writes a valid Kaggle layout with learnable, subject-correlated nerves."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from benchmark.cli import main
from datamodules.errors import DataError
from datamodules.io import read_tif
from datamodules.rle import decode
from datamodules.synth import generate


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _pairs(root: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    stems = sorted(p.stem for p in (root / "train").glob("*.tif") if not p.stem.endswith("_mask"))
    return [
        (s, read_tif(root / "train" / f"{s}.tif"), read_tif(root / "train" / f"{s}_mask.tif")) for s in stems
    ]


def test_layout_files_and_csvs(synthetic_dir: Path) -> None:
    pairs = _pairs(synthetic_dir)
    assert len(pairs) == 6 * 8
    for _, img, mask in pairs:
        assert img.shape == mask.shape == (420, 580) and img.dtype == mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255}
    rows = _rows(synthetic_dir / "train_masks.csv")
    assert list(rows[0]) == ["subject", "img", "pixels"] and len(rows) == 48
    by_stem = {s: m for s, _, m in pairs}
    for row in rows:  # every image has a row, empty ones with empty pixels, and the RLE matches the tif
        np.testing.assert_array_equal(decode(row["pixels"]) * 255, by_stem[f"{row['subject']}_{row['img']}"])
    sub = _rows(synthetic_dir / "sample_submission.csv")
    assert [r["img"] for r in sub] == ["1", "2", "3", "4", "5"] and all(r["pixels"] == "" for r in sub)
    assert sorted(p.name for p in (synthetic_dir / "test").iterdir()) == [f"{n}.tif" for n in range(1, 6)]


def test_half_of_each_subject_is_positive(synthetic_dir: Path) -> None:
    positive = {}
    for stem, _, mask in _pairs(synthetic_dir):
        positive.setdefault(stem.split("_")[0], []).append(bool(mask.any()))
    assert sorted(positive) == [str(s) for s in range(1, 7)]
    assert all(sum(flags) == 4 for flags in positive.values())


def test_nerve_is_dark_with_bright_rim_and_sized(synthetic_dir: Path) -> None:
    for _, img, mask in _pairs(synthetic_dir):
        if not mask.any():
            continue
        inside = mask > 0
        rim = binary_dilation(inside, iterations=6) & ~inside
        assert img[inside].mean() < 0.7 * img.mean()
        assert img[rim].mean() > 1.5 * img[inside].mean()
        width = np.flatnonzero(inside.any(axis=0))
        assert 50 <= width[-1] - width[0] + 1 <= 170


def test_frames_of_a_subject_share_anatomy(synthetic_dir: Path) -> None:
    centres: dict[str, list] = {}
    for stem, _, mask in _pairs(synthetic_dir):
        if mask.any():
            ys, xs = np.nonzero(mask)
            centres.setdefault(stem.split("_")[0], []).append((xs.mean(), ys.mean()))
    spreads = [np.ptp(np.array(c), axis=0).max() for c in centres.values()]
    assert max(spreads) < 40  # small jitter within a subject
    means = np.array([np.mean(c, axis=0) for c in centres.values()])
    assert np.ptp(means, axis=0).max() > 40  # but subjects differ


def test_deterministic_per_seed(tmp_path: Path) -> None:
    a, b, c = (
        generate(tmp_path / n, subjects=1, per_subject=2, n_test=1, seed=s)
        for n, s in (("a", 3), ("b", 3), ("c", 4))
    )
    assert a["n_train"] == 2 and a["n_positive"] == 1 and a["n_test"] == 1
    for name in ("train/1_1.tif", "train/1_2_mask.tif", "test/1.tif"):
        np.testing.assert_array_equal(read_tif(tmp_path / "a" / name), read_tif(tmp_path / "b" / name))
    assert not np.array_equal(read_tif(tmp_path / "a/train/1_1.tif"), read_tif(tmp_path / "c/train/1_1.tif"))


def test_bad_arguments_raise_data_error(tmp_path: Path, synthetic_dir: Path) -> None:
    with pytest.raises(DataError, match="not empty"):
        generate(synthetic_dir)
    with pytest.raises(DataError, match="positive_fraction"):
        generate(tmp_path / "x", positive_fraction=1.5)
    with pytest.raises(DataError, match="subjects >= 1"):
        generate(tmp_path / "y", subjects=0)


def test_cli_prints_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["synth", "--out", str(tmp_path / "d"), "--subjects", "1", "--per-subject", "2", "--test", "0"]
    assert main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "2 train images" in out[0] and "0 test images" in out[0]
    assert (tmp_path / "d" / "train" / "1_2_mask.tif").is_file()
    assert main(argv) == 2  # second run into the same directory is refused with a clear error
    assert "not empty" in capsys.readouterr().err

"""The synthetic generator writes a valid Kaggle layout with learnable, subject-correlated nerves,
byte-identical on every CPU (its bit-reproducible primitives are tested here too)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from benchmark.cli import main
from datamodules import portable
from datamodules.errors import DataError
from datamodules.io import read_tif
from datamodules.kaggle import content_hash, load_train
from datamodules.rle import decode
from datamodules.synth import generate

REPO = Path(__file__).resolve().parents[2]
SMALL = {"subjects": 2, "per_subject": 3, "n_test": 2, "seed": 0}
# Pinned outputs of generate(**SMALL). If a deliberate generator change moves them, committed results
# keyed by the data's content hash must be regenerated too. FILES_SHA256 also covers tifffile's LZW
# and tag bytes (so a tifffile/imagecodecs upgrade could move it); CONTENT_HASH is pixels and stems only.
FILES_SHA256 = "29d11e17d0fa838a827e5207b9e645bd32a9735724cd5e322fe4cc433a4a3294"
CONTENT_HASH = "567f1b86597f3ae7"


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _tree_sha256(root: Path) -> str:
    """sha256 over every file's relative path and bytes, in sorted path order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _generate_in_subprocess(out: Path, env: dict[str, str]) -> None:
    code = f"from datamodules.synth import generate; generate({str(out)!r}, **{SMALL!r})"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, **env}, check=True, timeout=300)


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
    with pytest.raises(DataError, match="subjects must be >= 1, got 0"):
        generate(tmp_path / "y", subjects=0)
    with pytest.raises(DataError, match="seed must be 0 or more, got -1"):  # numpy's SeedSequence raised
        generate(tmp_path / "z", seed=-1)


def test_cli_prints_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["synth", "--out", str(tmp_path / "d"), "--subjects", "1", "--per-subject", "2", "--test", "0"]
    assert main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "2 train images" in out[0] and "0 test images" in out[0]
    assert (tmp_path / "d" / "train" / "1_2_mask.tif").is_file()
    # the mark that labels a board of this data SYNTHETIC (benchmark.evaluation.finalize): it said "real"
    assert json.loads((tmp_path / "d" / "synthetic.json").read_text()) == {
        "subjects": 1, "per_subject": 2, "n_test": 0, "seed": 0, "positive_fraction": 0.5,
    }  # fmt: skip
    assert main(argv) == 2  # second run into the same directory is refused with a clear error
    assert "not empty" in capsys.readouterr().err
    (tmp_path / "f").write_text("")
    assert main([*argv[:1], "--out", str(tmp_path / "f"), *argv[3:]]) == 2  # it was "Not a directory", exit 1
    assert (
        capsys.readouterr().err
        == f"error: {tmp_path / 'f'}: --out is a file; expected a directory for the data set\n"
    )
    assert main([*argv[:1], "--out", str(tmp_path / "f" / "d"), *argv[3:]]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'f'}: a file, not a folder; --out ")


def test_an_interrupted_set_leaves_nothing_and_the_same_call_then_works(tmp_path: Path, monkeypatch, capsys):
    """Ctrl-C in `synth` left 610 frames in train/; the same command was then refused ("already exists
    and is not empty"), though its interrupt line said to run it again."""
    from datamodules import synth

    write, calls = synth.write_tif, []

    def interrupted(path, array):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        write(path, array)

    monkeypatch.setattr(synth, "write_tif", interrupted)
    (tmp_path / "d" / "train").mkdir(parents=True)  # an empty train/ of the user's: allowed, kept
    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path / "d", subjects=1, per_subject=2, n_test=0)
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["train"]
    assert list((tmp_path / "d" / "train").iterdir()) == []
    monkeypatch.setattr(synth, "write_tif", write)
    assert generate(tmp_path / "d", subjects=1, per_subject=2, n_test=0)["n_train"] == 2
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [
        "sample_submission.csv", "test", "train", "train_masks.csv"]  # fmt: skip
    assert main(["synth", "--out", "", "--subjects", "1"]) == 2  # it wrote into the working directory
    assert capsys.readouterr().err == "error: --out: no directory given\n"


def test_small_set_bytes_and_content_hash_are_pinned(tmp_path: Path) -> None:
    generate(tmp_path / "d", **SMALL)
    assert _tree_sha256(tmp_path / "d") == FILES_SHA256
    assert content_hash(load_train(tmp_path / "d")) == CONTENT_HASH  # load_train also checks csv RLE == tifs


def test_same_bytes_with_other_threads_and_simd_paths(tmp_path: Path) -> None:
    """numpy's SIMD kernels can be switched off at start-up: AVX-512 only, then AVX2 too (x86 names;
    other CPUs ignore them). The old float32/libm generator wrote different bytes in each case."""
    generate(tmp_path / "here", **SMALL)
    off_avx512 = "AVX512_SPR AVX512_ICL X86_V4"
    for name, env in {
        "one_thread_no_avx512": {"OMP_NUM_THREADS": "1", "NPY_DISABLE_CPU_FEATURES": off_avx512},
        "two_threads_baseline_simd": {
            "OMP_NUM_THREADS": "2",
            "NPY_DISABLE_CPU_FEATURES": f"{off_avx512} X86_V3",
        },
    }.items():
        _generate_in_subprocess(tmp_path / name, env)
        assert _tree_sha256(tmp_path / name) == _tree_sha256(tmp_path / "here"), name


def test_exact_positive_count_per_subject(tmp_path: Path) -> None:
    summary = generate(tmp_path / "d", subjects=2, per_subject=5, n_test=3, seed=1, positive_fraction=0.3)
    positive = [bool(read_tif(p).any()) for p in sorted((tmp_path / "d" / "train").glob("*_mask.tif"))]
    assert sum(positive[:5]) == sum(positive[5:]) == round(5 * 0.3) == 2 and summary["n_positive"] == 4


def test_portable_functions_match_numpy() -> None:
    x = np.linspace(-79.0, 79.0, 20001)
    np.testing.assert_allclose(portable.exp(x), np.exp(x), rtol=1e-13, atol=0)
    y = np.exp(np.linspace(-40.0, 40.0, 20001))
    np.testing.assert_allclose(portable.log(y), np.log(y), rtol=0, atol=1e-13)
    z = np.linspace(-20.0, 20.0, 20001)
    np.testing.assert_allclose(portable.sin(z), np.sin(z), rtol=0, atol=1e-13)
    np.testing.assert_allclose(portable.cos(z), np.cos(z), rtol=0, atol=1e-13)


def test_portable_draws() -> None:
    draws = portable.Draws(7, 1)
    z = draws.normal(2.0, n=40_000)
    assert abs(z.mean()) < 0.05 and 3.8 < z.var() < 4.2 and np.abs(z).max() <= 12.0
    u = draws.uniform(2.0, 3.0, n=10_000)
    assert 2.0 <= u.min() and u.max() < 3.0 and abs(u.mean() - 2.5) < 0.01
    noise = draws.noise((300, 400))
    assert noise.dtype == np.int32 and noise.min() == -255 and noise.max() == 255 and np.all(noise % 2 == 1)
    assert abs(noise.var() - portable.NOISE_VARIANCE) < 0.02 * portable.NOISE_VARIANCE
    assert sorted(draws.permutation(50).tolist()) == list(range(50))
    assert {draws.integer(6, 9) for _ in range(200)} == {6, 7, 8}
    a, b = portable.Draws(7, 1).normal(n=5), portable.Draws(7, 2).normal(n=5)
    np.testing.assert_array_equal(a, portable.Draws(7, 1).normal(n=5))
    assert not np.array_equal(a, b)


def test_integer_blurs_match_convolution() -> None:
    field = portable.Draws(3).noise((40, 50)).astype(np.int64)
    filters = {
        "box": (lambda a, axis: portable.box(a, 7, axis), np.ones(7, np.int64)),
        "box_small": (lambda a, axis: portable.box_small(a, 5, axis), np.ones(5, np.int64)),
        "binomial": (portable.binomial, np.array([1, 2, 1])),
    }
    for name, (blur, taps) in filters.items():
        expected = np.array([np.convolve(row, taps, mode="valid") for row in field])
        np.testing.assert_array_equal(blur(field, 1), expected, err_msg=name)
        np.testing.assert_array_equal(blur(field.T, 0), expected.T, err_msg=name)
    taps = np.convolve(np.convolve(np.ones(5, np.int64), np.ones(3, np.int64)), [1, 2, 1])
    assert portable.kernel_energy([5, 3], 1) == int((taps * taps).sum())

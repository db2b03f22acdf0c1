"""`data check`: the summary on real data, and one clear error line (exit 2) for each bad input.

Every broken dataset is also fed to ``load_train`` (what the DataModule uses), or for a bad test/
image to ``check_dataset``, which must raise the very DataError that the CLI printed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from benchmark.cli import main
from datamodules.errors import DataError, DataErrors
from datamodules.io import write_tif
from datamodules.kaggle import check_dataset, load_train
from datamodules.rle import encode
from tests.datamodules.tiny_data import tiny_masks, write_csv


def tiny_rows(overrides: dict[str, str] | None = None) -> list[list]:
    rows = [[*stem.split("_"), encode(mask)] for stem, mask in tiny_masks().items()]
    for row in rows:
        row[2] = (overrides or {}).get(f"{row[0]}_{row[1]}", row[2])
    return rows


def cli_error(capsys: pytest.CaptureFixture, data_dir: Path) -> str:
    """Run `data check`, assert exit 2 with exactly one stderr line and no traceback; return it."""
    rc = main(["data", "check", "--data-dir", str(data_dir)])
    out, err = capsys.readouterr()
    assert rc == 2, out
    assert "Traceback" not in err and out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


def assert_bad(
    capsys: pytest.CaptureFixture, data_dir: Path, name: str, *fragments: str, loader: Callable = load_train
) -> str:
    line = cli_error(capsys, data_dir)
    for text in (name, *fragments):
        assert text in line, line
    with pytest.raises(DataError) as info:
        loader(data_dir)
    assert f"error: {info.value}" == line
    assert Path(info.value.path).name == name
    return line


def test_missing_directory(capsys, tmp_path):
    assert_bad(capsys, tmp_path / "absent", "absent", "directory not found")


def test_missing_train_directory(capsys, tiny):
    shutil.rmtree(tiny / "train")
    assert_bad(capsys, tiny, "train", "directory not found")


def test_the_train_folder_itself_is_pointed_at_its_parent(capsys, tiny):
    line = assert_bad(capsys, tiny / "train", "train", "directory not found")
    assert line.endswith(f"; {tiny / 'train'} holds the train/ images themselves: give its parent, {tiny}")
    run = ["run", "--data-dir", str(tiny / "train"), "--dry-run", "--results-dir", str(tiny / "r")]
    assert main(run) == 2
    assert capsys.readouterr().err.endswith(f"give its parent, {tiny}\n")


def test_no_images(capsys, tiny):
    for path in (tiny / "train").glob("*.tif"):
        path.unlink()
    assert_bad(capsys, tiny, "train", "no training images")


def test_image_without_mask_or_csv_row(capsys, tiny):
    (tiny / "train" / "1_2_mask.tif").unlink()
    write_csv(tiny, [r for r in tiny_rows() if r[:2] != ["1", "2"]])
    assert_bad(capsys, tiny, "1_2.tif", "has no mask", "no row in train_masks.csv")


@pytest.mark.parametrize("new", ["train/2_3.TIF", "train/2_3.tiff"])
def test_a_training_tif_under_another_extension_is_named_not_skipped(capsys, tiny, new):
    """A frame saved as .TIF or .tiff was read as nothing: the data set lost it without a word."""
    (tiny / new).write_bytes((tiny / "train/2_1.tif").read_bytes())
    assert_bad(capsys, tiny, Path(new).name, "the layout reads .tif only; rename it", loader=load_train)


def test_a_test_tif_under_another_extension_is_checked_as_predict_reads_it(capsys, tiny):
    """`data check` refused test/7.tiff, which `predict` reads and writes a submission row for."""
    before = check_dataset(tiny)["n_test"]
    (tiny / "test/7.tiff").write_bytes((tiny / "test/2.tif").read_bytes())
    assert check_dataset(tiny)["n_test"] == before + 1
    (tiny / "test/7.TIF").write_bytes((tiny / "test/2.tif").read_bytes())  # one id twice: two rows
    assert_bad(capsys, tiny, "7.tiff", "duplicate of 7.TIF (same id 7)", loader=check_dataset)


@pytest.mark.parametrize("kind", ["directory", "broken link"])
def test_a_tif_name_or_the_csv_that_is_no_file_is_named(capsys, tiny, kind):
    """A frame as a directory or a dangling link was skipped, and `data check` said OK."""
    (tiny / "train" / "2_1.tif").unlink()
    (tiny / "train" / "2_1_mask.tif").unlink()
    make = (lambda p: p.mkdir()) if kind == "directory" else (lambda p: p.symlink_to(tiny / "gone.tif"))
    make(tiny / "train" / "2_1.tif")
    assert_bad(capsys, tiny, "2_1.tif", "not a readable file (a directory or a broken link)")
    frame = tiny / "train" / "2_1.tif"
    if kind == "directory":
        frame.rmdir()
    else:
        frame.unlink()
    csv = tiny / "train_masks.csv"
    csv.unlink(missing_ok=True)
    make(csv)
    assert_bad(capsys, tiny, "train_masks.csv", "not a readable file")


@pytest.mark.parametrize("name", ["2_1.tif", "1_1_mask.tif"])
def test_truncated_tif(capsys, tiny, name):
    path = tiny / "train" / name
    path.write_bytes(path.read_bytes()[:500])
    assert_bad(capsys, tiny, name, "corrupt or truncated tif")


def test_corrupt_test_image(capsys, tiny):
    (tiny / "test" / "2.tif").write_bytes(b"\x00" * 64)
    assert_bad(capsys, tiny, "2.tif", "corrupt or truncated tif", loader=check_dataset)


def test_wrong_image_shape(capsys, tiny):
    write_tif(tiny / "train" / "1_2.tif", np.zeros((400, 580), np.uint8))
    assert_bad(capsys, tiny, "1_2.tif", "image is 400x580 (HxW), expected 420x580")


def test_wrong_test_image_shape(capsys, tiny):
    write_tif(tiny / "test" / "10.tif", np.zeros((580, 420), np.uint8))
    assert_bad(capsys, tiny, "10.tif", "expected 420x580", loader=check_dataset)


def test_non_binary_mask(capsys, tiny):
    mask = tiny_masks()["1_1"] * 255
    mask[0, :5] = 128
    write_tif(tiny / "train" / "1_1_mask.tif", mask)
    assert_bad(capsys, tiny, "1_1_mask.tif", "not binary", "values {0, 128, 255}")


@pytest.mark.parametrize(
    ("header", "rows", "fragment"),
    [
        (("subject", "image", "pixels"), tiny_rows(), "line 1: header is subject,image,pixels"),
        (("subject", "img"), tiny_rows(), "line 1: header is subject,img, expected subject,img,pixels"),
        (
            ("subject", "img", "pixels"),
            [*tiny_rows(), ["x", "3", ""]],
            "line 5: subject 'x' is not an integer",
        ),
        (
            ("subject", "img", "pixels"),
            [["1", "2.5", ""], *tiny_rows()],
            "line 2: img '2.5' is not an integer",
        ),
        (("subject", "img", "pixels"), tiny_rows({"1_2": "10 5 a"}), "line 3: RLE has a non-integer token"),
        (
            ("subject", "img", "pixels"),
            tiny_rows({"1_2": "10 5 7"}),
            "line 3: RLE has an odd number of values",
        ),
    ],
)
def test_malformed_csv(capsys, tiny, header, rows, fragment):
    write_csv(tiny, rows, header=header)
    assert_bad(capsys, tiny, "train_masks.csv", fragment)


def test_rle_run_out_of_range(capsys, tiny):
    write_csv(tiny, tiny_rows({"2_1": "243590 20"}))
    assert_bad(capsys, tiny, "train_masks.csv", "line 4", "RLE run ends at pixel 243609", "243600 pixels")


def test_mask_tif_disagrees_with_csv(capsys, tiny):
    shifted = np.roll(tiny_masks()["1_1"], 3, axis=1)  # 40 rows x 3 columns move on each side
    write_csv(tiny, tiny_rows({"1_1": encode(shifted)}))
    assert_bad(capsys, tiny, "1_1_mask.tif", "disagrees with train_masks.csv line 2", "240 pixels differ")


# --- a damaged copy is reported whole ------------------------------------------------------------


def cli_lines(capsys: pytest.CaptureFixture, data_dir: Path) -> list[str]:
    """`data check` of a directory with several problems: exit 2, no traceback, stderr's lines."""
    rc = main(["data", "check", "--data-dir", str(data_dir)])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and "Traceback" not in err
    return err.splitlines()


def test_every_bad_file_is_named_in_one_pass(capsys, tiny):
    """Names, pairing and pixels of train/ and test/ in one report; an image and its mask both bad
    are two lines. It used to take one run per problem."""
    (tiny / "train" / "2_1.tif").write_bytes(b"\x00" * 64)
    write_tif(tiny / "train" / "1_2.tif", np.zeros((400, 580), np.uint8))
    mask = tiny_masks()["1_1"] * 255
    mask[0, :5] = 128
    write_tif(tiny / "train" / "1_1_mask.tif", mask)
    (tiny / "train" / "2_1_mask.tif").write_bytes(b"\x00" * 70)
    (tiny / "train" / "9_1_mask.tif").write_bytes(b"")
    (tiny / "test" / "scan.tif").write_bytes(b"")
    (tiny / "test" / "2.tif").write_bytes(b"\x00" * 64)
    lines = cli_lines(capsys, tiny)
    assert lines[0] == f"error: {tiny}: 7 problems:"
    named = [line.split(": ")[0].strip() for line in lines[1:]]
    train, test = tiny / "train", tiny / "test"
    assert named == [str(p) for p in (train / "9_1_mask.tif", train / "1_1_mask.tif", train / "1_2.tif",
                                      train / "2_1.tif", train / "2_1_mask.tif", test / "scan.tif",
                                      test / "2.tif")]  # fmt: skip
    assert "no matching image" in lines[1] and "not binary" in lines[2] and "400x580" in lines[3]
    assert all("corrupt or truncated tif" in lines[i] for i in (4, 5, 7)) and "not <id>.tif" in lines[6]
    assert main(["data", "check", "--data-dir", str(tiny), "--json"]) == 2
    out, err = capsys.readouterr()
    report = json.loads(out)  # every problem for a script; the error lines on stderr as ever
    assert report["ok"] is False and [Path(p["path"]) for p in report["problems"]] == [Path(n) for n in named]
    assert report["problems"][3]["kind"] == "corrupt or truncated tif" and err.splitlines() == lines
    with pytest.raises(DataErrors) as info:
        load_train(tiny)  # train/ only
    assert [e.path.name for e in info.value.errors] == [
        "9_1_mask.tif", "1_1_mask.tif", "1_2.tif", "2_1.tif", "2_1_mask.tif"
    ]  # fmt: skip
    assert all(e.__traceback__ is None for e in info.value.errors)  # no decoded pixels kept alive


def test_beyond_twenty_problems_one_line_per_kind():
    """A truncated download of 5,635 frames: a line per kind, not 5,635 (--json lists every one)."""
    cut = "corrupt or truncated tif"
    errors = [DataError(f"train/{i}_1.tif", f"{cut} ({i} bytes)", cut) for i in range(30)]
    errors.append(DataError("train/9_9.tif", "image is 400x580 (HxW)", "image is not 420x580"))
    lines = str(DataErrors("data", errors)).splitlines()
    assert lines == [
        "data: 31 problems:",
        f"  train/0_1.tif: {cut} (0 bytes) (and 29 more of this kind: {cut})",
        "  train/9_9.tif: image is 400x580 (HxW)",
        "  (data check --json lists every one)",
    ]
    assert len(DataErrors("data", errors).to_list()) == 31


def test_a_broken_csv_is_not_echoed_as_images_without_masks(capsys, tiny):
    for stem in ("1_1", "1_2", "2_1"):
        (tiny / "train" / f"{stem}_mask.tif").unlink()  # the csv rows are now the only masks
    write_csv(tiny, tiny_rows({"1_2": "10 5 a"}))
    lines = cli_lines(capsys, tiny)
    assert lines == [f"error: {tiny / 'train_masks.csv'}: line 3: RLE has a non-integer token "
                     "(invalid literal for int() with base 10: 'a')"]  # fmt: skip
    write_csv(tiny, [])  # a csv with a header and no rows is not broken: every image lacks a mask
    lines = cli_lines(capsys, tiny)
    assert lines[0] == f"error: {tiny}: 3 problems:" and all("has no mask" in line for line in lines[1:])


def test_a_bad_csv_row_does_not_hide_the_other_rows_problems(capsys, tiny):
    """One out-of-range row used to drop every row, so a mask tif disagreeing with its row and an
    image with neither mask nor row went unreported until the row was mended (a second attempt)."""
    (tiny / "train" / "2_1_mask.tif").unlink()
    write_csv(tiny, [r for r in tiny_rows({"1_2": "243590 20", "1_1": ""}) if r[:2] != ["2", "1"]])
    lines = cli_lines(capsys, tiny)
    assert lines[0] == f"error: {tiny}: 3 problems:"
    assert f"  {tiny / 'train_masks.csv'}: line 3: RLE run ends at pixel 243609" in lines[1]
    assert (
        lines[2]
        == f"  {tiny / 'train' / '2_1.tif'}: has no mask: no 2_1_mask.tif and no row in train_masks.csv"
    )
    assert lines[3].startswith(f"  {tiny / 'train' / '1_1_mask.tif'}: disagrees with train_masks.csv line 2")


def test_every_bad_csv_row_and_file_name_together(capsys, tiny):
    write_csv(tiny, [*tiny_rows({"1_2": "10 5 a"}), ["x", "3", ""], ["1", "1", ""]])
    (tiny / "train" / "scan 7.tif").write_bytes(b"")
    lines = cli_lines(capsys, tiny)
    assert lines[0] == f"error: {tiny}: 4 problems:"
    bad_name = "file name is not <subject>_<img>.tif or <subject>_<img>_mask.tif"
    assert lines[1] == f"  {tiny / 'train' / 'scan 7.tif'}: {bad_name}"
    csv_path = tiny / "train_masks.csv"
    assert lines[2:] == [
        f"  {csv_path}: line 3: RLE has a non-integer token (invalid literal for int() with base 10: 'a')",
        f"  {csv_path}: line 5: subject 'x' is not an integer",
        f"  {csv_path}: line 6: duplicate row for 1_1 (first on line 2)",
    ]


def test_the_list_is_bounded():
    errors = [DataError(f"train/{i}_1.tif", f"problem {i}") for i in range(DataErrors.SHOWN + 5)]
    text = str(DataErrors("data", [*errors, DataError("train/0_2.tif", "problem 0")]))
    lines = text.splitlines()
    assert lines[0] == f"data: {DataErrors.SHOWN + 6} problems:"
    assert lines[1] == "  train/0_1.tif: problem 0 (and 1 more with the same problem)"  # kind: the problem
    assert len(lines) == DataErrors.SHOWN + 3 and lines[-2] == "  ... and 5 more, of 5 other kinds"
    few = DataErrors("data", errors[:3] + [DataError("train/0_2.tif", "problem 0")])
    assert str(few).splitlines()[1:] == [
        f"  {e}" for e in [*errors[:3], DataError("train/0_2.tif", "problem 0")]
    ]


# --- the summary ---------------------------------------------------------------------------------


def test_human_summary(capsys, tiny):
    assert main(["data", "check", "--data-dir", str(tiny)]) == 0
    out = capsys.readouterr().out
    assert "training pairs  3 from 2 subjects" in out
    assert "positive masks  2 (66.7%)" in out and "test images     3" in out
    assert "580x420 (W x H)" in out and "tif+csv" in out


REAL = {"n_train": 26, "n_subjects": 8, "n_positive": 15, "n_test": 25}


def test_real_json_summary(capsys, uns_sample):
    assert main(["data", "check", "--data-dir", str(uns_sample), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)  # exactly one JSON object
    assert {k: info[k] for k in REAL} == REAL
    assert info["image_size"] == [420, 580] and info["mask_source"] == "tif+csv"
    assert info["positive_fraction"] == pytest.approx(15 / 26, abs=1e-6)
    assert len(info["content_hash"]) == 16


def test_real_json_via_console_entry(uns_sample):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "benchmark", "data", "check", "--data-dir", str(uns_sample), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert {k: info[k] for k in REAL} == REAL


def test_bad_input_via_console_entry(tmp_path):
    cmd = [sys.executable, "-m", "benchmark", "data", "check", "--data-dir", str(tmp_path / "absent")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "absent: directory not found" in proc.stderr
    assert "Traceback" not in proc.stderr

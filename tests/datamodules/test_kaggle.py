"""Kaggle layout reader: stem pairing, mask sources, test ids, content hash, real-data agreement.

The tiny hand-made data set comes from tests/datamodules/tiny_data.py (fixtures in conftest.py).
"""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest

from datamodules.errors import DataError
from datamodules.io import read_tif, write_tif
from datamodules.kaggle import check_dataset, content_hash, load_train, scan_test, scan_train
from datamodules.rle import decode, encode
from tests.datamodules.tiny_data import SHAPE, TINY_STEMS, tiny_masks, write_csv, write_tiny_dataset


def test_load_tiny(tiny):
    train = load_train(tiny)
    assert train.stems == list(TINY_STEMS)
    assert train.subjects.tolist() == [1, 1, 2]
    assert train.images.shape == (3, *SHAPE) and train.images.dtype == np.uint8
    assert train.masks.dtype == np.uint8 and set(np.unique(train.masks).tolist()) == {0, 1}
    for i, mask in enumerate(tiny_masks().values()):
        np.testing.assert_array_equal(train.masks[i], mask)
        np.testing.assert_array_equal(train.images[i], read_tif(tiny / "train" / f"{TINY_STEMS[i]}.tif"))
    assert train.mask_source == "tif+csv"
    rec = train.records[0]
    assert (rec.subject, rec.img, rec.mask_path.name, rec.csv_line) == (1, 1, "1_1_mask.tif", 3)


def test_masks_from_csv_only_and_from_tif_only(tiny):
    for path in (tiny / "train").glob("*_mask.tif"):
        path.unlink()
    from_csv = load_train(tiny)
    assert from_csv.mask_source == "csv"
    assert all(r.mask_path is None for r in from_csv.records)
    np.testing.assert_array_equal(from_csv.masks, np.stack(list(tiny_masks().values())))

    shutil.rmtree(tiny)
    write_tiny_dataset(tiny)
    (tiny / "train_masks.csv").unlink()
    from_tif = load_train(tiny)
    assert from_tif.mask_source == "tif" and all(r.rle is None for r in from_tif.records)
    # masks are normalised to {0,1}, so the hash does not depend on where they came from
    assert content_hash(from_tif) == content_hash(from_csv)


def test_pairing_is_by_stem_not_by_sorted_position(tmp_path):
    """Lexically "1_10.tif" < "1_1_mask.tif" and 1_2 has no mask tif: positional pairing would shift."""
    shape = (12, 8)
    stems = ["1_1", "1_2", "1_10", "2_1"]
    (tmp_path / "train").mkdir()
    truth = {}
    for k, stem in enumerate(stems):
        truth[stem] = np.zeros(shape, np.uint8)
        truth[stem][k : k + 2, k : k + 3] = 1  # a distinct mask per stem
        write_tif(tmp_path / "train" / f"{stem}.tif", np.full(shape, 10 * (k + 1), np.uint8))
        if stem != "1_2":
            write_tif(tmp_path / "train" / f"{stem}_mask.tif", truth[stem] * 255)
    write_csv(tmp_path, [[1, 2, encode(truth["1_2"])]])
    images = sorted(p.name for p in (tmp_path / "train").glob("*.tif") if "_mask" not in p.name)
    masks = sorted(p.name for p in (tmp_path / "train").glob("*_mask.tif"))
    assert [m.replace("_mask", "") for m in masks] != images[: len(masks)]  # the trap is armed

    train = load_train(tmp_path, shape=shape)
    assert train.stems == stems  # numeric (subject, img) order: 1_2 before 1_10
    for i, stem in enumerate(train.stems):
        assert train.images[i, 0, 0] == 10 * (stems.index(stem) + 1)
        np.testing.assert_array_equal(train.masks[i], truth[stem])
    assert train.records[1].mask_path is None and train.records[1].rle == encode(truth["1_2"])
    assert train.mask_source == "tif+csv"


def test_scan_train_reads_no_pixels(tiny):
    (tiny / "train" / "2_1.tif").write_bytes(b"not a tif")  # scan must not notice
    records = scan_train(tiny)
    assert [r.stem for r in records] == list(TINY_STEMS)
    assert records[1].rle == "" and records[0].rle == encode(tiny_masks()["1_1"])


def test_test_images_sorted_numerically(tiny):
    (tiny / "test" / "notes.txt").write_text("ignored")
    items = scan_test(tiny)
    assert [i for i, _ in items] == [1, 2, 10]
    images = np.stack([read_tif(path) for _, path in items])  # each id is paired with its own file
    assert images.shape == (3, *SHAPE) and images[:, 0, 0].tolist() == [1, 2, 10]


def test_bad_test_file_name(tiny):
    write_tif(tiny / "test" / "a.tif", np.zeros(SHAPE, np.uint8))
    with pytest.raises(DataError, match=r"a.tif: file name is not <id>.tif"):
        scan_test(tiny)


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda d: (d / "train" / "1_x.tif").write_bytes(b""), "1_x.tif: file name is not"),
        (
            lambda d: write_tif(d / "train" / "4_4_mask.tif", np.zeros(SHAPE)),
            "4_4_mask.tif: mask has no matching image",
        ),
        (lambda d: shutil.copy(d / "train" / "1_1.tif", d / "train" / "01_1.tif"), "duplicate of"),
        (lambda d: write_csv(d, [[1, 1, ""], [1, 1, ""]]), "train_masks.csv: line 3: duplicate row for 1_1"),
        (lambda d: write_csv(d, [[1, 1, ""], [1, 2]]), "train_masks.csv: line 3: expected 3 columns, got 2"),
    ],
)
def test_layout_errors(tiny, make, fragment):
    make(tiny)
    with pytest.raises(DataError, match=fragment):
        scan_train(tiny)


def test_validate_false_skips_value_checks(tiny):
    write_tif(tiny / "train" / "1_2_mask.tif", np.full(SHAPE, 128, np.uint8))
    with pytest.raises(DataError, match="not binary"):
        load_train(tiny)
    loose = load_train(tiny, validate=False)
    assert loose.masks[1].min() == 1  # nonzero -> foreground


def test_content_hash(tiny):
    train = load_train(tiny)
    digest = content_hash(train)
    assert len(digest) == 16 and int(digest, 16) >= 0
    assert content_hash(load_train(tiny)) == digest
    train.masks[2, 0, 0] ^= 1
    assert content_hash(train) != digest


def test_check_dataset_tiny(tiny):
    info = check_dataset(tiny)
    expected = {"n_train": 3, "n_subjects": 2, "n_positive": 2, "n_test": 3, "image_size": [420, 580]}
    assert {k: info[k] for k in expected} == expected
    assert info["positive_fraction"] == pytest.approx(2 / 3, abs=1e-6)
    assert info["mask_source"] == "tif+csv"
    assert info["content_hash"] == content_hash(load_train(tiny))
    shutil.rmtree(tiny / "test")
    assert check_dataset(tiny)["n_test"] == 0  # test/ is optional for a check


def test_expected_shape_is_a_parameter(tmp_path):
    (tmp_path / "train").mkdir()
    write_tif(tmp_path / "train" / "1_1.tif", np.zeros((6, 4), np.uint8))
    write_tif(tmp_path / "train" / "1_1_mask.tif", np.zeros((6, 4), np.uint8))
    assert load_train(tmp_path, shape=(6, 4)).images.shape == (1, 6, 4)
    with pytest.raises(DataError, match=r"1_1.tif: image is 6x4 \(HxW\), expected 420x580"):
        load_train(tmp_path)


# --- real data (skipped without ../shared) -------------------------------------------------------


def test_real_mask_tifs_equal_csv_rows(uns_sample):
    """Independent of the reader: every *_mask.tif equals its decoded train_masks.csv row."""
    with open(uns_sample / "train_masks.csv", newline="") as fh:
        rows = {f"{r['subject']}_{r['img']}": r["pixels"] for r in csv.DictReader(fh)}
    mask_paths = sorted((uns_sample / "train").glob("*_mask.tif"))
    assert len(mask_paths) == 26 and len(rows) == 5635
    for path in mask_paths:
        tif = read_tif(path)
        assert set(np.unique(tif).tolist()) <= {0, 255}
        np.testing.assert_array_equal(
            tif // 255, decode(rows[path.name[: -len("_mask.tif")]]), err_msg=path.name
        )


def test_real_load_train(uns_sample):
    train = load_train(uns_sample)
    assert len(train) == 26 and np.unique(train.subjects).size == 8
    assert int(train.masks.reshape(26, -1).any(axis=1).sum()) == 15
    assert train.mask_source == "tif+csv"
    assert train.stems[:3] == ["1_1", "1_2", "1_3"] and train.stems[-1] == "13_8"
    i = train.stems.index("1_10")
    np.testing.assert_array_equal(train.images[i], read_tif(uns_sample / "train" / "1_10.tif"))


@pytest.mark.parametrize(
    ("runs", "problem"),
    [
        ("1 10 5 10", "RLE run 2 (5 10) overlaps run 1 (1 10, pixels 1-10)"),
        ("1 10 1 10", "RLE run 2 (1 10) repeats run 1"),
        ("100 5 1 10", "RLE run 2 starts at pixel 1, before run 1 at 100 (runs must be in increasing order)"),
    ],
)
def test_csv_only_masks_refuse_overlapping_repeated_or_unsorted_runs(tiny, runs, problem):
    """With no mask tif, the csv row is the only truth: decoding would silently merge such runs."""
    for path in (tiny / "train").glob("*_mask.tif"):
        path.unlink()
    write_csv(tiny, [[1, 1, encode(tiny_masks()["1_1"])], [1, 2, runs], [2, 1, ""]])
    with pytest.raises(DataError) as err:
        scan_train(tiny)
    assert (
        str(err.value)
        == f"{tiny / 'train_masks.csv'}: line 3 (1_2): {problem}; this mask has no tif to check it against"
    )
    write_csv(tiny, [[1, 1, encode(tiny_masks()["1_1"])], [1, 2, "1 10 11 5 30 2"], [2, 1, ""]])
    assert len(scan_train(tiny)) == 3  # touching and well-ordered runs are fine


def test_real_csv_rows_are_all_sorted_and_disjoint(uns_sample):
    """All 5,635 rows of the real train_masks.csv pass the csv-only check."""
    from datamodules.validate import check_runs_ordered

    with open(uns_sample / "train_masks.csv", newline="") as fh:
        for line, row in enumerate(csv.DictReader(fh), start=2):
            check_runs_ordered(
                row["pixels"], uns_sample / "train_masks.csv", line, f"{row['subject']}_{row['img']}"
            )

"""The decoded training set is cached once per node and memory-mapped read-only by every reader."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from datamodules import decoded_cache as dc
from datamodules.kaggle import load_train
from datamodules.synth import generate


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    generate(tmp_path / "data", subjects=2, per_subject=3, n_test=0, seed=0)
    return tmp_path / "data"


def test_second_reader_maps_the_first_readers_copy(data: Path, tmp_path: Path) -> None:
    root = tmp_path / "cache"
    first = dc.load_train_shared(data, root)
    entries = list(root.iterdir())
    assert len(entries) == 1 and {p.name for p in entries[0].iterdir()} == {
        "images.npy",
        "masks.npy",
        "fingerprints.npy",
        "records.json",
        "source.json",
    }
    second = dc.load_train_shared(data, root)
    reference = load_train(data)
    for ts in (first, second):
        assert isinstance(ts.images, np.memmap) and not ts.images.flags.writeable  # shared, never written
        np.testing.assert_array_equal(ts.images, reference.images)
        np.testing.assert_array_equal(ts.masks, reference.masks)
        assert ts.records == reference.records and ts.mask_source == reference.mask_source
        # the fingerprints come from the cache, computed once by the first reader
        assert ts.frame_fingerprints is not None
        np.testing.assert_array_equal(ts.frame_fingerprints, reference.fingerprints())


def test_a_changed_file_is_decoded_again(data: Path, tmp_path: Path) -> None:
    root = tmp_path / "cache"
    before = dc.signature(data)
    dc.load_train_shared(data, root)
    mask = data / "train" / "1_1_mask.tif"
    stat = mask.stat()
    os.utime(mask, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert dc.signature(data) != before
    dc.load_train_shared(data, root)
    # A second entry, and the stale one (never read again) is removed: the cache used to only grow.
    assert [p.name for p in root.iterdir()] == [dc.signature(data)]


def test_writing_an_entry_prunes_what_no_run_reads_again(data: Path, tmp_path: Path) -> None:
    root = tmp_path / "cache"
    other = tmp_path / "other"
    generate(other, subjects=1, per_subject=2, n_test=0, seed=1)
    dc.load_train_shared(other, root)
    kept = root / dc.signature(other)  # another data directory, still there
    gone = tmp_path / "gone"
    generate(gone, subjects=1, per_subject=2, n_test=0, seed=2)
    dc.load_train_shared(gone, root)
    gone_entry = root / dc.signature(gone)
    shutil.rmtree(gone)
    old_format = root / "0123456789abcdef"  # format 2 wrote no source.json
    old_format.mkdir()
    (old_format / "images.npy").write_bytes(b"0" * 100)
    abandoned, fresh = root / ".fedcba9876543210.x1", root / ".fedcba9876543210.x2"
    abandoned.mkdir(), fresh.mkdir()
    hour_ago = abandoned.stat().st_mtime - dc.ABANDONED_AFTER_S - 1
    os.utime(abandoned, (hour_ago, hour_ago))
    foreign = root / "results"  # a shared $NERVE_BENCH_CACHE_DIR: not ours, never touched
    foreign.mkdir()
    dc.load_train_shared(data, root)
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [kept.name, dc.signature(data), fresh.name, foreign.name]
    )
    assert not gone_entry.exists() and not old_format.exists() and not abandoned.exists()


def test_an_unwritable_cache_falls_back_to_memory(data: Path, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    ts = dc.load_train_shared(data, blocker / "cache")
    assert len(ts) == 6 and not isinstance(ts.images, np.memmap)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot cache the decoded data" in err and str(blocker) in err


def test_an_incomplete_entry_is_not_read(data: Path, tmp_path: Path) -> None:
    root = tmp_path / "cache"
    entry = root / dc.signature(data)
    entry.mkdir(parents=True)
    (entry / "records.json").write_text("{}")  # a crash mid-write can never look like this: rename
    assert dc.read_entry(entry) is None

"""The decoded training set is cached once per node and memory-mapped read-only by every reader."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from datamodules import decoded_cache as dc
from datamodules.kaggle import content_hash, load_train
from datamodules.synth import generate


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    generate(tmp_path / "data", subjects=2, per_subject=3, n_test=0, seed=0)
    return tmp_path / "data"


def test_second_reader_maps_the_first_readers_copy(data: Path, tmp_path: Path) -> None:
    root = tmp_path / "cache"
    first = dc.load_train_shared(data, root)
    entries = [p for p in root.iterdir() if p.is_dir()]
    assert {p.name for p in root.iterdir()} == {entries[0].name, f".{entries[0].name}.lock"}  # and its flock
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


def test_the_content_hash_is_kept_with_the_entry(data: Path, tmp_path: Path) -> None:
    """Hashed once per node (every run's summary and `run`'s check ask for it); `run --dry-run`
    reads it without an image; an entry written before it was kept is hashed when asked."""
    root = tmp_path / "cache"
    expected = content_hash(load_train(data))
    assert dc.known_content_hash(data, root) is None  # nothing decoded yet
    assert dc.load_train_shared(data, root).digest == expected
    assert dc.known_content_hash(data, root) == expected == dc.load_train_shared(data, root).digest
    records = root / dc.signature(data) / "records.json"
    meta = json.loads(records.read_text())
    del meta["content_hash"]
    records.write_text(json.dumps(meta))
    assert dc.known_content_hash(data, root) is None
    older = dc.load_train_shared(data, root)
    assert older.digest is None and content_hash(older) == expected


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
    assert sorted(p.name for p in root.iterdir()) == [f".{dc.signature(data)}.lock", dc.signature(data)]


def test_a_change_to_decoding_is_not_hidden_by_the_cache(data: Path, monkeypatch) -> None:
    """Entries decoded under an older rule (a colour mask read as its red channel) are not served."""
    before = dc.signature(data)
    monkeypatch.setattr(dc, "DECODE_VERSION", dc.DECODE_VERSION + 1)
    assert dc.signature(data) != before


def _aged(path: Path, seconds: float) -> Path:
    then = path.stat().st_mtime - seconds
    os.utime(path, (then, then))
    return path


def _entry(root: Path, name: str, source: dict | None) -> Path:
    """A complete-looking entry of another writer (records.json, and source.json unless format 2)."""
    path = root / name
    path.mkdir(parents=True)
    (path / "records.json").write_text("{}")
    if source is not None:
        (path / "source.json").write_text(json.dumps(source))
    return path


def test_writing_an_entry_prunes_what_no_run_reads_again(data: Path, tmp_path: Path) -> None:
    root = tmp_path / "cache"
    other = tmp_path / "other"
    generate(other, subjects=1, per_subject=2, n_test=0, seed=1)
    dc.load_train_shared(other, root)
    live = root / dc.signature(other)  # another data directory's entry, in use
    mine = dc.source_record(data)
    earlier = _entry(root, "00000000000000aa", mine)  # this data, before a file changed: never read again
    checkout = _entry(root, "00000000000000bb", {**mine, "fingerprints": "another checkout's"})
    unused = _aged(_entry(root, "00000000000000cc", {**mine, "data_dir": "/gone"}), 15 * 86400)
    format_2 = _entry(root, "00000000000000dd", None)  # recent: an older checkout may still use it
    old_format_2 = _aged(_entry(root, "00000000000000ee", None), 15 * 86400)
    foreign = root / "00000000000000ff"  # our kind of name, but no entry: never ours to remove
    foreign.mkdir()
    _aged(foreign, 15 * 86400)
    abandoned = root / ".fedcba9876543210.x1"
    abandoned.mkdir()
    _aged(abandoned, dc.ABANDONED_AFTER_S + 1)
    fresh = root / ".fedcba9876543210.x2"  # a writer at work
    fresh.mkdir()
    named = root / "results"  # not a name of ours, in a shared $NERVE_BENCH_CACHE_DIR
    named.mkdir()
    dc.load_train_shared(data, root)
    kept = {live, root / dc.signature(data), checkout, format_2, foreign, fresh, named}
    locks = {root / f".{p.name}.lock" for p in (live, root / dc.signature(data))}  # the decoders' flocks
    assert set(root.iterdir()) == kept | locks
    assert not any(p.exists() for p in (earlier, unused, old_format_2, abandoned))
    _aged(live, 15 * 86400)
    dc.load_train_shared(other, root)  # a read touches its entry: in use again
    assert time.time() - live.stat().st_mtime < 86400


def test_an_unwritable_cache_falls_back_to_memory(data: Path, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    ts = dc.load_train_shared(data, blocker / "cache")
    assert len(ts) == 6 and not isinstance(ts.images, np.memmap)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot cache the decoded data" in err and str(blocker) in err


def test_an_incomplete_entry_is_not_read_and_the_next_writer_replaces_it(data: Path, tmp_path: Path) -> None:
    root = tmp_path / "cache"
    entry = root / dc.signature(data)
    entry.mkdir(parents=True)
    (entry / "records.json").write_text("{}")  # a crash mid-write can never look like this: rename
    assert dc.read_entry(entry) is None
    # A removal killed half-way could (before removals renamed first): the next reader replaces it,
    # where the rename used to fail and every process decoded its own copy in memory.
    ts = dc.load_train_shared(data, root)
    assert isinstance(ts.images, np.memmap) and dc.read_entry(entry) is not None
    assert sorted(p.name for p in root.iterdir()) == [
        f".{entry.name}.lock",
        entry.name,
    ]  # the broken one went


RACER = """
import sys, time
from pathlib import Path
from datamodules import decoded_cache as dc

real = dc.load_train


def counted(data_dir):
    with open(sys.argv[3], "a") as log:
        log.write("decode\\n")
    time.sleep(3)  # both processes are in here at once unless one waits for the other
    return real(data_dir)


dc.load_train = counted
ts = dc.load_train_shared(Path(sys.argv[1]), Path(sys.argv[2]))
print(len(ts), type(ts.images).__name__)
"""


def test_processes_that_start_together_decode_once(data: Path, tmp_path: Path) -> None:
    """The ranks srun or torchrun start at once each decoded the whole set before one rename won."""
    import subprocess
    import sys

    script, log, root = tmp_path / "racer.py", tmp_path / "decodes.log", tmp_path / "cache"
    script.write_text(RACER)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(data), str(root), str(log)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600)[0].split() for p in procs]
    assert [p.returncode for p in procs] == [0, 0] and outs == [["6", "memmap"]] * 2
    assert log.read_text().splitlines() == ["decode"]


def test_a_file_system_without_locks_still_decodes(data: Path, tmp_path: Path, monkeypatch) -> None:
    """NFS mounted without lock support (ENOLCK) or Lustre without flock (ENOSYS): decoded, not failed."""
    import errno
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    ts = dc.load_train_shared(data, tmp_path / "cache")
    assert len(ts) == 6 and isinstance(ts.images, np.memmap)  # cached all the same

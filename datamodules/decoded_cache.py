"""The decoded training set, once per node: uint8 arrays on local disk, memory-mapped by every process.

Decoding the 5,635 LZW tifs takes tens of seconds and 2.7 GB. Every run of a grid used to decode
them again, and under DDP every rank held its own copy (8 ranks: ~22 GB of host memory). Here the
first process to need a data set decodes and validates it once (:func:`datamodules.kaggle.load_train`)
and writes ``images.npy`` / ``masks.npy``, the frame fingerprints and its records into a node-local
cache directory; every later run and every rank maps those files read-only, so the node's page cache
holds ONE copy that all of them share.

The cache entry's name is a hash of the data directory's file listing (relative path, size and
modification time of every file under ``train/`` and of ``train_masks.csv``, and the decoding rule's
``io.DECODE_VERSION``): an edited, added or removed file, or a changed decoder, gives another entry,
and a stale one is never read. (A file rewritten at the same size with its modification time put
back is not seen; reading every file to hash it would cost what the cache saves.) Entries are written under a
temporary name and renamed in, so a concurrent reader sees a complete entry or none; processes that
miss it together take turns (an ``flock`` on ``.<entry>.lock``), so one decodes and the others read
its entry. Where the
cache cannot be written (no space, read-only), the data set is decoded in memory as before.

Writing an entry prunes the ones no run will read again (:func:`prune`): earlier versions of the
same data directory written by this version of the suite, entries nobody has read for
``UNUSED_AFTER_DAYS`` (another checkout's, a removed data directory's, an earlier format's), and
temporary directories a killed writer left. Before, the cache only grew: a development box held 49
entries, 7.4 GB, seven of them 918 MB versions of one data directory. The cache is node-local: a
process that maps a removed entry keeps its pages on a local file system, not on NFS.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from datamodules.fingerprints import VERSION as fingerprint_version
from datamodules.io import DECODE_VERSION
from datamodules.kaggle import TrainRecord, TrainSet, content_hash, load_train

CACHE_ENV = "NERVE_BENCH_CACHE_DIR"
# bump when the entry layout changes (2: fingerprints.npy; 3: source.json; 4: the content hash, which
# `run --dry-run` reads: an entry without it is decoded again once, not hashed at every run)
_FORMAT = 4
SOURCE = "source.json"  # the entry's data directory and the versions that named it, read by prune
ABANDONED_AFTER_S = 3600.0  # a temporary directory this old is a killed writer's, not a slow one's
# An entry another checkout or version still uses is read (and touched) more often than this.
UNUSED_AFTER_DAYS = 14.0
# What this module names in the cache root (an entry, or write_entry's temporary directory): prune
# touches nothing else, so a root shared with other files ($NERVE_BENCH_CACHE_DIR) loses none of them.
_OURS = re.compile(r"[0-9a-f]{16}|\.[0-9a-f]{16}\..+")


def cache_root() -> Path:
    """``$NERVE_BENCH_CACHE_DIR``, else a per-user directory in the node's temporary directory."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured)
    return (
        Path(tempfile.gettempdir()) / f"nerve-bench-cache-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    )


def signature(data_dir: Path) -> str:
    """16 hex naming the data directory's training files as they are now (names, sizes, mtimes)."""
    data_dir = Path(data_dir).resolve()
    entries = [str(data_dir), str(_FORMAT), f"fingerprints {fingerprint_version}", f"decode {DECODE_VERSION}"]
    files = sorted((data_dir / "train").glob("*")) + [data_dir / "train_masks.csv"]
    for path in files:
        if path.is_file():
            stat = path.stat()
            entries.append(f"{path.relative_to(data_dir)}\t{stat.st_size}\t{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()[:16]


def _records_json(records: list[TrainRecord]) -> list[dict]:
    return [
        {
            "stem": r.stem,
            "subject": r.subject,
            "img": r.img,
            "image_path": str(r.image_path),
            "mask_path": None if r.mask_path is None else str(r.mask_path),
            "rle": r.rle,
            "csv_line": r.csv_line,
        }
        for r in records
    ]


def _records(rows: list[dict]) -> list[TrainRecord]:
    return [
        TrainRecord(
            stem=row["stem"],
            subject=int(row["subject"]),
            img=int(row["img"]),
            image_path=Path(row["image_path"]),
            mask_path=None if row["mask_path"] is None else Path(row["mask_path"]),
            rle=row["rle"],
            csv_line=row["csv_line"],
        )
        for row in rows
    ]


def read_entry(entry: Path, touch: bool = True) -> TrainSet | None:
    """The cached training set of ``entry`` (read-only memory maps), or None when it is incomplete;
    ``touch`` marks it used for :func:`prune`."""
    try:
        meta = json.loads((entry / "records.json").read_text())
        images = np.load(entry / "images.npy", mmap_mode="r")
        masks = np.load(entry / "masks.npy", mmap_mode="r")
        fingerprints = np.load(entry / "fingerprints.npy")
    except (OSError, ValueError):
        return None
    n = len(meta["records"])
    if images.shape[0] != n or images.shape != masks.shape or len(fingerprints) != n:
        return None
    with contextlib.suppress(OSError):  # last use, for prune's age rule (a read-only root is fine)
        if touch:
            os.utime(entry)
    digest = _content_hash_of(meta)
    return TrainSet(
        _records(meta["records"]), images, masks, meta["mask_source"], fingerprints, digest=digest
    )


def _content_hash_of(meta: object) -> str | None:
    """The content hash an entry's records.json keeps (None: an entry from before it was kept)."""
    found = meta.get("content_hash") if isinstance(meta, dict) else None
    return found if isinstance(found, str) else None


def known_content_hash(data_dir: str | Path, root: Path | None = None) -> str | None:
    """The content hash of ``data_dir``'s training set as decoded into this node's cache, or None when
    no entry of its current files holds one; reads no image (``run --dry-run``)."""
    try:
        meta = json.loads(((root or cache_root()) / signature(Path(data_dir)) / "records.json").read_text())
    except (OSError, ValueError):
        return None
    return _content_hash_of(meta)


def cached_train(data_dir: str | Path, root: Path | None = None) -> TrainSet | None:
    """This node's decoded copy of ``data_dir``'s current files, or None; decodes and writes nothing
    (``run --dry-run`` checks the runs' splits on it)."""
    return read_entry((root or cache_root()) / signature(Path(data_dir)), touch=False)


def write_entry(entry: Path, train_set: TrainSet, data_dir: Path | None = None) -> None:
    """Write ``train_set`` as ``entry`` (temporary directory, then one rename); ``data_dir`` is
    recorded for :func:`prune`."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        (tmp / SOURCE).write_text(json.dumps(source_record(data_dir)))
        np.save(tmp / "images.npy", np.ascontiguousarray(train_set.images))
        np.save(tmp / "masks.npy", np.ascontiguousarray(train_set.masks))
        np.save(tmp / "fingerprints.npy", train_set.fingerprints())  # computed once per node, like the decode
        meta = {
            "records": _records_json(train_set.records),
            "mask_source": train_set.mask_source,
            "content_hash": content_hash(train_set),  # what every run's summary and check asks for
        }
        (tmp / "records.json").write_text(json.dumps(meta))
        try:
            os.rename(tmp, entry)
        except OSError:
            if read_entry(entry) is not None:  # another process's complete copy
                return
            _remove(entry)  # an incomplete one (a removal killed half-way): replaced, not kept forever
            os.rename(tmp, entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove(path: Path) -> None:
    """Rename ``path`` to a temporary name, then delete it: a removal killed half-way leaves a
    temporary directory (pruned after an hour), never a broken entry under a name that is read."""
    aside = path.with_name(f".{path.name.lstrip('.')}.removed-{os.getpid()}")
    try:
        os.rename(path, aside)
    except OSError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def load_train_shared(data_dir: str | Path, root: Path | None = None) -> TrainSet:
    """:func:`datamodules.kaggle.load_train`, decoded and validated once per node and data version;
    the arrays returned are read-only memory maps of the node's cache (or plain arrays when the
    cache cannot be written)."""
    data_dir = Path(data_dir)
    entry = (root or cache_root()) / signature(data_dir)
    cached = read_entry(entry)
    if cached is not None:
        return cached
    fd = _turn(entry)
    try:
        cached = read_entry(entry)  # written by the process whose turn came first
        if cached is not None:
            return cached
        return _decode_into(entry, data_dir)
    finally:
        if fd is not None:
            os.close(fd)  # the lock goes with the descriptor


def _turn(entry: Path) -> int | None:
    """This process's turn at decoding ``entry``: the ranks srun or torchrun start at once each
    decoded the whole set (8 ranks: 8 x 2.7 GB of memory and of temporary files) before one rename
    won. An exclusive ``flock`` on ``.<entry>.lock``, released with its descriptor (a killed
    holder's too); returns it, or None: no lock where the cache or the file system has none (each
    process decodes, as before), and none after a wait that left no entry (the process before this
    one could not write it: the others decode side by side, not one after another)."""
    try:
        import fcntl

        entry.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(_lock_path(entry), os.O_CREAT | os.O_RDWR, 0o644)
    except (ImportError, OSError):
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd  # nobody decodes it: this process does
        except BlockingIOError:
            fcntl.flock(fd, fcntl.LOCK_EX)  # another does: its entry, once it has written it
        if entry.is_dir():
            return fd
    except OSError:  # ENOLCK (NFS without locks), ENOSYS (Lustre -o noflock): decode without
        pass
    os.close(fd)
    return None


def _lock_path(entry: Path) -> Path:
    return entry.parent / f".{entry.name}.lock"


def _decode_into(entry: Path, data_dir: Path) -> TrainSet:
    """This process's decode, written as ``entry`` where the cache allows."""
    train_set = load_train(data_dir)
    try:
        write_entry(entry, train_set, data_dir)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        print(
            f"warning: {entry}: cannot cache the decoded data ({reason}); each process decodes its own copy",
            file=sys.stderr,
        )
        return train_set
    prune(entry, data_dir)
    return read_entry(entry) or train_set


def source_record(data_dir: str | Path | None) -> dict:
    """What names an entry besides its files: the data directory, the layout and fingerprint versions."""
    where = None if data_dir is None else str(Path(data_dir).resolve())
    return {"data_dir": where, "format": _FORMAT, "fingerprints": fingerprint_version}


def _stale(path: Path, current: dict, now: float) -> bool:
    """Whether no run reads the cache directory ``path`` again (see :func:`prune`)."""
    age = now - path.stat().st_mtime
    if path.name.startswith("."):  # write_entry's temporary directory
        return age > ABANDONED_AFTER_S
    if not (path / "records.json").is_file():  # every format has it: not an entry of ours
        return False
    try:
        source = json.loads((path / SOURCE).read_text())
    except FileNotFoundError:
        source = {}  # format 2 or earlier
    if source == current:  # this version's entry of this data directory, as its files were before
        return True
    return age > UNUSED_AFTER_DAYS * 86400


def prune(keep: Path, data_dir: str | Path) -> list[Path]:
    """Remove the cache directories beside ``keep`` that no run reads again; returns them.

    Those are: earlier versions of ``data_dir`` written by this version of the suite (a file changed
    since: its signature is never computed again), entries unused for ``UNUSED_AFTER_DAYS`` (their
    reads touch them), and temporary directories older than ``ABANDONED_AFTER_S``. Another
    checkout's entry of the same data is kept while it is used: it is named by other versions.
    """
    current, now, removed = source_record(data_dir), time.time(), []
    for path in sorted(keep.parent.iterdir()):
        try:
            ours = path != keep and _OURS.fullmatch(path.name) is not None and path.is_dir()
            stale = ours and _stale(path, current, now)
        except (OSError, ValueError):
            continue
        if stale:
            _remove(path)
            with contextlib.suppress(OSError):  # its decoding lock (:func:`_turn`)
                _lock_path(path).unlink(missing_ok=True)
            removed.append(path)
    return removed

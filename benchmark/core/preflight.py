"""Checks before hours of training: the results directory exists or can be created, takes a file,
and has room. Each is found before the first run, so each is NerveBenchError (exit 2), like a GPU
recipe on a box without a GPU; a disk that fills up once work has begun is a runtime OSError (exit 1).

A run that fails for want of space (a full disk or an exhausted quota, :func:`out_of_space`) stops
the grid with :class:`OutOfSpace`: every later run would fail the same way, each after training
until its first checkpoint write (an epoch or more of GPU time apiece), with a FAILED line each.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from benchmark.core.files import file_in_the_way, nearest_existing
from datamodules.errors import NerveBenchError

MIN_FREE_ENV = "NERVE_BENCH_MIN_FREE_GB"
DEFAULT_MIN_FREE_GB = 1.0


def gigabytes(text: str) -> float | None:
    """``text`` as a finite number of GB >= 0 (``--min-free-gb``, ``$NERVE_BENCH_MIN_FREE_GB``), or
    None: not -5, nan or inf."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0 <= value < math.inf else None


def min_free_gb_default() -> float:
    """``$NERVE_BENCH_MIN_FREE_GB``, else 1 GB: room for checkpoints and summaries of a few runs."""
    text = os.environ.get(MIN_FREE_ENV, "").strip()
    value = gigabytes(text) if text else DEFAULT_MIN_FREE_GB
    if value is None:
        raise NerveBenchError(f"{MIN_FREE_ENV}={text!r}: expected a number of GB >= 0")
    return value


def _probe(directory: Path) -> None:
    """Create, write, fsync and remove a file: what every run will do, tried before hours of training."""
    fd, name = tempfile.mkstemp(prefix=".write-probe.", dir=directory)
    try:
        os.write(fd, b"nerve-bench write probe\n")
        os.fsync(fd)
    finally:
        os.close(fd)
        os.unlink(name)


# A finished run keeps best.ckpt (fp32 weights: bf16-mixed trains fp32 master weights), its summary
# (~0.3 MB of per-image rows on the Kaggle set) and overlays.npz (downsampled, compressed: <1 MB).
WEIGHT_BYTES = 4
RUN_FILES_BYTES = 2_000_000
# The run in flight also holds last.ckpt: the weights and AdamW's two moments, twice while a write
# replaces the previous one (temporary file, then rename).
RESUME_BYTES = 2 * 3 * WEIGHT_BYTES


def grid_need_bytes(values: list[int], in_flight: int = 1, scored_again: Sequence[int] = ()) -> int:
    """What the runs left write, given each one's stored values (parameters and buffers): every one
    keeps best.ckpt, summary and overlays, and each of the ``in_flight`` largest that train needs
    room for its resume checkpoint while it trains (deleted when it finishes). The Ray executor
    trains several at once: 0.59 GB more per ResNet-34 U-Net in flight. The runs ``scored_again``
    from a finished training (``benchmark.training.finished``) train nothing: no resume checkpoint."""
    largest = sorted(values, reverse=True)[: max(in_flight, 1)]
    stored = sum(WEIGHT_BYTES * v + RUN_FILES_BYTES for v in [*values, *scored_again])
    return stored + RESUME_BYTES * sum(largest)


def check_room(
    results_dir: Path,
    min_free_gb: float | None,
    values_left: list[int],
    in_flight: int = 1,
    held_bytes: int = 0,
    scored_again: Sequence[int] = (),
    probe: bool = True,
) -> None:
    """:func:`check_results_dir` for a grid whose runs left store ``values_left`` values each (and
    those only ``scored_again``, :func:`grid_need_bytes`), up to ``in_flight`` at a time, and already
    hold ``held_bytes`` of checkpoints: the floor is ``min_free_gb`` (the flag), else
    ``$NERVE_BENCH_MIN_FREE_GB``, else 1 GB and the grid's estimate; a floor the user gave decides
    alone (the estimate may not know a plugin's files)."""
    decided = min_free_gb is not None or bool(os.environ.get(MIN_FREE_ENV, "").strip())
    floor = min_free_gb if min_free_gb is not None else min_free_gb_default()
    need = grid_need_bytes(values_left, in_flight, scored_again)
    need = 0 if decided else max(need - held_bytes, 0)
    check_results_dir(results_dir, floor, need, len(values_left) + len(scored_again), in_flight, probe)


def free_bytes(path: Path) -> int:
    """Free space where ``path`` is or would be created (its nearest existing parent)."""
    return shutil.disk_usage(nearest_existing(path)).free


def _writable(results_dir: Path, probe: bool) -> None:
    try:
        if not probe:  # what mkdir and a write would meet: a file on the way, else the permission bits
            if file_in_the_way(results_dir) is not None:
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
            there = nearest_existing(results_dir)
            if os.statvfs(there).f_flag & os.ST_RDONLY:  # as a write would say: not "Permission denied"
                raise OSError(errno.EROFS, os.strerror(errno.EROFS))
            if not os.access(there, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
            return
        results_dir.mkdir(parents=True, exist_ok=True)
        _probe(results_dir)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise NerveBenchError(f"{results_dir}: no space left on device") from None
        raise NerveBenchError(
            f"{results_dir}: results directory is not writable ({exc.strerror or exc})"
        ) from None


def check_results_dir(
    results_dir: Path,
    min_free_gb: float,
    need_bytes: int = 0,
    runs: int = 0,
    in_flight: int = 1,
    probe: bool = True,
) -> None:
    """Check that ``results_dir`` exists or can be created, is writable and has ``min_free_gb`` free,
    and room for the ``need_bytes`` (:func:`grid_need_bytes`) of the ``runs`` left. Without ``probe``
    (``run --dry-run``) nothing is created: the permission bits of it, or of its nearest existing
    parent, stand in for a written file.

    Any problem is NerveBenchError naming the path (exit 2): nothing has started yet.
    """
    if results_dir.exists() and not results_dir.is_dir():
        raise NerveBenchError(f"{results_dir}: results directory is a file, not a directory")
    runs_dir = results_dir / "runs"  # every run's directory goes there: a file in its place fails each
    if (runs_dir.exists() or runs_dir.is_symlink()) and not runs_dir.is_dir():
        raise NerveBenchError(f"{runs_dir}: not a directory (each run's directory goes there); move it away")
    _writable(results_dir, probe)
    free = free_bytes(results_dir)
    if free < min_free_gb * 1e9:
        raise NerveBenchError(
            f"{results_dir}: only {free / 1e9:.2f} GB free, need {min_free_gb:g} GB "
            f"(--min-free-gb, ${MIN_FREE_ENV})"
        )
    if free < need_bytes:
        flying = "the run in flight" if in_flight <= 1 else f"each of the {in_flight} runs in flight"
        raise NerveBenchError(
            f"{results_dir}: only {free / 1e9:.2f} GB free, but the {runs} run(s) left need about "
            f"{need_bytes / 1e9:.2f} GB (best.ckpt, summary and overlays each, and room for the resume "
            f"checkpoint of {flying}); free space, use another --results-dir, or set "
            f"--min-free-gb (or ${MIN_FREE_ENV}) to decide yourself"
        )


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class OutOfSpace(OSError):
    """The grid stopped because a run ran out of space; ``str`` is the one line the command prints."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def out_of_space(exc: BaseException) -> OSError | None:
    """The out-of-space OSError that ``exc`` is or was raised from (Lightning and Ray re-raise), if any."""
    seen: BaseException | None = exc
    for _ in range(16):  # a chain is short; a cycle must not hang the grid
        if seen is None:
            return None
        if isinstance(seen, OSError) and seen.errno in NO_SPACE:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def stop_for_space(where: str, run: str) -> OutOfSpace:
    """The error that ends the grid after ``run`` failed with ``where`` (``PATH: reason``)."""
    return OutOfSpace(
        errno.ENOSPC,
        f"{where} (while {run} ran); the grid stops here, since every later run would fail the same "
        "way: the finished runs and the checkpoints written so far are kept; free space, then re-run "
        "the same command",
    )


@contextlib.contextmanager
def removed_if_refused(results_dir: Path) -> Iterator[None]:
    """The directories this block creates for ``results_dir`` (it and missing parents) removed again
    when the block raises and they are still empty: a refused grid (its data, a Ray cluster without
    GPUs) left an empty results directory behind. A directory holding anything is kept."""
    made = [p for p in (results_dir, *results_dir.parents) if not p.exists()]
    try:
        yield
    except BaseException:
        for path in made:  # deepest first; rmdir removes only an empty directory
            with contextlib.suppress(OSError):
                path.rmdir()
        raise

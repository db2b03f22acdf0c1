"""Atomic, durable file writes: a reader sees the old file or the new one, never a half-written one.

Every result file of the suite (summaries, leaderboards, plots, checkpoints, predictions) goes
through :func:`atomic_write` or :func:`atomic_path`: the bytes go to a unique temporary name in the
same directory (same file system, so the rename is atomic), are flushed and fsynced, and then
``os.replace`` puts them in place; the directory is fsynced too so the rename survives a power cut.
On any failure (a full disk, a kill between write and rename) the temporary file is removed and the
previous file is left untouched. :func:`os_error_line` is the one line a failed file operation
becomes; :func:`remove_older_than` prunes what killed writers left.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (best effort: some file systems refuse O_RDONLY dirs)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# Checks a finished file must pass before it is renamed into place: a run whose lock another process
# took over writes nothing more into it (:class:`benchmark.core.lock.RunLock` adds and removes one).
WRITE_GUARDS: list[Callable[[Path], None]] = []


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is fsynced and renamed onto ``path``.

    For writers that want a file name rather than bytes (``torch.save``, ``savefig``; give ``np.savez``
    an open handle on it, since it appends ".npz" to a name).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:  # pathlib says "File exists" of a file where its folder belongs
        raise NotADirectoryError(errno.ENOTDIR, "a file, not a folder", exc.filename) from exc
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # a read-only directory: name the file the user asked for, not the temp name
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are meant to be shared
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        for guard in tuple(WRITE_GUARDS):
            guard(path)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename is None or str(exc.filename) == str(tmp):  # name the file the user asked for
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: os.umask can only be read by setting it, and doing that on every write would
# briefly give files created by other threads (W&B, loggers) world-writable permissions.
_UMASK = _umask()


def check_output_file(path: str | Path, flag: str, expected: str, reads: Iterable[str | Path] = ()) -> None:
    """Before the work (exit 2): ``path`` can become a file: it is not a folder, no file stands where
    one of its folders goes, it is none of the files the command ``reads`` (a folder there: no file
    directly in it, as the data's image folders), and its folder can be written; found at the write,
    the work was done and lost (exit 1), or an input overwritten."""
    from datamodules.errors import NerveBenchError

    path = Path(path)
    if path.is_dir():
        raise NerveBenchError(f"{path}: {flag} is a directory; expected {expected}")
    blocked = file_in_the_way(path.parent)
    if blocked is not None:
        raise NerveBenchError(f"{blocked}: a file, not a folder; {flag} {path} needs a folder there")
    sources = [Path(source) for source in reads]
    if any(_same_file(path, source) for source in sources if not source.is_dir()):
        raise NerveBenchError(f"{path}: {flag} is a file this command reads; give another path")
    folder = next((s for s in sources if s.is_dir() and _same_file(path.parent, s)), None)
    if folder is not None:
        raise NerveBenchError(f"{path}: {flag} is in {folder}, which this command reads; give another path")
    check_writable(path.parent, flag, path)


def check_output_dir(path: str | Path, flag: str, expected: str) -> None:
    """Before the work (exit 2): ``path`` can be or become a folder: neither it nor one of its
    parents is a file, and it can be written; found at the first write, the work was done and lost
    (exit 1)."""
    from datamodules.errors import NerveBenchError

    path = Path(path)
    blocked = file_in_the_way(path)
    if blocked == path:
        raise NerveBenchError(f"{path}: {flag} is a file; expected {expected}")
    if blocked is not None:
        raise NerveBenchError(f"{blocked}: a file, not a folder; {flag} {path} needs a folder there")
    check_writable(path, flag, path)


def check_writable(folder: Path, flag: str, path: Path) -> None:
    """A file created and removed in ``folder``, or the nearest of its parents that exists (the
    command creates the rest): a read-only file system or a folder without write permission is one
    line before the work (exit 2), not an error after it."""
    from datamodules.errors import NerveBenchError

    at = nearest_existing(folder)
    try:
        # Unnamed where the file system allows (O_TMPFILE): an interrupt leaves no probe file behind.
        with tempfile.TemporaryFile(prefix=".nerve-bench-probe-", dir=at):
            pass
    except OSError as exc:
        raise NerveBenchError(f"{at}: cannot write there ({exc.strerror}); {flag} {path} needs it") from None


def _same_file(path: Path, source: Path) -> bool:
    """Whether writing ``path`` would replace ``source`` (one file by two names, or one name)."""
    try:
        return path.samefile(source)
    except OSError:  # one of them does not exist (yet): then only the same name is the same file
        return path.resolve() == source.resolve()


def nearest_existing(path: str | Path) -> Path:
    """``path``, or the nearest of its parents that exists."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def file_in_the_way(folder: str | Path) -> Path | None:
    """The file that stands where ``folder`` or one of its parents goes, if any."""
    found = nearest_existing(folder)
    return None if found.is_dir() else found


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically and durably; returns ``path``."""
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(payload)
    return path


def os_error_line(exc: OSError) -> str:
    """``PATH: reason`` in one line (no traceback), naming both paths of a failed rename."""
    reason = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
    if exc.filename is None:
        return reason
    where = f"{exc.filename} -> {exc.filename2}" if exc.filename2 is not None else f"{exc.filename}"
    return f"{where}: {reason}"


def remove_older_than(paths: Iterable[Path], seconds: float) -> None:
    """Delete each of ``paths`` not modified for ``seconds`` (what killed or ended writers left
    behind); one that cannot be read or deleted is left."""
    now = time.time()
    for path in paths:
        with contextlib.suppress(OSError):
            if now - path.stat().st_mtime > seconds:
                path.unlink()

"""Run locks: at most one process trains a run directory at a time, on one machine or many sharing a disk.

A run is claimed by creating ``<run_dir>/run.lock`` with ``O_CREAT | O_EXCL`` (atomic on local file
systems and on NFSv3+), holding JSON ``{"host", "pid", "start", "heartbeat", "token", "pids"}``. While the
lock is held a daemon thread rewrites it in place every ``heartbeat_s`` seconds (``pwrite`` on the
open descriptor: the file keeps its inode, so a holder never overwrites another process's lock).

A lock is *stale*, and may be taken over, when its pid is gone on this host, in this pid namespace
(``pids``: containers on one node may share a hostname), or its heartbeat is older than
``stale_after_s`` (other hosts, hung machines; the heartbeat is the holder's clock, so nodes must
agree on the time to well within that). Takeovers are serialised by a second
``O_EXCL`` file, ``run.lock.takeover``: its holder re-reads the lock and deletes it only if it is still
the stale file that was judged, then every contender competes through ``O_EXCL`` again, so racing
takeovers end with exactly one holder and a lock claimed meanwhile is never deleted.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from benchmark.core.files import WRITE_GUARDS
from datamodules.errors import NerveBenchError

LOCK_NAME = "run.lock"
OWNER_ENV = "NERVE_BENCH_LOCK_OWNER"  # host:pid of the DDP rank 0 that claims runs for its ranks
STALE_ENV = "NERVE_BENCH_LOCK_STALE_S"
DEFAULT_STALE_AFTER_S = 300.0  # five minutes without a heartbeat (a heartbeat comes every 30 s)
_SIZE = 512  # fixed size of the lock content: heartbeats rewrite it in place without truncating
_TRIES = 20
_MUTEX_STALE_S = 30.0  # a takeover takes milliseconds; a mutex this old belongs to a dead taker


@dataclass(frozen=True)
class LockInfo:
    host: str
    pid: int
    start: float
    heartbeat: float
    token: str
    pids: str = ""  # the holder's pid space (:func:`pid_space`); "" in locks written before it

    def describe(self, now: float | None = None) -> str:
        age = (time.time() if now is None else now) - self.heartbeat
        if not self.token:  # _parse's unreadable lock: "?:0" named no one
            return f"an unreadable lock file (written {age:.0f} s ago; judged stale after its age)"
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.start))
        return f"{self.host}:{self.pid} (started {started}, heartbeat {age:.0f} s ago)"


def pid_space() -> str:
    """This process's boot and pid namespace: two containers on one node can share a hostname
    (``--net=host``, ``hostNetwork``) but not their pids, and a live holder in the other one looked
    gone (its pid absent here), so its run was taken over and trained twice at once."""
    parts = []
    with contextlib.suppress(OSError):
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    with contextlib.suppress(OSError):
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    return "/".join(parts)


def stale_after_default() -> float:
    """``$NERVE_BENCH_LOCK_STALE_S`` seconds, else five minutes."""
    text = os.environ.get(STALE_ENV, "").strip()
    if not text:
        return DEFAULT_STALE_AFTER_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise NerveBenchError(f"{STALE_ENV}={text!r}: expected a number of seconds > 0")
    return value


def _parse(path: Path) -> LockInfo | None:
    """The lock at ``path``; None when it does not exist. An unreadable one (a claimer died between
    create and write) counts as held by an unknown process whose heartbeat is the file's mtime."""
    try:
        raw = path.read_bytes()
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return None
    try:
        data = json.loads(raw.decode())
        return LockInfo(
            str(data["host"]),
            int(data["pid"]),
            float(data["start"]),
            float(data["heartbeat"]),
            str(data["token"]),
            str(data.get("pids", "")),
        )
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return LockInfo("?", 0, mtime, mtime, "")


def read_lock(run_dir: str | Path) -> LockInfo | None:
    """Who holds ``run_dir`` (None when nobody does)."""
    return _parse(Path(run_dir) / LOCK_NAME)


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return True  # unknown holder: only the heartbeat can tell
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def gone_here(host: str, pid: int, pids: str) -> bool:
    """Whether process ``pid`` of ``host`` is known to be gone: it lived on this host, in this pid space
    (``pids``; "" in records written before it: the host decides), and its pid is absent."""
    return host == socket.gethostname() and (not pids or pids == pid_space()) and not pid_alive(pid)


def stale_reason(info: LockInfo, stale_after_s: float, now: float | None = None) -> str | None:
    """Why ``info`` may be taken over, or None while its holder counts as alive. Its pid is asked
    only in the pid space it lives in (an older lock's: on its host); elsewhere the heartbeat decides."""
    if gone_here(info.host, info.pid, info.pids):
        return f"holder {info.host}:{info.pid} is gone"
    age = (time.time() if now is None else now) - info.heartbeat
    if age > stale_after_s and not info.token:  # _parse's unreadable lock
        return f"an unreadable lock file, written {age:.0f} s ago (limit {stale_after_s:.0f} s)"
    if age > stale_after_s:
        return f"no heartbeat from {info.host}:{info.pid} for {age:.0f} s (limit {stale_after_s:.0f} s)"
    return None


def is_held(run_dir: str | Path, stale_after_s: float | None = None) -> LockInfo | None:
    """The live holder of ``run_dir``, or None when it is free or its lock is stale."""
    info = read_lock(run_dir)
    limit = stale_after_default() if stale_after_s is None else stale_after_s
    return info if info is not None and stale_reason(info, limit) is None else None


class LockLost(NerveBenchError):
    """A write into a run whose lock another process has taken over."""


def lost_behind(exc: BaseException) -> LockLost | None:
    """The refused write (:class:`LockLost`) behind ``exc`` (Lightning may raise another error while
    handling it), or None."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None or isinstance(seen, LockLost):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class RunLock:
    """A held run lock; ``release()`` (or leaving the ``with`` block) stops the heartbeat and deletes it."""

    def __init__(self, path: Path, fd: int, info: LockInfo, heartbeat_s: float) -> None:
        self.path = path
        self.info = info
        self.took_over: str | None = None  # the stale lock's reason, when this one replaced it
        self._fd, self._ino = fd, os.fstat(fd).st_ino
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(heartbeat_s,), daemon=True)
        self._thread.start()
        WRITE_GUARDS.append(self.guard)

    def guard(self, path: Path) -> None:
        """LockLost for a file about to be written into this lock's run once another process took the
        lock over (it judged this one stale: a process paused past the stale age, a suspended VM, a
        hung file system), so the two never both write the run's checkpoints and summary."""
        run_dir = Path(os.path.abspath(self.path.parent))  # a relative and an absolute name alike
        if run_dir in Path(os.path.abspath(path)).parents and self.lost:
            raise LockLost(
                f"{self.path}: taken over by another process while this one trained (its heartbeat was "
                f"judged stale); it stops without writing {Path(path).name}: the other one finishes the run"
            )

    def _write(self, info: LockInfo) -> None:
        os.pwrite(self._fd, json.dumps(asdict(info), sort_keys=True).encode().ljust(_SIZE), 0)
        os.fsync(self._fd)

    def _beat(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.info = replace(self.info, heartbeat=time.time())
            with contextlib.suppress(OSError):  # a full disk must not kill training; staleness shows it
                self._write(self.info)

    @property
    def lost(self) -> bool:
        """True when ``run.lock`` is no longer this lock's file (a takeover judged it stale)."""
        try:
            return os.stat(self.path).st_ino != self._ino
        except FileNotFoundError:
            return True

    def release(self) -> None:
        if self._fd < 0:
            return
        with contextlib.suppress(ValueError):
            WRITE_GUARDS.remove(self.guard)
        self._stop.set()
        self._thread.join()
        try:
            if not self.lost:
                self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _create(path: Path, heartbeat_s: float) -> RunLock | None:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return None
    now = time.time()
    info = LockInfo(socket.gethostname(), os.getpid(), now, now, secrets.token_hex(8), pid_space())
    try:
        os.pwrite(fd, json.dumps(asdict(info), sort_keys=True).encode().ljust(_SIZE), 0)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    return RunLock(path, fd, info, heartbeat_s)


def _clear_dead_mutex(mutex: Path) -> None:
    """Remove a takeover mutex whose taker died inside the (milliseconds long) critical section."""
    info = _parse(mutex)
    if info is not None and stale_reason(info, _MUTEX_STALE_S):
        mutex.unlink(missing_ok=True)


def _remove_stale(path: Path, judged: LockInfo, stale_after_s: float) -> bool:
    """Delete the stale lock ``judged`` under the takeover mutex ``run.lock.takeover``.

    Returns False when another process is taking over right now (the caller retries). Under the
    mutex the lock is re-read, and deleted only if it is still the stale file that was judged, so a
    lock claimed meanwhile by a faster racer is never removed.
    """
    mutex = path.with_name(f"{path.name}.takeover")
    try:
        fd = os.open(mutex, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        _clear_dead_mutex(mutex)
        return False
    try:
        now = time.time()
        info = LockInfo(socket.gethostname(), os.getpid(), now, now, secrets.token_hex(8), pid_space())
        os.write(fd, json.dumps(asdict(info)).encode())
        current = _parse(path)
        if current is not None and current.token == judged.token and stale_reason(current, stale_after_s):
            path.unlink(missing_ok=True)
        return True
    finally:
        os.close(fd)
        mutex.unlink(missing_ok=True)


def claim(
    run_dir: str | Path, stale_after_s: float | None = None, heartbeat_s: float | None = None
) -> RunLock | None:
    """Claim ``run_dir`` (created if needed); None when another live process holds it.

    ``stale_after_s`` defaults to ``$NERVE_BENCH_LOCK_STALE_S`` or five minutes; ``heartbeat_s`` to
    a quarter of it, at most 30 s. OSError (read-only or full disk) propagates to the caller.
    """
    limit = stale_after_default() if stale_after_s is None else stale_after_s
    beat = min(30.0, limit / 4) if heartbeat_s is None else heartbeat_s
    path = Path(run_dir) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    reason = None
    for _ in range(_TRIES):
        lock = _create(path, beat)
        if lock is not None:
            lock.took_over = reason
            return lock
        info = _parse(path)
        if info is None:
            continue  # released between our create and read
        reason = stale_reason(info, limit)
        if reason is None:
            return None
        if not _remove_stale(path, info, limit):
            time.sleep(0.05)  # another process is taking over: its new lock appears within milliseconds
    return None


def owner_id() -> str:
    """``host:pid`` of this process, as a lock records it."""
    return f"{socket.gethostname()}:{os.getpid()}"


def follow(
    run_dir: str | Path,
    owner: str,
    later: Sequence[str | Path],
    done: Callable[[], bool],
    ended: Callable[[], bool] = lambda: False,
    poll_s: float = 0.2,
) -> bool:
    """For DDP ranks > 0, which must make rank 0's decision: True once ``owner`` (rank 0's
    ``host:pid``) holds ``run_dir``; False once rank 0 cannot train it here: the run is ``done()``,
    rank 0 holds one of the ``later`` runs, or its grid loop has ``ended()`` (which raises when rank 0
    died: :func:`benchmark.core.rank0.ended`).

    A run that another process holds is not judged here: rank 0 judges whether that holder is stale
    (and takes the run over) or alive (and moves on), and a rank judging it too, a moment apart, could
    decide the other way at the limit (a heartbeat 299.5 s old here, 301 s old there)."""
    while True:
        if done():
            return False
        info = read_lock(run_dir)
        if info is not None and f"{info.host}:{info.pid}" == owner:
            return True
        if any((i := read_lock(d)) is not None and f"{i.host}:{i.pid}" == owner for d in later):
            return False
        if ended():
            return False
        time.sleep(poll_s)

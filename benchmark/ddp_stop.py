"""Ending a DDP job cleanly when a run fails on one of its ranks.

Under DDP every rank executes the grid loop (:mod:`benchmark.runner`). A run that raises on one
rank leaves the others inside a collective (a gradient all-reduce, a barrier) that only the failed
rank could complete: going on with the next run, they would wait for the NCCL timeout, holding their
GPUs. So under DDP the first run failure ends the job:

- rank 0 failing: it records the traceback in the run's ``error.txt`` and raises
  :class:`GridStopped`; the CLI prints it and kills the ranks it launched (Lightning's launcher
  makes them its children), exit status 1;
- a rank > 0 failing: it records ``error.txt`` and a note ``RESULTS/runs/.ddp-failed-<rank>-<pid>.json``
  naming its job. Rank 0 watches for that note from a thread (its main thread may be blocked in a
  collective, which releases the GIL): it prints the line, kills the launched ranks, releases the run
  lock and exits with status 1. Meanwhile the failed rank waits to be stopped, so that Lightning's
  child observer does not SIGKILL rank 0 before the line is printed; if nothing stops it within
  ``WAIT_S`` (rank 0 is gone), it stops itself.

Finished runs stay on disk: the next invocation skips them and resumes the failed run from its
``last.ckpt``. Under torchrun or srun the launcher ends the other ranks when one exits non-zero
(``srun --kill-on-bad-exit=1``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmark.core.files import atomic_write
from benchmark.core.lock import OWNER_ENV
from benchmark.core.rank0 import GridStopped

NOTE_PREFIX = ".ddp-failed-"
POLL_S = 0.5
WAIT_S = 120.0  # a failed rank > 0 waits this long for rank 0 to end the job
CLOCK_SKEW_S = 300.0  # nodes' clocks may differ; a note older than the watcher by more is another job's


def job_keys() -> set[str]:
    """How this process names its DDP job: rank 0's ``host:pid`` (passed on by Lightning's launcher)
    and the rendezvous address (torchrun, SLURM); ranks of one job share at least one."""
    keys = {os.environ.get(OWNER_ENV, "")}
    if os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT"):
        keys.add(f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}")
    return keys - {""}


def stop_line(run: str, rank: int, world: int, line: str, error_txt: Path) -> str:
    return (
        f"{run} failed on DDP rank {rank} of {world}: {line} (traceback in {error_txt}); a DDP job cannot "
        "go on without one of its ranks, so the grid stops here: finished runs are kept, re-run the same "
        "command to resume"
    )


def write_note(runs: Path, rank: int, message: str) -> Path:
    """The failed rank's note for rank 0 (see the module docstring)."""
    note = runs / f"{NOTE_PREFIX}{rank}-{os.getpid()}.json"
    atomic_write(note, json.dumps({"jobs": sorted(job_keys()), "time": time.time(), "message": message}))
    return note


def pending_notes(runs: Path, since: float) -> list[dict[str, Any]]:
    found = []
    for path in sorted(runs.glob(f"{NOTE_PREFIX}*.json")):
        try:
            note = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being renamed into place, or not ours
        fresh = note.get("time", 0) >= since - CLOCK_SKEW_S if isinstance(note, dict) else False
        if fresh and set(note.get("jobs") or []) & job_keys():
            found.append({**note, "path": path})
    return found


def _proc_children() -> list[int]:
    """Processes this one launched as DDP ranks: its children whose environment names its job."""
    me, owner = os.getpid(), os.environ.get(OWNER_ENV, "")
    ranks = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0") if ppid == me else []
        except (OSError, ValueError, IndexError):
            continue
        if (
            owner
            and f"{OWNER_ENV}={owner}".encode() in env
            and any(v.startswith(b"LOCAL_RANK=") for v in env)
        ):
            ranks.append(int(entry.name))
    return ranks


def kill_launched_ranks() -> None:
    """SIGKILL the ranks this process launched: inside a collective nothing else ends them."""
    for pid in _proc_children():
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


class _Watcher:
    """Rank 0's thread that ends the job when another rank leaves a failure note; it runs while a DDP
    run trains (:meth:`start` / :meth:`stop` around it)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started: float | None = None
        self.in_flight: Any = None  # the RunLock rank 0 holds now, released before exiting
        self.stopping = False
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, runs: Path) -> None:
        with self.lock:
            if self._thread is None:
                self.started, self.stopping, self._done = time.time(), False, threading.Event()
                self._thread = threading.Thread(target=self._watch, args=(runs, self._done), daemon=True)
                self._thread.start()

    def stop(self) -> None:
        with self.lock:
            thread, self._thread = self._thread, None
            self._done.set()
        if thread is not None:
            thread.join(timeout=2 * POLL_S)

    def _watch(self, runs: Path, done: threading.Event) -> None:
        while not done.wait(POLL_S):
            notes = pending_notes(runs, self.started or 0.0)
            if notes:
                self.exit(notes[0]["message"], notes[0]["path"])

    def claim_exit(self) -> bool:
        with self.lock:
            first, self.stopping = not self.stopping, True
        return first

    def exit(self, message: str, note: Path | None = None) -> None:
        """Print the line, stop the job's other ranks, release the run and leave (status 1)."""
        if not self.claim_exit():
            return
        sys.stdout.flush()
        print(f"error: {message}", file=sys.stderr, flush=True)
        kill_launched_ranks()
        with contextlib.suppress(Exception):
            if self.in_flight is not None:
                self.in_flight.release()
        if note is not None:
            note.unlink(missing_ok=True)
        os._exit(1)


WATCHER = _Watcher()


def rank0_failed(runs: Path, message: str) -> GridStopped:
    """Rank 0's own run failed: the exception that ends the command (the CLI prints it, then calls
    :func:`end_job`). Another rank's note wins: it is the cause when rank 0 only saw its peer vanish."""
    notes = pending_notes(runs, WATCHER.started or 0.0)
    WATCHER.claim_exit()
    for note in notes:
        note["path"].unlink(missing_ok=True)
    return GridStopped(notes[0]["message"] if notes else message)


def end_job() -> None:
    """After rank 0 printed why the job stops: kill the ranks it launched (stuck in a collective) and
    leave at once, before Lightning's child observer sees them die and SIGKILLs this process too."""
    if _proc_children():
        kill_launched_ranks()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)


def follower_failed(runs: Path, rank: int, message: str) -> GridStopped:
    """A rank > 0 failed: leave the note for rank 0, wait to be stopped, else stop by itself."""
    note = write_note(runs, rank, message)
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline and note.exists():
        time.sleep(POLL_S)
    if not note.exists():  # rank 0 took the note and printed the line (torchrun: it did not kill us)
        os._exit(1)
    note.unlink(missing_ok=True)
    return GridStopped(message)

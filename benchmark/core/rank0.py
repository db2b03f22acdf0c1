"""Rank 0's record of a DDP grid, for the ranks that cannot inherit its identity.

Under DDP every rank runs the grid loop; rank 0 claims each run and ranks > 0 make its decisions
by watching its run locks (:func:`benchmark.core.lock.follow`), which needs rank 0's ``host:pid``.
Lightning's own launcher starts ranks > 0 from rank 0's process, so they inherit it
(``lock.OWNER_ENV``). Ranks that an outside launcher starts beside rank 0 (srun, torchrun) inherit
nothing from it: they trained every open run, so one skipped by rank 0 (held by another job,
finished meanwhile) was trained by them alone, in one process group with rank 0's next run.

So rank 0 writes ``<results>/.grid/<launch>.json`` (its ``host:pid``), named by what every rank of
one launch shares: the SLURM job, step and restart count, or torchrun's run id, rendezvous address
and restart count; ranks it starts itself get the name in ``GRID_ENV``. The record is marked ended
when rank 0's grid loop ends, which tells a rank waiting for a run that rank 0 never claimed to stop
waiting.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmark.core.files import atomic_write, remove_older_than
from benchmark.core.lock import OWNER_ENV, gone_here, owner_id, pid_space, stale_after_default
from benchmark.core.ranks import global_rank
from datamodules.errors import NerveBenchError


class GridStopped(RuntimeError):
    """A DDP run failed on one rank, or rank 0 died: the job ends here (exit status 1), finished runs
    are kept (``benchmark.ddp_stop`` raises it for failed runs)."""


class OwnerChanged(Exception):
    """This launch's record now names another rank 0 (``owner``) than the one this rank read, which
    :func:`_this_launch` should have ruled out (a clock far off between nodes): the rank follows the
    new one, once (:func:`adopt`); it used to take the change for the end of the grid and skip every
    run while rank 0 trained."""

    def __init__(self, owner: str) -> None:
        super().__init__(owner)
        self.owner = owner


GRID_DIR = ".grid"
GRID_ENV = "NERVE_BENCH_GRID"  # the record's name, for the ranks Lightning's launcher starts
BEAT_S = 30.0  # rank 0 rewrites its record this often; a rank judges it gone by lock's stale limit
# The ranks of one launch start together (srun starts every task at once, torchrun after the
# rendezvous); rank 0 writes its record after its data checks. A rank started more than this after
# its rank 0 (a container slow to start on one node) waits WAIT_S and stops.
SKEW_S = 300.0
KEEP_S = 7 * 86400.0  # records not rewritten for a week (ended or killed launches') are pruned
WAIT_S = 1800.0  # rank 0 decodes and checks the data first; NCCL's own timeout is 30 minutes too
_SLURM = ("SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_RESTART_COUNT")
_ELASTIC = ("TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT")


def launch_key() -> str | None:
    """What every rank of this launch shares and the next launch does not, as Lightning detects the
    launcher (None: Lightning's own): SLURM's job, step and restart count; torchrun's run id,
    address and restart count (``check_launcher`` refuses a static rendezvous's run id "none")."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    if SLURMEnvironment.detect():
        parts = ["slurm", *(os.environ.get(k) or "0" for k in _SLURM)]
    elif TorchElasticEnvironment.detect():
        parts = ["elastic", *(os.environ.get(k) or "0" for k in _ELASTIC)]
    else:
        return None
    return _file_name("-".join(parts))


def _file_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


@dataclass
class Record:
    """Rank 0's record while its grid loop runs: rewritten every ``BEAT_S`` by a daemon thread."""

    path: Path
    body: dict
    done: threading.Event = field(default_factory=threading.Event)
    writing: threading.Lock = field(default_factory=threading.Lock)  # a beat never follows the end

    def beat(self) -> None:
        while not self.done.wait(BEAT_S):
            with self.writing:
                if self.done.is_set():
                    return
                with contextlib.suppress(OSError):  # a missed beat is only late; BEAT_S << stale limit
                    atomic_write(self.path, json.dumps({**self.body, "beat": time.time()}))


def start(results_dir: Path, ddp: bool, follows: bool) -> Record | None:
    """Before the grid loop. Rank 0: its ``host:pid`` in ``OWNER_ENV`` (the ranks Lightning starts
    inherit it) and, for a ``ddp`` grid, in its record (for those srun or torchrun start); returns the
    record. A rank > 0 that ``follows`` runs: rank 0's identity (:func:`follower_owner`)."""
    if global_rank() == 0:
        os.environ[OWNER_ENV] = owner_id()
        return publish(results_dir, os.environ[OWNER_ENV]) if ddp else None
    if follows:
        follower_owner(results_dir)
    return None


def record_path(results_dir: Path, key: str) -> Path:
    return Path(results_dir) / GRID_DIR / f"{key}.json"


def publish(results_dir: Path, owner: str) -> Record:
    """Rank 0, before its first run: its ``owner`` (``host:pid``) under this launch's name, which
    ``GRID_ENV`` passes to the ranks Lightning starts, kept fresh until :func:`withdraw`."""
    key = os.environ.get(GRID_ENV) or launch_key() or _file_name(f"local-{owner}")
    os.environ[GRID_ENV] = key
    path = record_path(results_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_older_than(path.parent.glob("*.json"), KEEP_S)  # earlier launches' (a live one beats)
    now = time.time()
    record = Record(path, {"owner": owner, "pids": pid_space(), "start": now, "ended": False})
    atomic_write(path, json.dumps({**record.body, "beat": now}))
    threading.Thread(target=record.beat, name="grid-record", daemon=True).start()
    return record


def withdraw(record: Record | None) -> None:
    """Rank 0's grid loop has ended: ranks waiting for it to claim a run stop waiting. The record
    stays (marked), so a rank that reaches its loop only now still learns rank 0's decision."""
    if record is None:
        return
    with record.writing:  # after a beat in flight, never before it: it would mark the record live again
        record.done.set()
        with contextlib.suppress(OSError):
            atomic_write(record.path, json.dumps({**record.body, "beat": time.time(), "ended": True}))


def _read(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("owner"), str) else None


def follower_owner(results_dir: Path) -> str:
    """Rank 0's ``host:pid`` for a rank > 0: inherited from Lightning's launcher, else (srun,
    torchrun) read from rank 0's record of this launch; kept in ``OWNER_ENV`` (``ddp_stop`` reads it)."""
    owner = os.environ.get(OWNER_ENV) or wait_for_owner(results_dir)
    os.environ[OWNER_ENV] = owner
    return owner


def process_start() -> float:
    """When this process began, as the wall clock read then (Linux: /proc; elsewhere, when this
    module was imported, which is later: the safe side for :func:`_this_launch`)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        lines = Path("/proc/stat").read_text().splitlines()
        boot = next(int(line.split()[1]) for line in lines if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED
    return boot + 1.0 + ticks / os.sysconf("SC_CLK_TCK")  # + 1: btime is truncated to the second


_IMPORTED = time.time()


def _this_launch(record: dict, born: float) -> bool:
    """Whether ``record`` is this launch's rank 0's: written since this process began (``born``; this
    launch's rank 0 rewrites it every ``BEAT_S``, and ends it after this rank began), by a rank 0
    that started at most ``SKEW_S`` before it. A record name can be an earlier launch's: torchrun
    relaunched with the same ``--rdzv-id``, or two `benchmark run` in one srun step (one job, step
    and restart count); that rank 0, ended or killed, last wrote it before this process began, or,
    still scoring its last run, began long before."""
    return float(record.get("beat") or 0) >= born and float(record.get("start") or 0) >= born - SKEW_S


def wait_for_owner(
    results_dir: Path,
    wait_s: float | None = None,
    poll_s: float = 0.5,
    born: float | None = None,
) -> str:
    """A rank > 0 of an outside launcher: rank 0's ``host:pid`` from this launch's record
    (:func:`_this_launch`; ``born``: this process's start)."""
    key = os.environ.get(GRID_ENV) or launch_key()
    if key is None:
        raise NerveBenchError("a DDP rank > 0 without its rank 0's identity: start it with torchrun or srun")
    os.environ[GRID_ENV] = key
    born, wait_s = process_start() if born is None else born, WAIT_S if wait_s is None else wait_s
    path, deadline = record_path(results_dir, key), time.monotonic() + wait_s
    while time.monotonic() < deadline:
        record = _read(path)
        if record is not None and _this_launch(record, born):
            return record["owner"]
        time.sleep(poll_s)
    raise NerveBenchError(f"{path}: rank 0 of this launch wrote no record within {wait_s:.0f} s")


_ADOPTED: list[str] = []  # the rank 0 this process switched to on an OwnerChanged: one at most


def adopt(results_dir: Path, owner: str) -> None:
    """Follow ``owner``, the rank 0 this launch's record now names (:class:`OwnerChanged`), once: a
    second change means two launches rewrite one record, and neither rank 0 can be followed."""
    if _ADOPTED:
        path = record_path(results_dir, os.environ.get(GRID_ENV) or "?")
        raise GridStopped(
            f"{path}: names rank 0 {_ADOPTED[0]}, then {owner}: two launches share this name "
            "(give each torchrun its own --rdzv-id)"
        )
    _ADOPTED.append(owner)
    os.environ[OWNER_ENV] = owner


def ended(results_dir: Path, owner: str) -> bool:
    """Whether rank 0 (``owner``) has left its grid loop: its record says so, or is gone. OwnerChanged
    when it names another rank 0. GridStopped when rank 0 is dead: its record not rewritten within
    the lock stale limit, or its pid gone here (same host and pid space), so that a rank does not
    wait for it forever."""
    key = os.environ.get(GRID_ENV)
    record = None if key is None else _read(record_path(results_dir, key))
    if record is None or record.get("ended") is True:
        return key is not None
    if record["owner"] != owner:
        raise OwnerChanged(record["owner"])
    age, limit = time.time() - float(record.get("beat") or 0), stale_after_default()
    host, _, pid = owner.rpartition(":")
    if age > limit or pid.isdigit() and gone_here(host, int(pid), str(record.get("pids") or "")):
        why = f"its record not rewritten for {age:.0f} s" if age > limit else "its process is gone"
        raise GridStopped(f"rank 0 ({owner}) stopped without ending its grid: {why}")
    return False

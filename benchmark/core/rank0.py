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
import time
from pathlib import Path

from benchmark.core.files import atomic_write
from benchmark.core.lock import OWNER_ENV
from datamodules.errors import NerveBenchError

GRID_DIR = ".grid"
GRID_ENV = "NERVE_BENCH_GRID"  # the record's name, for the ranks Lightning's launcher starts
# A record written this long before a rank reached its grid loop is an earlier launch's (torchrun
# started by hand on each node: the nodes may start minutes apart, and rank 0 writes its record
# once it has checked the data, before any process group exists).
FRESH_S = 1800.0
KEEP_S = 7 * 86400.0  # ended launches' records are pruned after a week
WAIT_S = 1800.0  # rank 0 decodes and checks the data first; NCCL's own timeout is 30 minutes too
_SLURM = ("SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_RESTART_COUNT")
_ELASTIC = ("TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT")


def launch_key() -> str | None:
    """What every rank of this launch shares and the next launch does not (None: no outside
    launcher): SLURM's job, step and restart count; torchrun's run id, address and restart count."""
    env = os.environ
    if env.get("SLURM_JOB_ID"):
        parts = ["slurm", *(env.get(k) or "0" for k in _SLURM)]
    elif env.get("TORCHELASTIC_RUN_ID") or env.get("MASTER_ADDR"):
        parts = ["elastic", *(env.get(k) or "0" for k in _ELASTIC)]
    else:
        return None
    return re.sub(r"[^A-Za-z0-9._-]", "_", "-".join(parts))


def record_path(results_dir: Path, key: str) -> Path:
    return Path(results_dir) / GRID_DIR / f"{key}.json"


def publish(results_dir: Path, owner: str) -> Path:
    """Rank 0, before its first run: its ``owner`` (``host:pid``) under this launch's name, which
    ``GRID_ENV`` passes to the ranks Lightning starts. Returns the record's path (:func:`withdraw`)."""
    key = os.environ.get(GRID_ENV) or launch_key() or re.sub(r"[^A-Za-z0-9._-]", "_", f"local-{owner}")
    os.environ[GRID_ENV] = key
    path = record_path(results_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    for old in path.parent.glob("*.json"):  # earlier launches' records
        with contextlib.suppress(OSError):
            if time.time() - old.stat().st_mtime > KEEP_S:
                old.unlink()
    atomic_write(path, json.dumps({"owner": owner, "start": time.time(), "ended": False}))
    return path


def withdraw(path: Path) -> None:
    """Rank 0's grid loop has ended: ranks waiting for it to claim a run stop waiting. The record
    stays (marked), so a rank that reaches its loop only now still learns rank 0's decision."""
    record = _read(path)
    if record is not None:
        with contextlib.suppress(OSError):
            atomic_write(path, json.dumps({**record, "ended": True}))


def _read(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("owner"), str) else None


def follower_owner(results_dir: Path, since: float) -> str:
    """Rank 0's ``host:pid`` for a rank > 0: inherited from Lightning's launcher, else (srun,
    torchrun) read from rank 0's record of this launch; kept in ``OWNER_ENV`` (``ddp_stop`` reads it)."""
    owner = os.environ.get(OWNER_ENV) or wait_for_owner(results_dir, since)
    os.environ[OWNER_ENV] = owner
    return owner


def wait_for_owner(results_dir: Path, since: float, wait_s: float = WAIT_S, poll_s: float = 0.5) -> str:
    """A rank > 0 of an outside launcher: rank 0's ``host:pid`` from this launch's record, written no
    earlier than ``FRESH_S`` before ``since`` (this rank's start; an older one is an earlier launch's)."""
    key = os.environ.get(GRID_ENV) or launch_key()
    if key is None:
        raise NerveBenchError("a DDP rank > 0 without its rank 0's identity: start it with torchrun or srun")
    os.environ[GRID_ENV] = key
    path, deadline = record_path(results_dir, key), time.monotonic() + wait_s
    while time.monotonic() < deadline:
        record = _read(path)
        if record is not None and float(record.get("start") or 0) >= since - FRESH_S:
            return record["owner"]
        time.sleep(poll_s)
    raise NerveBenchError(f"{path}: rank 0 of this launch wrote no record within {wait_s:.0f} s")


def ended(results_dir: Path, owner: str) -> bool:
    """Whether rank 0 (``owner``) has left its grid loop: its record says so, is gone, or is another's."""
    key = os.environ.get(GRID_ENV)
    if key is None:
        return False
    record = _read(record_path(results_dir, key))
    return record is None or record["owner"] != owner or record.get("ended") is True

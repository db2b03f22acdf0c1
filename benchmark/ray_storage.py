"""The results directory a Ray grid writes to must be one directory on every node: a token written
here by the driver is read back by a probe task pinned to each alive node, else one clear error
(runs on a node-local disk would be lost to the board)."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmark.core.files import atomic_write, remove_older_than
from benchmark.ray_resources import RayExecutorError

MARKER_NAME = ".ray-shared-storage"  # in the results directory: MARKER_NAME-<token>, holding the token
KEEP_S = 7 * 86400.0  # a killed driver's marker is pruned by a later one after a week
TOUCH_S = 3600.0  # a live driver touches its marker this often, so a grid of over a week keeps it


def marker_path(results_dir: Path, token: str) -> Path:
    """One marker per driver: two grids (two Ray clusters) on one results directory each keep their
    own; with one file the second driver's token failed every task the first had not started."""
    return results_dir / f"{MARKER_NAME}-{token}"


def write_marker(results_dir: Path) -> str:
    """Write a fresh random token into this driver's marker file; returns the token."""
    token = secrets.token_hex(16)
    results_dir.mkdir(parents=True, exist_ok=True)
    remove_older_than(results_dir.glob(f"{MARKER_NAME}*"), KEEP_S)
    atomic_write(marker_path(results_dir, token), token)
    return token


def remove_marker(results_dir: Path, token: str) -> None:
    """The driver's grid has ended: its marker goes."""
    with contextlib.suppress(OSError):
        marker_path(results_dir, token).unlink(missing_ok=True)


def read_marker(results_dir: Path, token: str) -> str:
    """The one-line problem when this node cannot read ``token`` back from the marker, else ""."""
    path = marker_path(results_dir, token)
    try:
        found = path.read_text().strip()
    except OSError as exc:
        found = f"cannot read it: {exc.strerror or exc}"
    if found == token:
        return ""
    return (
        f"{results_dir}: results directory is not shared with Ray node {socket.gethostname()} "
        f"({path.name}: {found}); put --results-dir on storage every node mounts at the same path"
    )


def check_shared(ray: Any, results_dir: Path, token: str) -> None:
    """One probe task pinned to every alive node must read the marker back; else one clear error."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(read_marker)
    refs = [
        probe.options(
            num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote(results_dir, token)
        for n in ray.nodes()
        if n["Alive"]
    ]
    problems = [p for p in ray.get(refs) if p]
    if problems:
        more = f" (and {len(problems) - 1} more node(s))" if len(problems) > 1 else ""
        raise RayExecutorError(problems[0] + more)


@contextlib.contextmanager
def shared_marker(ray: Any, results_dir: Path) -> Iterator[str]:
    """This driver's marker, checked on every node (:func:`check_shared`), removed when the block ends."""
    token, done = write_marker(results_dir), threading.Event()
    threading.Thread(target=_keep_fresh, args=(marker_path(results_dir, token), done), daemon=True).start()
    try:
        check_shared(ray, results_dir, token)
        yield token
    finally:
        done.set()
        remove_marker(results_dir, token)


def _keep_fresh(path: Path, done: threading.Event) -> None:
    """A later driver prunes markers older than ``KEEP_S`` (killed drivers'); a live one's grid of
    over a week lost its marker that way, and every task it had not started failed as not shared."""
    while not done.wait(TOUCH_S):
        with contextlib.suppress(OSError):
            os.utime(path)

"""The results directory a Ray grid writes to must be one directory on every node: a token written
here by the driver is read back by a probe task pinned to each alive node, else one clear error
(runs on a node-local disk would be lost to the board)."""

from __future__ import annotations

import secrets
import socket
from pathlib import Path
from typing import Any

from benchmark.core.files import atomic_write
from benchmark.ray_resources import RayExecutorError

MARKER_NAME = ".ray-shared-storage"  # in the results directory: the token every node must read back


def write_marker(results_dir: Path) -> str:
    """Write a fresh random token into the results directory's marker file; returns the token."""
    token = secrets.token_hex(16)
    results_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(results_dir / MARKER_NAME, token)
    return token


def read_marker(results_dir: Path, token: str) -> str:
    """The one-line problem when this node cannot read ``token`` back from the marker, else ""."""
    try:
        found = (results_dir / MARKER_NAME).read_text().strip()
    except OSError as exc:
        found = f"cannot read it: {exc.strerror or exc}"
    if found == token:
        return ""
    seen = "it holds another token" if len(found) == len(token) else found
    return (
        f"{results_dir}: results directory is not shared with Ray node {socket.gethostname()} "
        f"({MARKER_NAME}: {seen}); put --results-dir on storage every node mounts at the same path"
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

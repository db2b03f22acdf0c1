"""This process's rank, as launchers export it, before any process group exists.

The grid decides per process whether it claims runs, prints and writes (rank 0) or follows; those
decisions come before Lightning has set up its strategy, so they read the launcher's variables.
"""

from __future__ import annotations

import os


def env_rank(var: str) -> int:
    """A rank variable as exported (unset or not a number: 0)."""
    value = os.environ.get(var) or "0"
    return int(value) if value.isdigit() else 0


def global_rank() -> int:
    """This process's rank as torchrun/SLURM (RANK, SLURM_PROCID) or Lightning's launcher (LOCAL_RANK,
    NODE_RANK) export it. Callers only test ``== 0``: every process off node 0 counts as non-zero,
    so a node > 0 never claims runs or prints, even before Lightning has set its LOCAL_RANK."""
    for var in ("RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    local, node = env_rank("LOCAL_RANK"), env_rank("NODE_RANK")
    return local if node == 0 else node * 1024 + local

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
    """This process's rank as torchrun (RANK), Lightning's launcher (LOCAL_RANK, NODE_RANK) or SLURM
    (SLURM_PROCID) export it. Callers only test ``== 0``: every process off node 0 counts as non-zero,
    so a node > 0 never claims runs or prints, even before Lightning has set its LOCAL_RANK.

    LOCAL_RANK before SLURM_PROCID, as Lightning reads them: the ranks its launcher starts inside a
    SLURM step it does not manage (``srun --pty bash``, then ``benchmark run``) inherit
    ``SLURM_PROCID=0`` and would each act as rank 0 (claim runs, print, write)."""
    if os.environ.get("RANK", "").isdigit():
        return int(os.environ["RANK"])
    local, node = env_rank("LOCAL_RANK"), env_rank("NODE_RANK")
    if local or node or not os.environ.get("SLURM_PROCID", "").isdigit():
        return local if node == 0 else node * 1024 + local
    return int(os.environ["SLURM_PROCID"])

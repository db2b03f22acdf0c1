"""Every global random stream of a process as plain data, and its exchange between DDP ranks.

What ``torch.load(weights_only=True)`` accepts (tensors, lists, numbers, strings), so a resumed run
restores torch (CPU and CUDA), numpy and python ``random`` exactly. The training data stream needs
none of this: it is a pure function of (seed, epoch, sample) (:mod:`datamodules.stream`).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch


def python_random_state(rng: random.Random | None = None) -> dict[str, Any]:
    """``random.Random.getstate()`` (of ``rng``, else the global stream) as plain lists and numbers."""
    version, internal, gauss_next = (rng or random).getstate()
    return {"version": version, "internal": list(internal), "gauss_next": gauss_next}


def set_python_random_state(state: dict[str, Any], rng: random.Random | None = None) -> None:
    (rng or random).setstate((state["version"], tuple(state["internal"]), state["gauss_next"]))


def _rank_world() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_per_rank(state: Any) -> list[Any]:
    """Every process's ``state``, indexed by rank (a collective under DDP: call it on every rank)."""
    rank, world = _rank_world()
    if world == 1:
        return [state]
    out: list[Any] = [None] * world
    torch.distributed.all_gather_object(out, state)  # peers of one job; what is saved stays plain
    return out


def own_rank(states: list[Any]) -> Any:
    """This process's entry of :func:`gather_per_rank` (modulo, should the world size have changed)."""
    return states[_rank_world()[0] % len(states)] if states else None


def rank_seed(seed: int, rank: int) -> int:
    """A seed of its own for DDP rank ``rank`` of a run seeded ``seed`` (a 32-bit SeedSequence draw)."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def numpy_global_state() -> dict[str, Any]:
    """``np.random``'s legacy global MT19937 state as plain data."""
    state = np.random.get_state(legacy=False)
    return {**state, "state": {"key": state["state"]["key"].tolist(), "pos": int(state["state"]["pos"])}}


def set_numpy_global_state(state: dict[str, Any]) -> None:
    key = np.asarray(state["state"]["key"], dtype=np.uint32)
    np.random.set_state({**state, "state": {"key": key, "pos": state["state"]["pos"]}})


def global_rng_state() -> dict[str, Any]:
    """This process's global random streams as plain data (uint8 tensors, lists, numbers, strings)."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": numpy_global_state(),
        "python": python_random_state(random),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this rank's current device
    return state


def set_global_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    set_numpy_global_state(state["numpy"])
    set_python_random_state(state["python"], random)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])

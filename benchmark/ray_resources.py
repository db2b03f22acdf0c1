"""What one Ray task of the grid asks for, and how many fit at once: pure functions of the cluster's
node resources and the config's ``gpus_per_run`` / ``cpus_per_run``, so they are tested without Ray.

A GPU task gets a fresh worker process (``max_calls=1``): a worker that initialised CUDA on one GPU
must not take the next task. A GPU recipe on a cluster that declares no GPU is an error, not a
silent CPU run."""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from benchmark.core.config import BenchmarkConfig
from datamodules.errors import NerveBenchError


class RayExecutorError(NerveBenchError):
    """The Ray executor cannot run as configured (results not shared, no GPU, a run too big)."""


@dataclass(frozen=True)
class RaySettings:
    gpus_per_run: float = 1.0
    cpus_per_run: float = 1.0
    address: str | None = None  # None: start a local Ray with this machine's resources

    @classmethod
    def of(cls, bench: BenchmarkConfig) -> RaySettings:
        """The config's resources; the address from the config, else ``$RAY_ADDRESS``."""
        address = bench.ray_address or os.environ.get("RAY_ADDRESS") or None
        return cls(float(bench.gpus_per_run), float(bench.cpus_per_run), address)


def task_options(nodes: list[dict[str, float]], settings: RaySettings, accelerator: str) -> dict[str, Any]:
    """``ray.remote`` options of one run: ``gpus_per_run`` unless the run is a CPU run.

    A run that may use a GPU (``accelerator`` gpu, cuda or auto) on a cluster that declares none is
    an error: it would silently train the GPU recipe on CPU. A GPU task gets a fresh worker process.
    """
    has_gpu = any(res.get("GPU", 0) > 0 for res in nodes)
    gpus = settings.gpus_per_run if accelerator != "cpu" else 0.0
    if gpus and not has_gpu:
        raise RayExecutorError(
            f"accelerator={accelerator} with gpus_per_run={settings.gpus_per_run:g}, but the Ray cluster "
            "declares no GPU; set accelerator: cpu to train on its CPUs (or start Ray with --num-gpus)"
        )
    if accelerator in ("gpu", "cuda") and not gpus:
        raise RayExecutorError(f"accelerator={accelerator}, but gpus_per_run=0")
    options = {
        "num_cpus": settings.cpus_per_run,
        "num_gpus": gpus,
        "max_retries": 1,
        "retry_exceptions": False,
    }
    if gpus:
        options["max_calls"] = 1  # a worker that initialised CUDA on one GPU must not take the next task
    return options


def slots(nodes: list[dict[str, float]], options: dict[str, Any]) -> int:
    """Runs the cluster can hold at once: per node, what its CPUs and GPUs allow, summed."""
    total = 0
    for res in nodes:
        n = math.floor(res.get("CPU", 0.0) / options["num_cpus"] + 1e-9)
        if options["num_gpus"]:
            n = min(n, math.floor(res.get("GPU", 0.0) / options["num_gpus"] + 1e-9))
        total += n
    if total < 1:
        raise RayExecutorError(
            f"no Ray node has {options['num_cpus']:g} CPUs and {options['num_gpus']:g} GPUs free for one run "
            f"(nodes: {[{k: v for k, v in r.items() if k in ('CPU', 'GPU')} for r in nodes]}); "
            "lower cpus_per_run / gpus_per_run"
        )
    return total


def grid_tasks(
    nodes: list[dict[str, float]], settings: RaySettings, accelerators: Iterable[str]
) -> tuple[dict[str, dict[str, Any]], int, str]:
    """Per accelerator among the runs' (``model_train`` may set one per model): the options of its
    runs, each checked as :func:`task_options` does; the runs in flight at most (each accelerator's
    runs up to what the cluster holds of them, summed); and the words for the options."""
    counts = Counter(accelerators)
    by = {acc: task_options(nodes, settings, acc) for acc in sorted(counts)}
    # GPU runs and CPU runs ask for the same CPUs (cpus_per_run): the GPU runs take the places the
    # GPUs allow, the CPU runs what CPU places are left.
    gpu = [acc for acc, o in by.items() if o["num_gpus"]]
    on_gpus = min(sum(counts[a] for a in gpu), slots(nodes, by[gpu[0]])) if gpu else 0
    cpu = [acc for acc in by if acc not in gpu]
    cpu_slots = slots(nodes, by[cpu[0]]) - on_gpus if cpu else 0
    capacity = on_gpus + min(sum(counts[a] for a in cpu), max(cpu_slots, 0))
    words = "; ".join(
        (f"{acc} runs: " if len(by) > 1 else "") + f"{o['num_cpus']:g} CPU, {o['num_gpus']:g} GPU each"
        for acc, o in by.items()
    )
    return by, capacity, words


def exclusive_options(
    nodes: list[dict[str, float]], settings: RaySettings, accelerator: str
) -> dict[str, Any]:
    """Ray options of a task that holds a whole device: one GPU, or every CPU of the largest node."""
    has_gpu = any(res.get("GPU", 0) > 0 for res in nodes)
    if has_gpu and accelerator != "cpu":
        return {"num_gpus": 1.0, "num_cpus": settings.cpus_per_run, "max_calls": 1, "max_retries": 1}
    whole_node = max(res.get("CPU", 1.0) for res in nodes)
    return {"num_cpus": whole_node, "num_gpus": 0, "max_calls": 1, "max_retries": 1}

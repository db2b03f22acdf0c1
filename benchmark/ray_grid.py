"""The ``ray`` executor: the grid's (model, fold, seed) runs as Ray tasks, as many at a time as the
cluster's resources allow (``gpus_per_run``, fractions included, and ``cpus_per_run`` per task).

Why tasks rather than DDP per run: a benchmark is ~45 short runs on 5.6k small images; one run per
GPU (or several per GPU) does not pay process start-up, NCCL set-up and gradient sync 45 times.
Runs that need several devices (``devices > 1``) keep the local path (:func:`choose`).

- Data: the driver decodes the training set once and ``ray.put``s its arrays. Ray keeps one copy per
  node in shared memory and hands each task on that node a read-only, zero-copy numpy view; tasks
  build their DataModule from it (``preloaded``) and never open a tif.
- Truth on disk: each task runs :func:`benchmark.runner.run_one` (run lock, atomic summary,
  ``error.txt``) on its own run directory; the driver only prints progress, and the leaderboard is
  rebuilt from the summaries. A marker file holding a random token, read back by a task on every
  node, proves that the results directory is shared before anything trains.
- Faults: a run that raises is a "failed" outcome and the others go on (one that ran out of space
  stops the grid: :mod:`benchmark.core.preflight`); a worker that dies is
  retried once (``max_retries=1``) and resumes from ``last.ckpt``; killing the driver ends its
  tasks (Ray ties a job's workers to its driver) and leaves finished runs and checkpoints behind.
- GPUs: a task that asks for GPUs gets a fresh worker process (``max_calls=1``, Ray's own default
  for GPU tasks, which ``.options(num_gpus=...)`` drops), so no worker keeps a CUDA context on a GPU
  from its previous task; every task sees exactly its share (``CUDA_VISIBLE_DEVICES`` set from
  ``ray.get_gpu_ids()``, empty without one); a GPU config on a cluster without GPUs is an error.

Ray is imported only when this executor runs (:mod:`benchmark.ray_cluster`: offline, on loopback).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmark import ray_cluster, runner
from benchmark.core import stop
from benchmark.core.config import BenchmarkConfig, TrainConfig
from benchmark.core.files import atomic_write
from benchmark.core.preflight import OutOfSpace, stop_for_space
from benchmark.evaluation import deferred_costs
from benchmark.ray_resources import RaySettings, exclusive_options, grid_tasks
from benchmark.ray_storage import read_marker, shared_marker
from benchmark.runner import Outcome

# Driver variables a worker on another machine also needs (W&B mode/key/dir, offline hub, lock timing).
FORWARDED_ENV = ("WANDB_", "HF_", "NO_ALBUMENTATIONS_UPDATE", "PYTHONHASHSEED", "NERVE_BENCH_LOCK_STALE_S")
# Inherited from `srun ray start` or a launcher: inside a one-process Ray task they would make
# Lightning (and benchmark.core.ranks.global_rank) believe it is one rank of a multi-process job.
LAUNCHER_ENV = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "NODE_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
)
POLL_S = 1.0  # ray.wait timeout, so Ctrl-C is seen promptly


# ----------------------------------------------------------------------------- choosing an executor
def _devices(cfg: TrainConfig) -> int:
    """Processes a run spans; ``devices: auto`` inside a Ray task means the one GPU Ray assigned it."""
    return (cfg.devices if isinstance(cfg.devices, int) else 1) * cfg.num_nodes


def choose(bench: BenchmarkConfig, grid: list[TrainConfig]) -> tuple[str, str]:
    """The executor that runs ``grid`` ("local" or "ray") and, when Ray was asked for but cannot
    be used, one line saying why."""
    if bench.executor != "ray":
        return "local", ""
    if importlib.util.find_spec("ray") is None:
        return "local", "executor ray: Ray is not installed (make install); running the grid locally"
    multi = [c for c in grid if _devices(c) > 1]
    if multi:
        return "local", (
            f"executor ray: {len(multi)} run(s) span {_devices(multi[0])} devices (DDP); running the grid "
            "locally (set devices: 1 to run one task per GPU share)"
        )
    return "ray", ""


def execute(
    bench: BenchmarkConfig,
    grid: list[TrainConfig],
    executor: str,
    data_dir: Path,
    results_dir: Path,
    data_hash: str | None = None,
    train_set: Any = None,
    room: Callable[[int], None] | None = None,
) -> list[Outcome]:
    """Run ``grid`` with ``executor`` (as :func:`choose` picked it): the local loop (its runs map
    the node's decoded cache), or Ray tasks (``train_set``, already decoded, goes to the object
    store; else it is read). ``room(in_flight)`` checks the results directory's room for that many
    runs at a time (Ray)."""
    if executor == "local":
        return runner.run_grid(grid, data_dir, results_dir, data_hash=data_hash)
    return run_grid(
        grid,
        data_dir,
        results_dir,
        RaySettings.of(bench),
        data_hash=data_hash,
        train_set=train_set,
        room=room,
    )


# ----------------------------------------------------------------------------- the task
def single_process_env() -> None:
    """Drop launcher variables a Ray worker inherited (SLURM_*, RANK...): a task is one process."""
    for key in [k for k in os.environ if k.startswith("SLURM_") or k in LAUNCHER_ENV]:
        del os.environ[key]


def visible_gpus(gpu_ids: list[Any]) -> str:
    """``CUDA_VISIBLE_DEVICES`` for a task: the GPUs Ray gave it, none without a share.

    Ray leaves the variable as the worker inherited it when a task has no GPU share (and always
    under ``RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES``): every such task would see all GPUs and
    ``accelerator: auto`` would put them all on cuda:0. Set before CUDA is first touched.
    """
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in gpu_ids)
    return os.environ["CUDA_VISIBLE_DEVICES"]


def run_task(
    cfg: TrainConfig,
    data_dir: Path,
    results_dir: Path,
    token: str,
    records: list,
    images: Any,
    masks: Any,
    mask_source: str,
    fingerprints: Any,
    digest: str | None,
    fit: Callable | None = None,
) -> Outcome:
    """One run inside a Ray worker: ``images``/``masks`` are the object store's read-only arrays,
    ``fingerprints`` and ``digest`` (the content hash) the driver's (computed once, not per task)."""
    import ray

    from datamodules.kaggle import TrainSet

    problem = read_marker(results_dir, token)
    if problem:  # a node that joined after the driver's check
        return Outcome(cfg.run_name(), "failed", error=problem)
    single_process_env()
    visible_gpus(ray.get_gpu_ids())
    if fit is None:
        from benchmark.pipeline import fit
    # Validation wraps the read-only truth masks with torch.from_numpy, which warns; nothing writes
    # to them (a write would raise, never corrupt the shared copy).
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    train_set = TrainSet(records, images, masks, mask_source, fingerprints, digest=digest)
    return runner.run_one(cfg, data_dir, results_dir, functools.partial(fit, preloaded=train_set))


# ----------------------------------------------------------------------------- the driver
def connect(address: str | None) -> tuple[Any, bool]:
    """Ray, initialised (:func:`benchmark.ray_cluster.connect`), with the driver's variables that the
    tasks need forwarded to them. Returns (ray, whether we started it and must shut it down)."""
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
    return ray_cluster.connect(address, env)


def share_train_set(ray: Any, data_dir: Path, train_set: Any = None) -> tuple[Any, Any, Any, str, Any, str]:
    """Decode the training set once (unless given) and put it in the object store, with its
    fingerprints and content hash."""
    from datamodules.kaggle import content_hash, load_train

    if train_set is None:
        train_set = load_train(data_dir)
    return (
        ray.put(train_set.records),
        # np.asarray: a memmap (the node's decoded cache) would be pickled whole, one private copy
        # per task; a plain array goes in as one shared, zero-copy, read-only buffer
        ray.put(np.asarray(train_set.images)),
        ray.put(np.asarray(train_set.masks)),
        train_set.mask_source,
        ray.put(np.asarray(train_set.fingerprints())),
        content_hash(train_set),  # the task's arrays are read-only: it cannot go stale there
    )


@dataclass
class Progress:
    """One line per finished run, then the overall state: done, running, left, elapsed and ETA."""

    total: int
    slots: int
    start: float = field(default_factory=time.perf_counter)
    seconds: list[float] = field(default_factory=list)
    done: int = 0

    def update(self, outcome: Outcome, pending: int, runs: Path) -> list[str]:
        self.done += 1
        if runner.paces(outcome):
            self.seconds.append(outcome.seconds)
        running = min(pending, self.slots)
        mean = sum(self.seconds) / len(self.seconds) if self.seconds else None
        eta = "?" if mean is None else runner.clock(mean * pending / self.slots)
        overall = (
            f"[{self.done}/{self.total} done, {running} running, {pending - running} left] "
            f"elapsed {runner.clock(time.perf_counter() - self.start)}, ETA {eta}"
        )
        return [describe(outcome, runs), overall]


def describe(outcome: Outcome, runs: Path) -> str:
    if outcome.status == "trained":
        return runner.finished_line(outcome)
    if outcome.status == "skipped":
        return f"skipped {outcome.run}: completed by another process"
    if outcome.status == "held":
        return f"skipped {outcome.run}: {outcome.error}"
    return f"FAILED {outcome.run}: {outcome.error} (see {runs / outcome.run / 'error.txt'})"


def collect(ray: Any, ref: Any, cfg: TrainConfig, runs: Path) -> Outcome:
    """The task's outcome; a worker lost twice (crash, OOM kill, node death) becomes a failed run."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        line = f"{type(exc).__name__} after one retry: {first}"[:300]
        try:
            atomic_write(runs / cfg.run_name() / "error.txt", f"{type(exc).__name__}\n{exc}\n")
        except OSError as err:
            line += f" (error.txt not written: {err.strerror or err})"
        return Outcome(cfg.run_name(), "failed", error=line)


def launch(
    ray: Any,
    todo: list[TrainConfig],
    data_dir: Path,
    results_dir: Path,
    settings: RaySettings,
    fit: Callable | None,
    train_set: Any,
    room: Callable[[int], None] | None = None,
) -> list[Outcome]:
    """Submit every run, then report each as it finishes; Ctrl-C cancels the rest (checkpoints stay)."""
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    # each run's own accelerator: a model_train entry may set one, and a CPU run must hold no GPU
    by_accelerator, capacity, words = grid_tasks(nodes, settings, [c.accelerator for c in todo])
    if room is not None and capacity > 1:  # a resume checkpoint per run in flight (capacity <= runs)
        room(capacity)
    with shared_marker(ray, results_dir) as token:  # this driver's, removed when its grid ends
        shared = share_train_set(ray, data_dir, train_set)
        tasks = {acc: remote_task(ray, options) for acc, options in by_accelerator.items()}
        args = (data_dir, results_dir, token, *shared, fit)
        refs = {tasks[cfg.accelerator].remote(cfg, *args): cfg for cfg in todo}
        runner.say(
            f"ray: {len(todo)} runs, up to {capacity} at a time ({words}); "
            f"worker logs in {ray_cluster.logs_dir(ray)}"
        )
        return _collect_all(ray, refs, results_dir, capacity)


def _collect_all(ray: Any, refs: dict[Any, TrainConfig], results_dir: Path, capacity: int) -> list[Outcome]:
    """Each run's outcome as it finishes; an interrupt cancels the rest (their checkpoints stay)."""
    progress, pending, outcomes = Progress(len(refs), capacity), list(refs), []
    try:
        while pending:
            stop.raise_pending()  # a SIGTERM that a finalizer swallowed
            ready, pending = ray.wait(pending, num_returns=1, timeout=POLL_S)
            for ref in ready:
                outcomes.append(collect(ray, ref, refs[ref], results_dir / "runs"))
                for line in progress.update(outcomes[-1], len(pending), results_dir / "runs"):
                    runner.say(line)
                if outcomes[-1].no_space:  # the runs in flight are cancelled below, their checkpoints kept
                    raise stop_for_space(outcomes[-1].no_space, outcomes[-1].run)
    except BaseException as exc:
        for ref in pending:  # a killed run keeps its last.ckpt; the next invocation resumes it
            ray.cancel(ref, force=True)
        say_unfinished([refs[ref] for ref in pending], results_dir / "runs", isinstance(exc, OutOfSpace))
        raise
    return outcomes


def say_unfinished(cfgs: list[TrainConfig], runs: Path, cancelled: bool) -> None:
    """Each run stopped in flight with what the next invocation resumes it from; the count of the
    runs that had not started."""
    started = [c for c in cfgs if (runs / c.run_name()).is_dir()]
    for cfg in started:
        line = runner.interrupted_line(cfg, runs / cfg.run_name())
        runner.say(line.replace("interrupted", "cancelled", 1) if cancelled else line)
    if len(cfgs) > len(started):
        runner.say(f"{len(cfgs) - len(started)} run(s) had not started: the next invocation trains them")


def remote_task(ray: Any, options: dict[str, Any]) -> Any:
    """``run_task`` as a Ray task with ``options`` (max_calls is the remote function's: Ray refuses it
    in ``.options()``)."""
    per_call = {k: v for k, v in options.items() if k != "max_calls"}
    return ray.remote(max_calls=options.get("max_calls", 0))(run_task).options(**per_call)


def run_grid(
    grid: list[TrainConfig],
    data_dir: Path,
    results_dir: Path,
    settings: RaySettings,
    fit: Callable | None = None,
    data_hash: str | None = None,
    train_set: Any = None,
    room: Callable[[int], None] | None = None,
) -> list[Outcome]:
    """Like :func:`benchmark.runner.run_grid`, with the open runs as Ray tasks.

    ``fit(cfg, data_dir, run_dir, preloaded=train_set)`` defaults to ``pipeline.fit``; ``train_set``
    is the already-decoded training set of ``data_dir`` (else it is read here, once).
    """
    data_dir, results_dir = Path(data_dir).resolve(), Path(results_dir).resolve()  # the same on every node
    runs = results_dir / "runs"
    todo, outcomes = runner.open_grid(grid, data_dir, results_dir, data_hash)
    pending = [c for c in grid if deferred_costs.is_pending(runs / c.run_name())]
    if not todo and not pending:
        return outcomes
    reaper = ray_cluster.start_reaper() if settings.address is None else None
    try:
        ray, started = connect(settings.address)
        if reaper is not None:
            ray_cluster.sync_reaper(reaper)  # Ray's daemons are recorded before any task starts
        try:
            if todo:
                outcomes += launch(ray, todo, data_dir, results_dir, settings, fit, train_set, room)
            measure_deferred_costs(ray, grid, runs, settings)
            return outcomes
        finally:
            if started:
                ray.shutdown()
    finally:
        if reaper is not None:
            ray_cluster.stop_reaper(reaper)


def measure_deferred_costs(ray: Any, grid: list[TrainConfig], runs: Path, settings: RaySettings) -> None:
    """After every task: the inference columns of runs that shared a device (``deferred_costs``),
    measured in one task that has a device to itself; a failure leaves them pending, never lost."""
    waiting = [c for c in grid if deferred_costs.is_pending(runs / c.run_name())]
    if not waiting:
        return
    pending = [runs / c.run_name() for c in waiting]
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    gpu_runs = [c.accelerator for c in waiting if c.accelerator != "cpu"]  # any: the task holds a GPU
    options = exclusive_options(nodes, settings, gpu_runs[0] if gpu_runs else "cpu")
    runner.say(f"ray: inference costs of {len(pending)} run(s) that shared a device, measured on a whole one")
    task = ray.remote(**options)(deferred_costs.measure_pending)  # max_calls: a fresh worker, CUDA freed
    try:
        lines = ray.get(task.remote(pending))
    except ray.exceptions.RayError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        lines = [
            f"inference costs of {len(pending)} run(s) still pending ({first}); the next `run` measures them"
        ]
    for line in lines:
        runner.say(line)

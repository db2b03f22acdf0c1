"""What a grid has left in a results directory, known before anything starts: the runs still
open, those of them only scored again (their training finished), the bytes they will write and
the room check for them, how many train at once here, and the dry run that lists it all."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmark.core.config import BenchmarkConfig, TrainConfig
from benchmark.runner import LAST_CKPT


@dataclass(frozen=True)
class Left:
    """The runs of a grid not yet complete, and the names of those only scored again."""

    runs: list[TrainConfig]
    scored_again: set[str]

    def to_train(self) -> list[TrainConfig]:
        return [c for c in self.runs if c.run_name() not in self.scored_again]


def left_of(grid: list[TrainConfig], results_dir: Path) -> Left:
    """The runs of ``grid`` not yet complete in ``results_dir``, and which of them have finished
    training (``trained.json``): they are only scored again. Each summary is read once here."""
    from benchmark.core.summary import is_complete
    from benchmark.training.finished import trained_record

    runs = results_dir / "runs"
    left = [c for c in grid if not is_complete(runs / c.run_name(), c.hash())]
    again = {c.run_name() for c in left if trained_record(runs / c.run_name(), c.hash()) is not None}
    return Left(left, again)


def still_to_write(left: Left, results_dir: Path, sizes: dict[str, int]) -> tuple[list[int], list[int], int]:
    """Stored values (parameters and buffers) of each run left that trains and of each that is
    only scored again, and the bytes their checkpoints already hold (a resumed run replaces them):
    what the grid will still write."""
    runs = results_dir / "runs"
    trains = [sizes[c.run_name()] for c in left.to_train()]
    scored_again = [sizes[c.run_name()] for c in left.runs if c.run_name() in left.scored_again]
    held = sum(
        p.stat().st_size for c in left.runs for p in (runs / c.run_name() / "checkpoints").glob("*.ckpt")
    )
    return trains, scored_again, held


def room_check(
    grid: list[TrainConfig], left: Left, results_dir: Path, min_free_gb: float | None, sizes: dict[str, int]
) -> Callable[..., None]:
    """The results directory's room check (``room(in_flight=1)``), made once here; the resume
    checkpoints that complete runs still hold are deleted first, as the grid would."""
    from benchmark import runner
    from benchmark.core.preflight import check_room

    runner.drop_kept_resume_state(results_dir / "runs", [c for c in grid if c not in left.runs])
    values, scored_again, held = still_to_write(left, results_dir, sizes)
    room = functools.partial(
        check_room, results_dir, min_free_gb, values, held_bytes=held, scored_again=scored_again
    )
    room()
    return room


def dry_run(
    bench: BenchmarkConfig, grid: list[TrainConfig], left: Left, results_dir: Path, sizes: dict[str, int],
    executor: str, data_dir: Path, min_free_gb: float | None,
) -> int:  # fmt: skip
    """List the grid and each run's state, then the room it needs; reads only (no directory, data or
    lock is created). The results directory's checks first, as the run would make them."""
    from benchmark import grid_checks
    from benchmark.core.lock import is_held
    from benchmark.core.preflight import check_room, free_bytes, grid_need_bytes

    values, scored_again, held = still_to_write(left, results_dir, sizes)
    # What run refuses first (a file in its place, not writable, short of space), nothing created:
    # one run in flight, as run checks before Ray counts its own; the resume checkpoints that
    # complete runs still hold count as free, as run deletes them first.
    kept = sum(_size(results_dir / "runs" / c.run_name() / LAST_CKPT) for c in grid if c not in left.runs)
    check_room(results_dir, min_free_gb, values, 1, held + kept, scored_again, probe=False)
    in_flight, how = in_flight_here(bench, grid, executor)
    in_flight = min(in_flight, len(values))
    grid_checks.check_joins_board(results_dir, grid)
    linked = any(c.link_subjects for c in grid)
    grid_checks.check_link_subjects(results_dir, linked, grid_checks.saved_links(results_dir))
    data_checked = _check_data(grid, results_dir, data_dir)
    for i, cfg in enumerate(grid, start=1):
        holder = is_held(results_dir / "runs" / cfg.run_name())
        state = " (complete)" if cfg not in left.runs else ""
        state = f" (held by {holder.describe()})" if holder and not state else state
        if not state and cfg.run_name() in left.scored_again:
            state = " (trained: it is scored again from best.ckpt, not trained)"
        print(f"[{i}/{len(grid)}] {cfg.model} fold {cfg.fold} seed {cfg.seed} -> {cfg.run_name()}{state}")
    if not data_checked and data_dir.is_dir():  # not the fallback's data before run generates it
        runs_here = any((results_dir / "runs").glob("*/summary.json"))
        print(
            f"data: this node's decoded copy of {data_dir} is not there yet (run makes it): run checks "
            "then that every run's split holds one global batch"
            + (" and that the results directory's runs were made on this data" if runs_here else "")
        )
    need = max(grid_need_bytes(values, in_flight, scored_again) - held - kept, 0)
    print(  # the last line, whatever came before it
        f"disk: the {len(left.runs)} run(s) left need about {need / 1e9:.2f} GB in {results_dir} "
        f"({free_bytes(results_dir) / 1e9:.2f} GB free; {how})"
    )
    return 0


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


def _check_data(grid: list[TrainConfig], results_dir: Path, data_dir: Path) -> bool:
    """The run's refusals (exit 2) that need the data, where this node's decoded copy of ``data_dir``
    is there: results made on other data (the listing called such runs complete), a split without
    one global batch to fit. False when the data is not decoded here yet (nothing checked)."""
    from benchmark import grid_checks
    from datamodules.decoded_cache import cached_train, known_content_hash

    known = known_content_hash(data_dir)
    if known is not None:
        grid_checks.check_same_data(results_dir, data_dir, known, [c.run_name() for c in grid])
    train = cached_train(data_dir)
    if train is not None:  # each run's split, as run checks it first (a fit part under one global batch)
        grid_checks.check_train_set(grid, data_dir, results_dir, train)
    return train is not None


def in_flight_here(bench: BenchmarkConfig, grid: list[TrainConfig], executor: str) -> tuple[int, str]:
    """How many runs train at once, as far as it is known without starting anything, and the words
    for it: one for the local executor; for a Ray started here, this machine's CPUs (all of them, as
    Ray counts them) and GPUs over one run's share, as the grid's own room check will count them; a
    configuration that Ray would refuse is refused here too; for a Ray cluster, not known."""
    import torch

    from benchmark.ray_resources import RaySettings, grid_tasks

    further = "Ray adds a resume checkpoint per further run in flight"
    if executor != "ray":
        return 1, "one run at a time"
    settings = RaySettings.of(bench)
    if settings.address:
        return 1, f"counted one run at a time; on the Ray cluster at {settings.address}, {further}"
    node = {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}
    if local_ray_lacks_gpu(bench, grid):
        # a GPU grid listed on a machine without one (a login node): its Ray will run elsewhere
        return 1, f"counted one run at a time: this machine has no GPU for a local Ray; {further}"
    n = grid_tasks([node], settings, [c.accelerator for c in grid])[1]
    return n, (
        f"a local Ray here trains up to {n} at a time ({node['CPU']:g} CPUs, {node['GPU']:g} GPUs), "
        "each with its resume checkpoint"
    )


def local_ray_lacks_gpu(bench: BenchmarkConfig, grid: list[TrainConfig]) -> bool:
    """Whether a Ray this command would start here (no address) declares no GPU for a grid whose runs
    ask for one: ``run`` then refuses it (exit 2), a dry run warns (a login node plans a GPU job)."""
    import torch

    from benchmark.ray_resources import RaySettings

    settings = RaySettings.of(bench)
    asks = any(c.accelerator != "cpu" for c in grid) and settings.gpus_per_run > 0
    return not settings.address and asks and torch.cuda.device_count() == 0

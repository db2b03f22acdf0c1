"""The benchmark grid: models x folds x seeds, each through ``benchmark.pipeline.fit``, then the report.

Finished runs (a complete summary.json with the same config hash) are skipped and interrupted ones
resume from their last checkpoint inside ``fit``, so re-running the same command continues where it
stopped. Each run is claimed with a run lock (:mod:`benchmark.core.lock`) before training, so two
commands on one results directory share the grid instead of training everything twice; a run held
by another live process is skipped ("held"), and taken over at the end of the grid if its holder
stopped meanwhile. One failing run is recorded in its ``error.txt`` (or, when that cannot be
written, on stderr) and does not stop the others, unless it ran out of space (a full disk or
quota): then the grid stops with one line (:mod:`benchmark.core.preflight`). An interrupt (Ctrl-C,
SIGTERM) names the run in flight and the checkpoint it resumes from. Each run frees the device memory
and compiled graphs it leaves in the process. The synthetic fallback is :mod:`benchmark.fallback`.
Under DDP every rank executes this loop (Lightning re-launches the command); rank 0 claims the runs
and ranks > 0 follow it; only rank 0 prints, writes error files and the report. A run failing on
any rank ends the DDP job (:mod:`benchmark.ddp_stop`)."""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from benchmark import ddp_stop
from benchmark.core import rank0, stop
from benchmark.core.config import TrainConfig
from benchmark.core.files import atomic_write, os_error_line
from benchmark.core.lock import LOCK_NAME, OWNER_ENV, claim, follow, is_held, lost_behind, read_lock
from benchmark.core.preflight import out_of_space, stop_for_space
from benchmark.core.ranks import env_rank, global_rank
from benchmark.core.summary import is_complete, read_summary
from datamodules.errors import DataError

LAST_CKPT = Path("checkpoints") / "last.ckpt"  # under a run directory (benchmark.training.trainer)


@dataclass
class Outcome:
    run: str
    status: str  # "trained", "skipped" (complete), "held" (another live process has it) or "failed"
    seconds: float = 0.0
    error: str = ""
    dice: float | None = None  # outer-fold post-processed Kaggle Dice of a trained run
    no_space: str = ""  # "PATH: reason" when it failed for want of space: the grid stops (preflight)
    scored_again: bool = False  # trained earlier; only tuned and scored now (benchmark.training.finished)


def say(message: str) -> None:
    if global_rank() == 0:
        print(message, flush=True)


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return (
        f"{seconds // 3600}h{seconds // 60 % 60:02d}m{seconds % 60:02d}s"
        if seconds >= 3600
        else (f"{seconds // 60}m{seconds % 60:02d}s")
    )


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text if len(text) <= limit else text[: limit - 3] + '...'}"


def _record_failure(run_dir: Path, exc: BaseException) -> str:
    """Write the traceback to ``error.txt``; if that fails too, say so on stderr and go on."""
    line = _one_line(exc)
    if global_rank() == 0:
        try:
            atomic_write(run_dir / "error.txt", "".join(traceback.format_exception(exc)))
        except OSError as err:
            print(
                f"error: {run_dir / 'error.txt'}: cannot record the failure ({err.strerror or err}); "
                f"{run_dir.name} failed with {line}",
                file=sys.stderr,
                flush=True,
            )
    return line


def outer_dice(summary: Any) -> float | None:
    """The outer fold's post-processed Kaggle Dice of a summary, if it has one."""
    try:
        value = summary["metrics"]["post"]["kaggle_dice"]
    except (KeyError, TypeError):
        return None
    return float(value) if isinstance(value, (int, float)) else None


def paces(outcome: Outcome) -> bool:
    """Whether a run's time tells how long the runs left take (the ETA): not a skip, not a re-score."""
    return outcome.status in ("trained", "failed") and not outcome.scored_again


def finished_line(outcome: Outcome) -> str:
    """The one line printed per finished run, by every executor: name, seconds, outer Kaggle Dice."""
    how = " (scored again from best.ckpt: training had finished)" if outcome.scored_again else ""
    dice = "n/a" if outcome.dice is None else f"{outcome.dice:.4f}"
    return f"done {outcome.run} in {outcome.seconds:.1f} s{how}: outer Kaggle Dice {dice}"


def ddp_rank(cfg: TrainConfig) -> int:
    """This process's rank in the run's DDP world (for messages; :func:`global_rank` decides)."""
    if os.environ.get("RANK", "").isdigit():
        return int(os.environ["RANK"])
    local, node = env_rank("LOCAL_RANK"), env_rank("NODE_RANK")
    return node * int(cfg.world_size() // max(cfg.num_nodes, 1)) + local


def _ddp_failure(cfg: TrainConfig, run_dir: Path, exc: BaseException) -> ddp_stop.GridStopped:
    """Under DDP a failed run ends the job: every rank records its own traceback (rank 0 never sees
    another rank's exception), then rank 0 stops the job or a rank > 0 asks it to."""
    rank, error_txt = ddp_rank(cfg), run_dir / "error.txt"
    with contextlib.suppress(OSError):
        atomic_write(error_txt, "".join(traceback.format_exception(exc)))
    message = ddp_stop.stop_line(cfg.run_name(), rank, cfg.world_size(), _one_line(exc), error_txt)
    if global_rank() == 0:
        return ddp_stop.rank0_failed(run_dir.parent, message)
    return ddp_stop.follower_failed(run_dir.parent, rank, message)


def interrupted_line(cfg: TrainConfig, run_dir: Path) -> str:
    """What an interrupt leaves of the run in flight: the checkpoint the next invocation resumes from."""
    from benchmark.training.checkpoint import BEST
    from benchmark.training.finished import TRAINED

    last = run_dir / LAST_CKPT
    if last.is_file():
        then = f"resumes from {last}"
    elif last.with_name(TRAINED).is_file():  # training had finished: only scoring was left
        then = f"scores it again from {last.with_name(BEST)} (if the record still matches)"
    else:
        then = "starts it again (no epoch had finished)"
    return f"interrupted {cfg.run_name()}: re-running the same command {then}"


def interrupt_behind(exc: BaseException) -> BaseException | None:
    """The interrupt (Ctrl-C, SIGTERM, SLURM's requeue signal: :func:`benchmark.cli.interrupt_code`)
    that ``exc`` was raised while handling, if any. A SIGTERM sent to the process group (``timeout``,
    systemd, a batch system) also kills the loader workers, and the loader's "worker killed by signal"
    error replaces the signal's exception."""
    from benchmark.cli import interrupt_code  # the one list of what counts as an interrupt

    seen, visited = exc.__context__, {id(exc)}
    while seen is not None and id(seen) not in visited:
        if not isinstance(seen, Exception) and interrupt_code(seen) is not None:
            return _unwrapped(seen)
        visited.add(id(seen))
        seen = seen.__context__
    return None


def _unwrapped(interrupt: BaseException) -> BaseException:
    """The interrupt itself, not Lightning's ``sys.exit(1)`` around a Ctrl-C: re-raised inside an
    ``except``, the SystemExit's context would become the loader error and the Ctrl-C be lost."""
    while type(interrupt) is SystemExit and interrupt.__context__ is not None:
        interrupt = interrupt.__context__
    return interrupt


def _train_one(cfg: TrainConfig, data_dir: Path, run_dir: Path, fit: Callable) -> Outcome:
    from benchmark.training.device import release_run_memory

    start, ddp = time.perf_counter(), cfg.world_size() > 1
    if ddp and global_rank() == 0:
        ddp_stop.WATCHER.start(run_dir.parent)
    try:
        summary = fit(cfg, data_dir, run_dir)
    except Exception as exc:  # noqa: BLE001 - one run's failure must not lose the others
        interrupt = interrupt_behind(exc)
        if interrupt is not None:  # not this run's failure: the command was told to stop
            say(interrupted_line(cfg, run_dir))
            raise interrupt from None
        if (lost := lost_behind(exc)) is not None and not ddp:  # another process's run now (DDP: ends)
            say(f"warning: {lost}")
            return Outcome(cfg.run_name(), "held", time.perf_counter() - start, error=str(lost))
        if ddp:
            raise _ddp_failure(cfg, run_dir, exc) from None
        seconds, full = time.perf_counter() - start, out_of_space(exc)
        where = "" if full is None else os_error_line(full)
        return Outcome(cfg.run_name(), "failed", seconds, _record_failure(run_dir, exc), no_space=where)
    except BaseException:  # Ctrl-C, SIGTERM: the run's last checkpoint stays for the next invocation
        say(interrupted_line(cfg, run_dir))
        raise
    finally:
        ddp_stop.WATCHER.stop()
        with contextlib.suppress(Exception):  # a sticky CUDA error must not replace the run's outcome
            release_run_memory(cfg.compile)  # the next run of this process starts from a clean device
    with contextlib.suppress(OSError):  # a stale error.txt is cosmetic; the summary is what counts
        (run_dir / "error.txt").unlink(missing_ok=True)
    if global_rank() == 0 and isinstance(summary, dict):
        from benchmark.reporting.tracking import log_run_summary

        try:
            log_run_summary(summary, run_dir)
        except Exception as exc:  # noqa: BLE001 - tracking is optional; the result is on disk
            say(f"warning: W&B summary for {run_dir.name} failed: {exc}")
    again = isinstance(summary, dict) and "scored_again" in summary
    return Outcome(
        cfg.run_name(), "trained", time.perf_counter() - start, dice=outer_dice(summary), scored_again=again
    )


def run_one(
    cfg: TrainConfig, data_dir: Path, results_dir: Path, fit: Callable, stale_after_s: float | None = None
) -> Outcome:
    """Claim, train and release one run: the unit of work of every executor (local loop, workers).

    "held" when another live process holds the run, "skipped" when it was completed meanwhile.
    """
    run_dir = Path(results_dir) / "runs" / cfg.run_name()
    try:
        lock = claim(run_dir, stale_after_s)
    except OSError as exc:
        return Outcome(
            cfg.run_name(), "failed", error=f"{run_dir}: cannot claim the run ({exc.strerror or exc})"
        )
    if lock is None:
        holder = read_lock(run_dir)
        return Outcome(
            cfg.run_name(), "held", error=f"held by {holder.describe() if holder else 'another process'}"
        )
    with lock:
        if lock.took_over:
            say(f"{run_dir / LOCK_NAME}: taking over a stale lock ({lock.took_over})")
        if is_complete(run_dir, cfg.hash()):
            return Outcome(cfg.run_name(), "skipped")
        ddp_stop.WATCHER.in_flight = lock  # released by the DDP watcher if it has to end the job
        try:
            outcome = _train_one(cfg, data_dir, run_dir, fit)
        finally:
            ddp_stop.WATCHER.in_flight = None
        if lock.lost:
            say(f"warning: {run_dir / LOCK_NAME} was taken over while {cfg.run_name()} trained")
    return outcome


def _follow_rank0(
    cfg: TrainConfig, later: Sequence[TrainConfig], data_dir: Path, runs: Path, fit: Callable
) -> Outcome:
    """A DDP rank > 0 trains exactly the runs its rank 0 claimed (``$NERVE_BENCH_LOCK_OWNER``: passed
    on by Lightning's launcher, or read from rank 0's record, ``rank0.follower_owner``)."""
    run_dir, later_dirs = runs / cfg.run_name(), [runs / c.run_name() for c in later]
    while True:
        owner = os.environ[OWNER_ENV]
        done, ended = partial(is_complete, run_dir, cfg.hash()), partial(rank0.ended, runs.parent, owner)
        try:
            claimed = follow(run_dir, owner, later_dirs, done, ended)
        except rank0.OwnerChanged as changed:  # the record read first was not this launch's
            rank0.adopt(runs.parent, changed.owner)
            continue
        return _train_one(cfg, data_dir, run_dir, fit) if claimed else Outcome(cfg.run_name(), "skipped")


def drop_kept_resume_state(runs: Path, done: list[TrainConfig]) -> None:
    """The last.ckpt that complete runs still hold (written by an earlier version, or left by a kill
    between the summary and its deletion): rank 0 replaces them by trained.json, as a finishing run
    does (:mod:`benchmark.training.finished`)."""
    if global_rank() != 0:
        return
    from benchmark.evaluation.finalize import training_facts
    from benchmark.training.finished import drop_resume_state

    for cfg in done:
        run_dir = runs / cfg.run_name()
        # A summary removed meanwhile, or without the facts (older): last.ckpt stays, resumable.
        with contextlib.suppress(DataError, KeyError, TypeError):
            if (run_dir / LAST_CKPT).is_file():
                drop_resume_state(run_dir, cfg.hash(), training_facts(read_summary(run_dir)))


def _announce(tag: str, outcome: Outcome, runs: Path) -> None:
    if outcome.status == "trained":
        say(f"{tag} {finished_line(outcome)}")
    elif outcome.status == "held":
        say(f"{tag} skipped {outcome.run}: {outcome.error}")
    elif outcome.status == "skipped":
        say(f"{tag} skipped {outcome.run}: completed by another process")
    else:
        error_txt = runs / outcome.run / "error.txt"
        see = f" (see {error_txt})" if error_txt.is_file() else ""
        say(f"{tag} FAILED {outcome.run}: {outcome.error}{see}")


def open_grid(
    grid: list[TrainConfig], data_dir: Path, results_dir: Path, data_hash: str | None
) -> tuple[list[TrainConfig], list[Outcome]]:
    """Before a grid's first run (either executor): the results directory checked against the data
    (``data_hash``), the complete runs' resume state dropped and said; the runs left to train, and
    the complete ones as "skipped" outcomes."""
    runs = results_dir / "runs"
    done = [c for c in grid if is_complete(runs / c.run_name(), c.hash())]
    if data_hash is not None:
        from benchmark.grid_checks import check_same_data  # torch and the split code: not for `say`

        check_same_data(results_dir, data_dir, data_hash, [c.run_name() for c in grid])
    drop_kept_resume_state(runs, done)
    if done:
        say(f"{len(done)}/{len(grid)} runs already complete (skipped)")
    return [c for c in grid if c not in done], [Outcome(c.run_name(), "skipped") for c in done]


def run_grid(
    grid: list[TrainConfig],
    data_dir: Path,
    results_dir: Path,
    fit: Callable | None = None,
    data_hash: str | None = None,
    stale_after_s: float | None = None,
) -> list[Outcome]:
    """Train every config not already complete and not held by another process; print
    ``[i/N] ... elapsed, ETA`` before each run and one :func:`finished_line` after it."""
    if fit is None:
        from benchmark.pipeline import fit
    todo, outcomes = open_grid(grid, data_dir, results_dir, data_hash)
    record = rank0.start(results_dir, any(c.world_size() > 1 for c in grid), bool(todo))
    try:
        _run_todo(todo, outcomes, data_dir, results_dir, fit, stale_after_s)
    finally:
        rank0.withdraw(record)
    if all(c.world_size() == 1 for c in todo):  # DDP ranks would have to agree on the retries
        retry_released(todo, outcomes, data_dir, results_dir, fit, stale_after_s)
    return outcomes


def _run_todo(
    todo: list[TrainConfig],
    outcomes: list[Outcome],
    data_dir: Path,
    results_dir: Path,
    fit: Callable,
    stale_after_s: float | None,
) -> None:
    """The grid loop: rank 0 claims and trains each run, ranks > 0 follow it; ``outcomes`` grows."""
    runs, start, times = results_dir / "runs", time.perf_counter(), list[float]()
    for i, cfg in enumerate(todo, start=1):
        stop.raise_pending()  # a SIGTERM a finalizer swallowed during the last run stops the grid here
        elapsed = time.perf_counter() - start
        eta = clock(sum(times) / len(times) * (len(todo) - i + 1)) if times else "?"
        tag = f"[{i}/{len(todo)}]"
        say(f"{tag} {cfg.model} fold {cfg.fold} seed {cfg.seed} | elapsed {clock(elapsed)}, ETA {eta}")
        if global_rank() == 0:
            outcome = run_one(cfg, data_dir, results_dir, fit, stale_after_s)
        else:
            outcome = _follow_rank0(cfg, todo[i:], data_dir, runs, fit)
        if paces(outcome):
            times.append(outcome.seconds)
        _announce(tag, outcome, runs)
        if outcome.no_space:
            raise stop_for_space(outcome.no_space, outcome.run)
        outcomes.append(outcome)


def retry_released(
    grid: list[TrainConfig],
    outcomes: list[Outcome],
    data_dir: Path,
    results_dir: Path,
    fit: Callable,
    stale_after_s: float | None = None,
) -> None:
    """Runs skipped as held whose holder stopped meanwhile (killed, crashed): claim them now, so this
    command's leaderboard does not miss them (``outcomes`` is updated in place)."""
    by_name = {c.run_name(): c for c in grid}
    for i, outcome in enumerate(outcomes):
        cfg = by_name.get(outcome.run)
        if (
            outcome.status != "held"
            or cfg is None
            or is_held(results_dir / "runs" / outcome.run, stale_after_s)
        ):
            continue
        stop.raise_pending()  # a SIGTERM a finalizer swallowed: no run is taken over after it
        if not is_complete(results_dir / "runs" / outcome.run, cfg.hash()):  # its holder finished it
            say(f"[retry] {outcome.run}: its holder stopped without finishing it; taking it over")
        outcomes[i] = run_one(cfg, data_dir, results_dir, fit, stale_after_s)
        _announce("[retry]", outcomes[i], results_dir / "runs")
        if outcomes[i].no_space:
            raise stop_for_space(outcomes[i].no_space, outcomes[i].run)


def missing_runs(grid: list[TrainConfig], outcomes: list[Outcome], results_dir: Path) -> list[str]:
    """Runs this command skipped as held that are still not complete, each with its holder's state."""
    by_name, missing = {c.run_name(): c for c in grid}, []
    for outcome in outcomes:
        run_dir = results_dir / "runs" / outcome.run
        if outcome.status != "held" or is_complete(run_dir, by_name[outcome.run].hash()):
            continue
        holder = is_held(run_dir)
        state = f"held by {holder.describe()}" if holder else "its holder stopped without finishing it"
        missing.append(f"{outcome.run} ({state})")
    return missing

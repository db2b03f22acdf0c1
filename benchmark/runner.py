"""The benchmark grid: models x folds x seeds, each through ``benchmark.pipeline.fit``, then the report.

Finished runs (a complete summary.json with the same config hash) are skipped and interrupted ones
resume from their last checkpoint inside ``fit``, so re-running the same command continues where it
stopped. Each run is claimed with a run lock (:mod:`benchmark.core.lock`) before training, so two
commands on one results directory share the grid instead of training everything twice; a run held
by another live process is skipped ("held"). One failing run is recorded in its ``error.txt`` (or,
when that cannot be written, on stderr) and does not stop the others.
Under DDP every rank executes this loop (Lightning re-launches the command); rank 0 claims the runs
and ranks > 0 follow its decisions; only rank 0 prints, writes error files and the report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark.core.config import (
    BenchmarkConfig,
    ConfigError,
    TrainConfig,
    apply_overrides,
    resolve_devices,
)
from benchmark.core.files import atomic_write
from benchmark.core.lock import LOCK_NAME, OWNER_ENV, claim, follow, owner_id, read_lock
from benchmark.core.summary import is_complete, read_summary
from datamodules.errors import DataError

SYNTHETIC_DIR = "_synthetic_data"
# The README's data path (the Makefile's DATA default): the only path that may be absent.
DEFAULT_DATA_DIR = Path("data/ultrasound-nerve-segmentation")
_SYNTH_KEYS = {"generator", "folds", "seeds", "train", "model_kwargs"}
_GENERATOR_KEYS = {"subjects", "per_subject", "n_test", "seed", "positive_fraction"}


@dataclass
class Outcome:
    run: str
    status: str  # "trained", "skipped" (complete), "held" (another live process has it) or "failed"
    seconds: float = 0.0
    error: str = ""
    dice: float | None = None  # outer-fold post-processed Kaggle Dice of a trained run


def global_rank() -> int:
    """This process's rank as torchrun/SLURM (RANK, SLURM_PROCID) or Lightning's launcher (LOCAL_RANK,
    NODE_RANK) export it. Callers only test ``== 0``: every process off node 0 counts as non-zero,
    so a node > 0 never claims runs or prints, even before Lightning has set its LOCAL_RANK."""
    for var in ("RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    local, node = (int(os.environ.get(v) or 0) if (os.environ.get(v) or "0").isdigit() else 0
                   for v in ("LOCAL_RANK", "NODE_RANK"))  # fmt: skip
    return local if node == 0 else node * 1024 + local


def say(message: str) -> None:
    if global_rank() == 0:
        print(message, flush=True)


def _synthetic_section(bench: BenchmarkConfig, source: str) -> dict[str, Any]:
    syn = bench.synthetic
    if not syn:
        raise ConfigError(f"{source}: no `synthetic:` section to fall back to")
    unknown = set(syn) - _SYNTH_KEYS
    bad_gen = set(syn.get("generator") or {}) - _GENERATOR_KEYS
    if unknown or bad_gen:
        allowed = f"allowed {sorted(_SYNTH_KEYS)} and generator: {sorted(_GENERATOR_KEYS)}"
        raise ConfigError(f"{source}: unknown synthetic keys {sorted(unknown | bad_gen)}; {allowed}")
    return syn


def synthetic_benchmark(bench: BenchmarkConfig, source: str = "config") -> BenchmarkConfig:
    """The CPU-sized fallback: ``synthetic.train`` overrides and optional ``folds``/``seeds``."""
    syn = _synthetic_section(bench, source)
    try:
        train = apply_overrides(bench.train, syn.get("train") or {})
    except ConfigError as exc:
        raise ConfigError(f"{source}: synthetic.train: {exc}") from None
    folds = tuple(int(f) for f in syn.get("folds", [f for f in bench.folds if f < train.n_folds]))
    seeds = tuple(int(s) for s in syn.get("seeds", bench.seeds))
    kwargs = {str(k): dict(v) for k, v in (syn.get("model_kwargs") or bench.model_kwargs).items()}
    return dataclasses.replace(bench, train=train, folds=folds, seeds=seeds, model_kwargs=kwargs)


def _generator_params(bench: BenchmarkConfig) -> dict[str, Any]:
    return dict(sorted((_synthetic_section(bench, "config").get("generator") or {}).items()))


def synthetic_data_dir(bench: BenchmarkConfig, results_dir: Path) -> Path:
    """``RESULTS/_synthetic_data/synthetic-<params hash>``: one directory per generator setting, so
    two configs (or two commands) sharing a results directory never replace each other's data."""
    tag = hashlib.sha256(json.dumps(_generator_params(bench), sort_keys=True).encode()).hexdigest()[:8]
    return results_dir / SYNTHETIC_DIR / f"synthetic-{tag}"


def _stamp_matches(out_dir: Path, params: dict[str, Any]) -> bool:
    try:
        return (out_dir / "train").is_dir() and json.loads((out_dir / "synthetic.json").read_text()) == params
    except (OSError, ValueError):  # missing or damaged stamp: regenerate
        return False


def ensure_synthetic(bench: BenchmarkConfig, out_dir: Path) -> Path:
    """Generate the synthetic data set into ``out_dir`` unless it exists with the same parameters.

    The data is generated in a temporary sibling and renamed into place, so a concurrent command
    sees either no directory or a complete one; if another process finished first, its copy wins.
    """
    from datamodules.synth import generate

    params = _generator_params(bench)
    if _stamp_matches(out_dir, params) or global_rank() != 0:
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        generate(tmp, **params)
        atomic_write(tmp / "synthetic.json", json.dumps(params, sort_keys=True) + "\n")
        if out_dir.exists() and not _stamp_matches(out_dir, params):
            shutil.rmtree(out_dir)  # a damaged leftover of this very setting (its name is the params hash)
        with contextlib.suppress(OSError):  # another process renamed its complete copy in first
            os.rename(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def uses_synthetic(data_dir: Path | None) -> bool:
    """True when no data directory was given, or only the README's default path and it is absent.

    Any other path is the user's: a typo must be an error, never a silent synthetic benchmark.
    """
    if data_dir is None:
        return not DEFAULT_DATA_DIR.exists()
    return not data_dir.exists() and data_dir.absolute() == DEFAULT_DATA_DIR.absolute()


def resolve_data(
    bench: BenchmarkConfig, data_dir: Path | None, results_dir: Path, generate: bool = True
) -> tuple[BenchmarkConfig, Path]:
    """The benchmark and data directory to run: ``data_dir`` (it must hold ``train/``; DataError naming
    it otherwise) or, per :func:`uses_synthetic`, the config's synthetic fallback, announced once.
    ``generate=False`` (``--dry-run``) only names the fallback directory and writes nothing."""
    if not uses_synthetic(data_dir):
        path = DEFAULT_DATA_DIR if data_dir is None else data_dir
        if not path.is_dir():
            raise DataError(path, "data directory not found (--data-dir / DATA): expected the Kaggle layout")
        if not (path / "train").is_dir():
            raise DataError(
                path, "no train/ directory (expected the Kaggle layout: train/, test/, train_masks.csv)"
            )
        return bench, path
    fallback = synthetic_benchmark(bench)
    out = synthetic_data_dir(bench, results_dir)
    why = "no --data-dir given" if data_dir is None else f"{data_dir} not found"
    say(
        f"{why}: running the embedded CPU benchmark on synthetic data in {out} "
        f"(the `synthetic:` section of the {bench.name} config)"
    )
    return fallback, ensure_synthetic(bench, out) if generate else out


def parse_list(text: str | None, kind: type = str) -> list | None:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        return [kind(t) for t in items]
    except ValueError:
        raise ConfigError(f"expected a comma-separated list of {kind.__name__}, got {text!r}") from None


def build_grid(
    bench: BenchmarkConfig,
    models: Sequence[str] | None = None,
    folds: Sequence[int] | None = None,
    seeds: Sequence[int] | None = None,
) -> list[TrainConfig]:
    """Every (model, fold, seed) TrainConfig, in model-major order; subsets override the config's.

    ``devices: auto`` becomes the device count each run will use, so run hashes tell 1 GPU from 8.
    """
    grid, train = [], resolve_devices(bench.train, bench.run_gpus())
    for model in models or bench.models:
        kwargs = {**bench.train.model_kwargs, **bench.model_kwargs.get(model, {})}
        for fold in bench.folds if folds is None else folds:
            for seed in bench.seeds if seeds is None else seeds:
                try:
                    grid.append(
                        dataclasses.replace(
                            train, model=model, model_kwargs=kwargs, fold=int(fold), seed=int(seed)
                        )
                    )
                except ConfigError as exc:
                    raise ConfigError(f"{bench.name}: {model} fold {fold} seed {seed}: {exc}") from None
    return grid


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
            print(f"error: {run_dir / 'error.txt'}: cannot record the failure ({err.strerror or err}); "
                  f"{run_dir.name} failed with {line}", file=sys.stderr, flush=True)  # fmt: skip
    return line


def outer_dice(summary: Any) -> float | None:
    """The outer fold's post-processed Kaggle Dice of a summary, if it has one."""
    try:
        value = summary["metrics"]["post"]["kaggle_dice"]
    except (KeyError, TypeError):
        return None
    return float(value) if isinstance(value, (int, float)) else None


def finished_line(run: str, seconds: float, dice: float | None) -> str:
    """The one line printed per finished run, by every executor: name, seconds, outer Kaggle Dice."""
    return f"done {run} in {seconds:.1f} s: outer Kaggle Dice {'n/a' if dice is None else f'{dice:.4f}'}"


def _train_one(cfg: TrainConfig, data_dir: Path, run_dir: Path, fit: Callable) -> Outcome:
    start = time.perf_counter()
    try:
        summary = fit(cfg, data_dir, run_dir)
    except Exception as exc:  # noqa: BLE001 - one run's failure must not lose the others
        return Outcome(cfg.run_name(), "failed", time.perf_counter() - start, _record_failure(run_dir, exc))
    with contextlib.suppress(OSError):  # a stale error.txt is cosmetic; the summary is what counts
        (run_dir / "error.txt").unlink(missing_ok=True)
    if global_rank() == 0 and isinstance(summary, dict):
        _log_tracking(summary, run_dir)
    return Outcome(cfg.run_name(), "trained", time.perf_counter() - start, dice=outer_dice(summary))


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
        outcome = _train_one(cfg, data_dir, run_dir, fit)
        if lock.lost:
            say(f"warning: {run_dir / LOCK_NAME} was taken over while {cfg.run_name()} trained")
    return outcome


def _follow_rank0(
    cfg: TrainConfig,
    later: Sequence[TrainConfig],
    data_dir: Path,
    runs: Path,
    fit: Callable,
    stale: float | None,
) -> Outcome:
    """A DDP rank > 0 trains exactly the runs its rank 0 claimed (``$NERVE_BENCH_LOCK_OWNER``, which
    Lightning's launcher passes on); without an owner (e.g. torchrun) it trains every open run."""
    run_dir, owner = runs / cfg.run_name(), os.environ.get(OWNER_ENV)
    if owner and not follow(
        run_dir, owner, [runs / c.run_name() for c in later], lambda: is_complete(run_dir, cfg.hash()), stale
    ):
        return Outcome(cfg.run_name(), "skipped")
    return _train_one(cfg, data_dir, run_dir, fit)


def _log_tracking(summary: dict[str, Any], run_dir: Path) -> None:
    from benchmark.reporting.tracking import log_run_summary

    try:
        log_run_summary(summary, run_dir)
    except Exception as exc:  # noqa: BLE001 - tracking is optional; the result is on disk
        say(f"warning: W&B summary for {run_dir.name} failed: {exc}")


def check_same_data(runs: Path, done: list[TrainConfig], data_dir: Path, current: str) -> None:
    """Refuse to skip runs that were computed on other data (the config hash does not cover the data)."""
    for cfg in done:
        saved = (read_summary(runs / cfg.run_name()).get("dataset") or {}).get("content_hash")
        if saved != current:
            raise ConfigError(
                f"{runs / cfg.run_name()}: finished on data with content hash {saved}, but {data_dir} has "
                f"{current}; use another --results-dir for this data set"
            )


def check_split_seed(results_dir: Path, split_seed: int) -> None:
    """Refuse a results directory whose runs used another ``split_seed``: out-of-fold scores need one
    fold assignment for the whole board (``seed`` may vary: it replicates initialisation only)."""
    for path in sorted((results_dir / "runs").glob("*/summary.json")):
        try:
            saved = (read_summary(path).get("config") or {}).get("split_seed")
        except DataError:
            continue  # unreadable or older summaries are reported by `report`, not here
        if saved is not None and int(saved) != int(split_seed):
            raise ConfigError(
                f"{path.parent}: made with split_seed {saved}, but this benchmark uses {split_seed}; "
                "one results directory holds one fold assignment (use another --results-dir)"
            )


def _announce(tag: str, outcome: Outcome, runs: Path) -> None:
    if outcome.status == "trained":
        say(f"{tag} {finished_line(outcome.run, outcome.seconds, outcome.dice)}")
    elif outcome.status == "held":
        say(f"{tag} skipped {outcome.run}: {outcome.error}")
    elif outcome.status == "skipped":
        say(f"{tag} skipped {outcome.run}: completed by another process")
    else:
        error_txt = runs / outcome.run / "error.txt"
        see = f" (see {error_txt})" if error_txt.is_file() else ""
        say(f"{tag} FAILED {outcome.run}: {outcome.error}{see}")


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
    runs = results_dir / "runs"
    done = [c for c in grid if is_complete(runs / c.run_name(), c.hash())]
    if done and data_hash is not None:
        check_same_data(runs, done, data_dir, data_hash)
    todo = [c for c in grid if c not in done]
    outcomes = [Outcome(c.run_name(), "skipped") for c in grid if c not in todo]
    if outcomes:
        say(f"{len(outcomes)}/{len(grid)} runs already complete (skipped)")
    if global_rank() == 0:
        os.environ[OWNER_ENV] = owner_id()  # inherited by the DDP ranks Lightning launches
    start, times = time.perf_counter(), []
    for i, cfg in enumerate(todo, start=1):
        elapsed = time.perf_counter() - start
        eta = clock(sum(times) / len(times) * (len(todo) - i + 1)) if times else "?"
        tag = f"[{i}/{len(todo)}]"
        say(f"{tag} {cfg.model} fold {cfg.fold} seed {cfg.seed} | elapsed {clock(elapsed)}, ETA {eta}")
        if global_rank() == 0:
            outcome = run_one(cfg, data_dir, results_dir, fit, stale_after_s)
        else:
            outcome = _follow_rank0(cfg, todo[i:], data_dir, runs, fit, stale_after_s)
        if outcome.status in ("trained", "failed"):
            times.append(outcome.seconds)
        _announce(tag, outcome, runs)
        outcomes.append(outcome)
    return outcomes

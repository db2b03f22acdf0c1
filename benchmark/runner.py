"""The benchmark grid: models x folds x seeds, each through ``benchmark.pipeline.fit``, then the report.

Finished runs (a complete summary.json with the same config hash) are skipped and interrupted ones
resume from their last checkpoint inside ``fit``, so re-running the same command continues where it
stopped. One failing run is recorded in its ``error.txt`` and does not stop the others.
Under DDP every rank executes this loop (Lightning re-launches the command); only rank 0 prints,
writes error files and the report.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark.core.config import BenchmarkConfig, ConfigError, TrainConfig, apply_overrides
from benchmark.core.summary import is_complete, read_summary

SYNTHETIC_DIR = "_synthetic_data"
_SYNTH_KEYS = {"generator", "folds", "seeds", "train", "model_kwargs"}
_GENERATOR_KEYS = {"subjects", "per_subject", "n_test", "seed", "positive_fraction"}


@dataclass
class Outcome:
    run: str
    status: str  # "trained", "skipped" or "failed"
    seconds: float = 0.0
    error: str = ""


def global_rank() -> int:
    """This process's rank as Lightning's launchers (and torchrun/SLURM) export it."""
    for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


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


def ensure_synthetic(bench: BenchmarkConfig, out_dir: Path) -> Path:
    """Generate the synthetic data set into ``out_dir`` unless it exists with the same parameters."""
    from datamodules.synth import generate

    params = dict(sorted((_synthetic_section(bench, "config").get("generator") or {}).items()))
    stamp = out_dir / "synthetic.json"
    if (out_dir / "train").is_dir() and stamp.is_file() and json.loads(stamp.read_text()) == params:
        return out_dir
    if global_rank() == 0:
        shutil.rmtree(out_dir, ignore_errors=True)
        generate(out_dir, **params)
        stamp.write_text(json.dumps(params, sort_keys=True) + "\n")
    return out_dir


def resolve_data(bench: BenchmarkConfig, data_dir: Path, results_dir: Path) -> tuple[BenchmarkConfig, Path]:
    """Use ``data_dir`` when it holds ``train/``; else say so once and fall back to synthetic data."""
    if (data_dir / "train").is_dir():
        return bench, data_dir
    fallback = synthetic_benchmark(bench)
    out = results_dir / SYNTHETIC_DIR
    say(
        f"no train/ in {data_dir}: running the embedded CPU benchmark on synthetic data in {out} "
        f"(the `synthetic:` section of the {bench.name} config)"
    )
    return fallback, ensure_synthetic(bench, out)


def _parse_list(text: str | None, kind: type = str) -> list | None:
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
    """Every (model, fold, seed) TrainConfig, in model-major order; subsets override the config's."""
    grid = []
    for model in models or bench.models:
        kwargs = {**bench.train.model_kwargs, **bench.model_kwargs.get(model, {})}
        for fold in bench.folds if folds is None else folds:
            for seed in bench.seeds if seeds is None else seeds:
                try:
                    grid.append(
                        dataclasses.replace(
                            bench.train, model=model, model_kwargs=kwargs, fold=int(fold), seed=int(seed)
                        )
                    )
                except ConfigError as exc:
                    raise ConfigError(f"{bench.name}: {model} fold {fold} seed {seed}: {exc}") from None
    return grid


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return (
        f"{seconds // 3600}h{seconds // 60 % 60:02d}m{seconds % 60:02d}s"
        if seconds >= 3600
        else (f"{seconds // 60}m{seconds % 60:02d}s")
    )


def _record_failure(run_dir: Path, exc: BaseException) -> str:
    if global_rank() == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "error.txt").write_text("".join(traceback.format_exception(exc)))
    return f"{type(exc).__name__}: {exc}"


def _train_one(cfg: TrainConfig, data_dir: Path, run_dir: Path, fit: Callable) -> Outcome:
    start = time.perf_counter()
    try:
        summary = fit(cfg, data_dir, run_dir)
    except Exception as exc:  # noqa: BLE001 - one run's failure must not lose the others
        return Outcome(cfg.run_name(), "failed", time.perf_counter() - start, _record_failure(run_dir, exc))
    (run_dir / "error.txt").unlink(missing_ok=True)
    if global_rank() == 0 and isinstance(summary, dict):
        _log_tracking(summary, run_dir)
    return Outcome(cfg.run_name(), "trained", time.perf_counter() - start)


def _log_tracking(summary: dict[str, Any], run_dir: Path) -> None:
    from benchmark.reporting.tracking import log_run_summary

    try:
        log_run_summary(summary, run_dir)
    except Exception as exc:  # noqa: BLE001 - tracking is optional; the result is on disk
        say(f"warning: W&B summary for {run_dir.name} failed: {exc}")


def _check_same_data(runs: Path, done: list[TrainConfig], data_dir: Path, current: str) -> None:
    """Refuse to skip runs that were computed on other data (the config hash does not cover the data)."""
    for cfg in done:
        saved = (read_summary(runs / cfg.run_name()).get("dataset") or {}).get("content_hash")
        if saved != current:
            raise ConfigError(
                f"{runs / cfg.run_name()}: finished on data with content hash {saved}, but {data_dir} has "
                f"{current}; use another --results-dir for this data set"
            )


def run_grid(
    grid: list[TrainConfig],
    data_dir: Path,
    results_dir: Path,
    fit: Callable | None = None,
    data_hash: str | None = None,
) -> list[Outcome]:
    """Train every config not already complete; print ``[i/N] ... elapsed, ETA`` before each."""
    if fit is None:
        from benchmark.pipeline import fit
    runs = results_dir / "runs"
    done = [c for c in grid if is_complete(runs / c.run_name(), c.hash())]
    if done and data_hash is not None:
        _check_same_data(runs, done, data_dir, data_hash)
    todo = [c for c in grid if c not in done]
    outcomes = [Outcome(c.run_name(), "skipped") for c in grid if c not in todo]
    if outcomes:
        say(f"{len(outcomes)}/{len(grid)} runs already complete (skipped)")
    start, times = time.perf_counter(), []
    for i, cfg in enumerate(todo, start=1):
        elapsed = time.perf_counter() - start
        eta = _clock(sum(times) / len(times) * (len(todo) - i + 1)) if times else "?"
        tag = f"[{i}/{len(todo)}]"
        say(f"{tag} {cfg.model} fold {cfg.fold} seed {cfg.seed} | elapsed {_clock(elapsed)}, ETA {eta}")
        outcome = _train_one(cfg, data_dir, runs / cfg.run_name(), fit)
        times.append(outcome.seconds)
        if outcome.status == "failed":
            say(f"{tag} FAILED {outcome.run}: {outcome.error} (see {runs / outcome.run / 'error.txt'})")
        outcomes.append(outcome)
    return outcomes

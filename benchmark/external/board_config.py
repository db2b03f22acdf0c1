"""The benchmark config an outside method is put on the board with (its split, its board group).

An imported run must carry the same benchmark config as the board's runs (``leaderboard`` groups
runs by it) and must be split by it. So with ``--config`` that file (and ``--set``) decides, like
``run``; without it, a results directory that already holds complete runs lends the config of its
board (the most common benchmark config there); an empty one falls back to ``run``'s default file.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from benchmark.core.config import (
    ConfigError,
    TrainConfig,
    apply_overrides,
    load_benchmark_config,
)
from benchmark.core.overrides import apply_benchmark_overrides, parse_set_args
from benchmark.core.summary import read_summary
from benchmark.core.world import resolve_auto_precision, resolve_devices
from datamodules.errors import DataError

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"


def complete_summaries(results_dir: Path | None) -> list[tuple[Path, dict[str, Any]]]:
    """(path, summary) of every readable, complete ``runs/*/summary.json`` (others are `report`'s concern)."""
    if results_dir is None:
        return []
    out = []
    for path in sorted((results_dir / "runs").glob("*/summary.json")):
        try:
            summary = read_summary(path)
        except DataError:
            continue
        if summary.get("status") == "complete":
            out.append((path, summary))
    return out


def _from_file(config: Path, overrides: dict[str, Any]) -> TrainConfig:
    bench = apply_benchmark_overrides(load_benchmark_config(config), overrides)
    return resolve_auto_precision(resolve_devices(bench.train, bench.run_gpus()), bench.run_gpus())


def _from_board(summaries: list[dict[str, Any]], overrides: dict[str, Any], where: Path) -> TrainConfig:
    from benchmark.reporting.leaderboard import select_runs

    kept, _ = select_runs(summaries)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    saved = {k: v for k, v in (kept[0].get("config") or {}).items() if k in known}
    try:
        return apply_overrides(TrainConfig(**saved), overrides)
    except (ConfigError, TypeError) as exc:
        raise ConfigError(
            f"{where}: the config of its runs cannot be read back ({exc}); pass --config"
        ) from None


def train_config(
    config: Path | None, sets: list[str] | None, results_dir: Path | None = None, data_hash: str | None = None
) -> TrainConfig:
    """The benchmark's TrainConfig: ``--config`` (+ ``--set``), else the results directory's board (of
    the data ``data_hash`` when given: not the synthetic fallback's runs beside it), else the default
    config."""
    overrides = parse_set_args(sets)
    if config is not None:
        return _from_file(config, overrides)
    summaries = [s for _, s in complete_summaries(results_dir)]
    if data_hash is not None:
        summaries = [s for s in summaries if (s.get("dataset") or {}).get("content_hash") == data_hash]
    if summaries:
        return _from_board(summaries, overrides, results_dir / "runs")
    return _from_file(DEFAULT_CONFIG, overrides)

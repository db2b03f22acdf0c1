"""`run` command: the benchmark grid (models x folds x seeds), then the leaderboard and plots."""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from benchmark.core.config import BenchmarkConfig, TrainConfig

HELP = "run the benchmark grid and rebuild the leaderboard (skips finished runs, resumes interrupted ones)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="benchmark/configs/default.yaml", help="benchmark YAML")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path("data/ultrasound-nerve-segmentation"),
        help="Kaggle layout (train/); without train/ the config's synthetic fallback runs",
    )
    parser.add_argument("--results-dir", type=Path, default=Path("results"))
    parser.add_argument("--models", help="comma-separated subset/override of the config's models")
    parser.add_argument("--folds", help="comma-separated fold ids, e.g. 0,1")
    parser.add_argument("--seeds", help="comma-separated seeds")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        metavar="KEY=VALUE",
        help="override a train config field (repeatable)",
    )
    parser.add_argument("--dry-run", action="store_true", help="list the grid and exit")
    parser.add_argument("--no-report", action="store_true", help="skip rebuilding the leaderboard")


def _load(args: argparse.Namespace) -> tuple[BenchmarkConfig, Path, list[TrainConfig]]:
    from benchmark import runner
    from benchmark.core.config import apply_overrides, load_benchmark_config, parse_set_args

    bench = load_benchmark_config(args.config)
    bench = dataclasses.replace(bench, train=apply_overrides(bench.train, parse_set_args(args.overrides)))
    bench, data_dir = runner.resolve_data(bench, args.data_dir, args.results_dir)
    if bench.train.logger == "wandb":  # one W&B group per invocation (not part of the config hash)
        group = f"{bench.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        bench = dataclasses.replace(bench, train=dataclasses.replace(bench.train, wandb_group=group))
    grid = runner.build_grid(
        bench,
        runner._parse_list(args.models),
        runner._parse_list(args.folds, int),
        runner._parse_list(args.seeds, int),
    )
    import models  # registers every architecture: a misspelt name fails here, not in N runs

    for name in dict.fromkeys(c.model for c in grid):
        models.get_info(name)
    return bench, data_dir, grid


def _dry_run(grid: list[TrainConfig], results_dir: Path) -> int:
    from benchmark.core.summary import is_complete

    for i, cfg in enumerate(grid, start=1):
        done = is_complete(results_dir / "runs" / cfg.run_name(), cfg.hash())
        print(
            f"[{i}/{len(grid)}] {cfg.model} fold {cfg.fold} seed {cfg.seed} -> {cfg.run_name()}"
            f"{' (complete)' if done else ''}"
        )
    return 0


def run(args: argparse.Namespace) -> int:
    from benchmark import runner

    bench, data_dir, grid = _load(args)
    if args.dry_run:
        return _dry_run(grid, args.results_dir)
    from datamodules.kaggle import check_dataset

    # Validates every file up front (one clear error, not 45 failed runs) and fingerprints the data.
    data_hash = check_dataset(data_dir)["content_hash"]
    start = time.perf_counter()
    outcomes = runner.run_grid(grid, data_dir, args.results_dir, data_hash=data_hash)
    trained = sum(o.status == "trained" for o in outcomes)
    runner.say(
        f"grid done in {runner._clock(time.perf_counter() - start)}: {trained} trained, "
        f"{sum(o.status == 'skipped' for o in outcomes)} skipped"
    )
    if not args.no_report and runner.global_rank() == 0:
        _report(bench, args.results_dir)
    failed = [o for o in outcomes if o.status == "failed"]
    for o in failed:
        runner.say(f"FAILED {o.run}: {o.error}")
    if failed:
        runner.say(f"{len(failed)} of {len(outcomes)} runs failed (details in results runs/<run>/error.txt)")
    return 1 if failed else 0


def _report(bench: BenchmarkConfig, results_dir: Path) -> None:
    from benchmark.reporting.report import build_report
    from benchmark.reporting.tracking import log_leaderboard
    from datamodules.errors import DataError

    try:
        board = build_report(results_dir)
    except DataError as exc:
        print(f"no leaderboard: {exc}")
        return
    print(f"leaderboard: {results_dir / 'leaderboard.md'} (plots in {results_dir / 'plots'})")
    try:
        log_leaderboard(board, bench.train, results_dir, results_dir / "plots" / "leaderboard.png")
    except Exception as exc:  # noqa: BLE001 - tracking is optional
        print(f"warning: W&B leaderboard upload failed: {exc}")

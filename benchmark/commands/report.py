"""`report` command: rebuild the leaderboard files and plots from the run summaries alone."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

EXIT_BAD_INPUT = 2  # damaged summaries, left out of the board it wrote (README "Exit codes")
HELP = "rebuild leaderboard.{md,csv,json,tex} and plots/*.png from RESULTS/runs/*/summary.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--results",
        "--results-dir",
        dest="results",
        type=Path,
        default=Path("results"),
        help="results directory",
    )
    parser.add_argument("--no-plots", action="store_true", help="write the tables only")
    parser.add_argument(
        "--benchmark",
        metavar="HASH",
        help="the board of this benchmark (config hash, or its start; the board's header shows it) "
        "where the directory holds complete runs of several (default: the one with the most runs)",
    )
    parser.add_argument(
        "--wandb",
        action="store_true",
        help="log the board to W&B as `run` does: a leaderboard run in the group benchmark-<hash> of "
        "its runs (offline unless WANDB_API_KEY is set); after `import` or `nnunet` added rows",
    )


def run(args: argparse.Namespace) -> int:
    """0; 2 when runs were left out (damaged summaries), as when none is readable; 1 when the files
    could not be written, or ``--wandb`` could not log the board."""
    from benchmark.grid_checks import check_logger
    from benchmark.reporting.report import build_report, left_out_line
    from datamodules.errors import DataError

    if not args.results.is_dir():
        raise DataError(args.results, "results directory not found (it holds runs/<run>/summary.json)")
    tracking = _wandb_config(args.wandb)
    if tracking is not None:
        check_logger([tracking])  # before the board: one line, exit 2
    try:
        board = build_report(args.results, plots=not args.no_plots, prefer=args.benchmark)
    except OSError as exc:  # read-only directory, full disk: one line, the old files stay whole
        print(f"error: {exc.filename or args.results}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(
        f"leaderboard: {len(board['rows'])} ranked and {len(board['incomplete'])} incomplete models "
        f"from {board['header']['n_runs']} runs -> {args.results / 'leaderboard.md'}"
    )
    logged = _log_board(board, tracking, args.results) if tracking is not None else 0
    left_out = left_out_line(board)
    if left_out:
        print(left_out, file=sys.stderr)
    return EXIT_BAD_INPUT if left_out else logged


def _wandb_config(wanted: bool) -> Any:
    """The TrainConfig that ``--wandb`` logs with (its group is set from the board), or None."""
    from benchmark.core.config import TrainConfig

    return TrainConfig(model="leaderboard", logger="wandb") if wanted else None


def _log_board(board: dict[str, Any], cfg: Any, results: Path) -> int:
    """The board as ``run`` logs it, in the group of its benchmark (``run`` names it by the same hash);
    1 when W&B failed."""
    import dataclasses

    from benchmark.reporting.tracking import benchmark_group, log_leaderboard

    hashes = board["header"]["benchmark_hash"]
    group = benchmark_group(hashes[0]) if len(hashes) == 1 else None
    try:
        log_leaderboard(
            board, dataclasses.replace(cfg, wandb_group=group), results, results / "plots" / "leaderboard.png"
        )
    except Exception as exc:  # noqa: BLE001 - W&B's own errors: one line, the board's files are written
        print(f"error: W&B: the board was not logged: {exc}", file=sys.stderr)
        return 1
    where = group or "(none: several benchmarks)"
    print(f"W&B: the board logged in group {where} (files in {results / 'wandb'})")
    return 0

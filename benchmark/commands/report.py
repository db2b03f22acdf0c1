"""`report` command: rebuild the leaderboard files and plots from the run summaries alone."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

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


def run(args: argparse.Namespace) -> int:
    """0; 2 when runs were left out (damaged summaries), as when none is readable; 1 when the files
    could not be written."""
    from benchmark.reporting.report import build_report, left_out_line
    from datamodules.errors import DataError

    if not args.results.is_dir():
        raise DataError(args.results, "results directory not found (it holds runs/<run>/summary.json)")
    try:
        board = build_report(args.results, plots=not args.no_plots, prefer=args.benchmark)
    except OSError as exc:  # read-only directory, full disk: one line, the old files stay whole
        print(f"error: {exc.filename or args.results}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(
        f"leaderboard: {len(board['rows'])} ranked and {len(board['incomplete'])} incomplete models "
        f"from {board['header']['n_runs']} runs -> {args.results / 'leaderboard.md'}"
    )
    left_out = left_out_line(board)
    if left_out:
        print(left_out, file=sys.stderr)
    return EXIT_BAD_INPUT if left_out else 0

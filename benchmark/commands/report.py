"""`report` command: rebuild the leaderboard files and plots from the run summaries alone."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "rebuild leaderboard.{md,csv,json} and plots/*.png from RESULTS/runs/*/summary.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", type=Path, default=Path("results"), help="results directory")
    parser.add_argument("--no-plots", action="store_true", help="write the tables only")


def run(args: argparse.Namespace) -> int:
    from benchmark.reporting.report import build_report

    board = build_report(args.results, plots=not args.no_plots)
    print(
        f"leaderboard: {len(board['rows'])} models from {board['header']['n_runs']} runs -> "
        f"{args.results / 'leaderboard.md'}"
    )
    return 0

"""`predict` command (not implemented yet)."""

from __future__ import annotations

import argparse

HELP = "predict (not implemented yet)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise SystemExit("predict: not implemented yet")

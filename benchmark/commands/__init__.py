"""The CLI's sub-commands, one module each; the argument they share is defined here once."""

from __future__ import annotations

import argparse


def add_set_option(parser: argparse.ArgumentParser, help: str) -> None:
    """``--set KEY=VALUE`` (repeatable), collected as ``args.overrides``: a list of raw pairs that
    ``benchmark.core.overrides.parse_set_args`` splits and the field types parse."""
    parser.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE", help=help)

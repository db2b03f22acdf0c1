"""``python -m benchmark`` / ``nerve-bench``: one sub-command per module in benchmark/commands.

Each command module defines ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int`` and
keeps heavy imports (torch, lightning) inside ``run`` so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Order here is the order in --help.
COMMANDS = ("synth", "data", "models", "fit", "evaluate", "run", "report", "predict", "speed")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nerve-bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"benchmark.commands.{name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    from datamodules.errors import NerveBenchError
    from models.registry import ModelError

    return (NerveBenchError, ModelError)


def os_error_line(exc: OSError) -> str:
    """``PATH: reason`` in one line (no traceback), naming both paths of a failed rename."""
    reason = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
    if exc.filename is None:
        return reason
    where = f"{exc.filename} -> {exc.filename2}" if exc.filename2 is not None else f"{exc.filename}"
    return f"{where}: {reason}"


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except _user_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # read-only or full disk, a directory where a file goes: a runtime failure
        print(f"error: {os_error_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: finished runs are kept; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

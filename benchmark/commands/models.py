"""`models` command: every model with its trainable parameters, GFLOPs and paper/source."""

from __future__ import annotations

import argparse
import json

HELP = "list the model zoo: parameters, GFLOPs at 1x1x256x256 and paper/source"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="print a JSON list of {name, params, gflops, paper}"
    )
    parser.add_argument(
        "--include",
        default="",
        metavar="NAMES",
        help="comma-separated extra names to describe too, e.g. smp:unet:tu-resnet18,smp:segformer:mit_b0",
    )


def _names(include: str) -> list[str]:
    from models import list_models

    names = list_models()
    extra = [n.strip() for n in include.split(",") if n.strip()]
    return names + [n for n in extra if n not in names]


def _table(rows: list[dict]) -> str:
    width = max(len(r["name"]) for r in rows)
    lines = [f"{'model':<{width}}  {'params (M)':>10}  {'GFLOPs':>8}  paper / source"]
    for r in rows:
        lines.append(f"{r['name']:<{width}}  {r['params'] / 1e6:>10.2f}  {r['gflops']:>8.2f}  {r['paper']}")
    lines.append("GFLOPs: one forward pass on 1x1x256x256, a multiply-add counted as 2 FLOPs.")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from models.info import describe

    rows = [describe(name) for name in _names(args.include)]
    print(json.dumps(rows, indent=2) if args.json else _table(rows))
    return 0

"""`models` command: every model with its parameters, GFLOPs, paper/source and the package it came from."""

from __future__ import annotations

import argparse
import json

HELP = "list the model zoo and installed plugins: parameters, GFLOPs at 1x1x256x256, paper, package"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="print a JSON list of {name, params, gflops, paper, package}"
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
    pkg = max(len("package"), *(len(r["package"]) for r in rows))
    lines = [f"{'model':<{width}}  {'params (M)':>10}  {'GFLOPs':>8}  {'package':<{pkg}}  paper / source"]
    for r in rows:
        lines.append(
            f"{r['name']:<{width}}  {r['params'] / 1e6:>10.2f}  {r['gflops']:>8.2f}  "
            f"{r['package']:<{pkg}}  {r['paper']}"
        )
    lines.append("GFLOPs: one forward pass on 1x1x256x256, a multiply-add counted as 2 FLOPs.")
    return "\n".join(lines)


def describe_row(name: str) -> dict:
    """``models.info.describe`` plus the package that registered the model."""
    from models import get_info
    from models.info import describe

    return {**describe(name), "package": get_info(name).package}


def run(args: argparse.Namespace) -> int:
    from models import list_models
    from models.plugins import plugin_problems

    rows = [describe_row(name) for name in _names(args.include)]
    print(json.dumps(rows, indent=2) if args.json else _table(rows))
    outside = [n for n in list_models(extras=True) if n not in {r["name"] for r in rows}]
    if outside and not args.json:
        print(
            f"also registered, outside the default set (each needs an optional extra; --include NAME "
            f"describes it, models: in a config runs it): {', '.join(outside)}"
        )
    if plugin_problems() and not args.json:
        print(f"{len(plugin_problems())} plugin(s) not loaded: see the warning line(s) on stderr")
    return 1 if plugin_problems() else 0  # an installed plugin is missing from the list

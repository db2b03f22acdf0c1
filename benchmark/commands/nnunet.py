"""`nnunet`: nnU-Net v2 on our folds through its own code, imported as nnunet_2d / nnunet_resenc_m_2d."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmark.commands import add_set_option

HELP = (
    "train and predict nnU-Net v2 (its own planning, preprocessing, training and inference) on the "
    "benchmark's folds and import it as the row nnunet_2d or nnunet_resenc_m_2d (needs the nnunet extra)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, required=True, help="Kaggle-layout directory holding train/")
    parser.add_argument("--results-dir", type=Path, default=Path("results"))
    parser.add_argument("--folds", default=None, help="comma-separated outer folds (default: all)")
    parser.add_argument(
        "--seeds",
        default=None,
        help="comma-separated seeds (default 0; a board with several "
        "seeds ranks nnU-Net only with all of them)",
    )
    parser.add_argument(
        "--planner",
        choices=("default", "resenc-m"),
        default="default",
        help="nnU-Net's default planner (nnunet_2d) or the ResEnc M preset (nnunet_resenc_m_2d)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="nnU-Net epochs (default nnU-Net's 1000; fewer: a budgeted comparison, stated on the board)",
    )
    parser.add_argument(
        "--iterations-per-epoch",
        type=int,
        default=None,
        help="training iterations per epoch (default nnU-Net's 250; fewer: a budgeted comparison, or "
        "trying it out on a CPU, where an epoch of 250 takes many minutes); validation then runs a fifth "
        "as many, as nnU-Net's 50 of 250",
    )
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="benchmark YAML of the split (default: the results directory's runs, else default.yaml)",
    )
    add_set_option(parser, "override a config field (repeatable)")


def run(args: argparse.Namespace) -> int:
    from benchmark.core.config import ConfigError
    from benchmark.external.nnunet import NnUNetError, run_nnunet, settings_from
    from benchmark.grid_configs import parse_list

    folds, seeds = parse_list(args.folds, int), parse_list(args.seeds, int)
    its = args.iterations_per_epoch
    for flag, given in (("--folds", folds), ("--seeds", seeds)):
        if given == []:  # "" trained every fold, where run refuses it
            raise ConfigError(f"{flag}: no value given (leave the flag out for all of them)")
        if given is not None and len(set(given)) < len(given):  # 0,0: a fold's job twice
            raise ConfigError(f"{flag} {getattr(args, flag[2:])}: a value is repeated; name each once")
    settings = settings_from(
        planner=args.planner,
        epochs=args.epochs,
        iterations_per_epoch=its,
        val_iterations=None if its is None else max(1, round(its / 5)),
        device=args.device,
        folds=None if folds is None else tuple(folds),
        seeds=None if seeds is None else tuple(seeds),
    )
    try:
        done = run_nnunet(args.data_dir, args.results_dir, settings, args.config, args.overrides)
    except NnUNetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    imported = sum(status == "imported" for *_, status in done)
    print(
        f"{settings.row}: {imported} runs imported, {len(done) - imported} already there; "
        f"`benchmark report --results {args.results_dir}` rebuilds the leaderboard"
    )
    return 0

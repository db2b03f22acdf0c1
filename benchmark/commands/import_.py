"""`import`: score an outside method's masks of one outer fold and write its run summary for `report`."""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmark.commands import add_set_option

HELP = (
    "put an outside method on the board: score its binary 420x580 masks (tif/png, one per outer-fold "
    "image, named by stem) with our metric code and write a run summary that `report` ranks"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", required=True, help="the board row, e.g. kaggle_1st or monai_unet")
    parser.add_argument("--data-dir", type=Path, required=True, help="Kaggle-layout directory holding train/")
    parser.add_argument("--results-dir", type=Path, default=Path("results"))
    parser.add_argument("--fold", type=int, required=True, help="the outer fold the masks predict")
    parser.add_argument(
        "--seed", type=int, default=0, help="replicate seed of the outside training (default 0)"
    )
    parser.add_argument("--predictions", type=Path, required=True, help="folder of <stem>.png or <stem>.tif")
    parser.add_argument(
        "--provenance",
        default=None,
        help="one line shown on the board: who trained it, how, with what selection",
    )
    parser.add_argument(
        "--folds-file",
        type=Path,
        default=None,
        help="the `benchmark folds` file the method trained on (checked to be this split)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="benchmark YAML of the split (default: the config of the results directory's runs, else "
        "benchmark/configs/default.yaml)",
    )
    parser.add_argument(
        "--replace",
        action="store_true",
        help="overwrite an earlier import of this name, fold and seed (refused without it)",
    )
    add_set_option(parser, "override a config field (repeatable)")


def run(args: argparse.Namespace) -> int:
    from benchmark.external.importer import import_predictions

    external = {"provenance": args.provenance} if args.provenance else None
    run_dir, summary = import_predictions(
        args.name,
        args.data_dir,
        args.results_dir,
        args.fold,
        args.predictions,
        seed=args.seed,
        config=args.config,
        sets=args.overrides,
        external=external,
        folds_file=args.folds_file,
        replace=args.replace,
    )
    post = summary["metrics"]["post"]
    print(
        f"{args.name} fold {args.fold} seed {args.seed}: {len(summary['per_image']['index'])} outer-fold "
        "images, "
        f"Kaggle Dice {post['kaggle_dice']:.4f} -> {run_dir / 'summary.json'}"
    )
    print(f"run `benchmark report --results {args.results_dir}` to rebuild the leaderboard")
    return 0

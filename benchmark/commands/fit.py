"""`fit`: train one model on one fold and write its run directory (checkpoints, summary.json)."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "train one model on one fold; writes checkpoints/, summary.json and overlays.npz"

# CLI flag -> TrainConfig field (flags left unset keep the config's value).
_FLAGS = {"model": "model", "fold": "fold", "folds": "n_folds", "epochs": "epochs",
          "image_size": "image_size", "batch_size": "batch_size", "seed": "seed"}  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="registry name, e.g. unet, trans_cg_unet, smp:Unet:resnet34")
    parser.add_argument("--data-dir", type=Path, required=True, help="Kaggle-layout directory holding train/")
    parser.add_argument("--fold", type=int, help="validation fold (default 0)")
    parser.add_argument("--folds", type=int, help="number of subject-grouped folds (default 5)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--image-size", type=int, help="network input size (multiple of 32)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--out", type=Path, help="run directory (default results/runs/<run name>)")
    parser.add_argument(
        "--config", type=Path, help="benchmark YAML whose `train:` section is the base config"
    )
    parser.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                        help="override any TrainConfig field, e.g. --set lr=3e-4 (repeatable)")  # fmt: skip


def build_config(args: argparse.Namespace) -> object:
    """Base (config file or defaults) <- explicit flags <- --set overrides."""
    from benchmark.core.config import TrainConfig, apply_overrides, load_benchmark_config, parse_set_args

    base = load_benchmark_config(args.config).train if args.config else TrainConfig()
    flags = {field: getattr(args, flag) for flag, field in _FLAGS.items() if getattr(args, flag) is not None}
    return apply_overrides(base, {**flags, **parse_set_args(args.overrides)})


def run(args: argparse.Namespace) -> int:
    from benchmark.evaluation.evaluate import format_metrics
    from benchmark.pipeline import fit

    cfg = build_config(args)
    out = args.out or Path("results") / "runs" / cfg.run_name()
    summary = fit(cfg, args.data_dir, out)
    if summary:  # empty on non-zero DDP ranks
        print(format_metrics(summary["metrics"]))
        empty = summary["per_image"]["true_empty"]
        print(f"all-empty baseline on these {len(empty)} images: kaggle_dice {sum(empty) / len(empty):.4f}")
        print(f"best epoch {summary['best_epoch']} of {summary['epochs_run']}; run directory {out}")
    return 0

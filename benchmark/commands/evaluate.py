"""`evaluate`: score a checkpoint on every training image of a directory, with its tuned post-processing."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "score a checkpoint on every training image of --data-dir (raw and post-processed metrics)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True, help="a best.ckpt written by `fit`")
    parser.add_argument("--data-dir", type=Path, required=True, help="Kaggle-layout directory holding train/")
    parser.add_argument("--out", type=Path, help="write per-image and mean metrics to this JSON file")


def run(args: argparse.Namespace) -> int:
    from benchmark.evaluation.evaluate import evaluate, format_metrics

    result = evaluate(args.checkpoint, args.data_dir, args.out)
    print(f"{result['n_images']} images of {args.data_dir}, checkpoint {args.checkpoint}")
    print(format_metrics(result["metrics"]))
    empty = result["per_image"]["true_empty"]
    print(f"all-empty baseline on these {len(empty)} images: kaggle_dice {sum(empty) / len(empty):.4f}")
    if args.out:
        print(f"wrote {args.out}")
    return 0

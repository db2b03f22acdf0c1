"""`evaluate`: score a checkpoint on a directory's training images, with its tuned post-processing.

On the checkpoint's own training data only its outer fold is scored (the rest trained or selected
it); ``--all-images`` scores everything with a warning; on any other data every image but the frames
that trained or selected the checkpoint (found by fingerprint) and the rest of their subjects.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = (
    "score a checkpoint on --data-dir's training images (raw and post-processed metrics): only its "
    "outer fold on its own training data; on other data every image but the frames it trained or was "
    "selected on (by fingerprint) and the rest of their subjects"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True, help="a best.ckpt written by `fit`")
    parser.add_argument("--data-dir", type=Path, required=True, help="Kaggle-layout directory holding train/")
    parser.add_argument("--out", type=Path, help="write per-image and mean metrics to this JSON file")
    parser.add_argument(
        "--all-images",
        action="store_true",
        help="score every image, including those the checkpoint was trained and selected on (its own "
        "training data, or frames of it in another copy): not a held-out score",
    )


def run(args: argparse.Namespace) -> int:
    from benchmark.evaluation.evaluate import evaluate, format_metrics

    result = evaluate(args.checkpoint, args.data_dir, args.out, all_images=args.all_images)
    print(result["note"], file=sys.stderr if "warning:" in result["note"] else sys.stdout)
    print(f"{result['n_images']} images of {args.data_dir}, checkpoint {args.checkpoint}")
    print(format_metrics(result["metrics"]))
    empty = result["per_image"]["true_empty"]
    print(f"all-empty baseline on these {len(empty)} images: kaggle_dice {sum(empty) / len(empty):.4f}")
    if args.out:
        print(f"wrote {args.out}")
    return 0

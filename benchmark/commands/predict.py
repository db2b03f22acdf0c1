"""`predict`: masks, overlays and a Kaggle submission from one or several checkpoints."""

from __future__ import annotations

import argparse
import json
import sys

KAGGLE_TEST_IMAGES = 5508  # test/1.tif .. test/5508.tif of the competition
EXIT_REFUSED_SUBMISSION = 3  # as run's "incomplete": the files are written, the deliverable is not usable
HELP = "predict test masks (and a Kaggle submission) with one checkpoint or an averaged ensemble"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="checkpoint file, or several separated by commas (probabilities are averaged)",
    )
    parser.add_argument("--input", required=True, help="a folder of tifs, or a Kaggle root holding test/")
    parser.add_argument("--out", required=True, help="output folder for <stem>.tif masks (0/255)")
    parser.add_argument("--submission", default=None, help="also write a Kaggle CSV (img,pixels) here")
    parser.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="horizontal-flip TTA on/off (default: as each checkpoint was tuned)",
    )
    parser.add_argument("--overlays", action="store_true", help="write <out>/overlays/<stem>.png")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--json", action="store_true", help="print the result summary as JSON")


def run(args: argparse.Namespace) -> int:
    from benchmark.core.config import ConfigError
    from benchmark.predict import predict_dir

    if args.batch_size < 1:  # it was made 1 without a word
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    checkpoints = [c.strip() for c in args.checkpoint.split(",")]
    if not all(checkpoints):  # "a.ckpt,,": a path lost in the typing, not one checkpoint fewer
        raise ConfigError(f"--checkpoint {args.checkpoint!r}: an empty entry between commas")
    result = predict_dir(
        checkpoints,
        args.input,
        args.out,
        submission=args.submission,
        tta=args.tta,
        overlays=args.overlays,
        batch_size=args.batch_size,
        device=args.device,
    )
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        where = f"; submission {result['submission']}" if result["submission"] else ""
        if result["kaggle_refuses"]:
            where += " (NOT one Kaggle accepts: its ids are not sample_submission.csv's)"
        print(f"{result['n_images']} masks ({result['n_positive']} non-empty) in {result['out_dir']}{where}")
    if result["tuned_apart"]:  # said only in --json and docs/architecture.md before (a review)
        print(_tuned_apart(result), file=sys.stderr)
    if result["other_masks"]:
        shown = ", ".join(result["other_masks"][:3]) + (", ..." if len(result["other_masks"]) > 3 else "")
        print(
            f"warning: {result['out_dir']} also holds {len(result['other_masks'])} mask tif(s) this "
            f"prediction did not write ({shown}): an earlier prediction's, left as they were",
            file=sys.stderr,
        )
    if result["sample_mismatch"]:
        print(f"warning: {result['submission']}: {result['sample_mismatch']}", file=sys.stderr)
    elif result["submission"] and result["n_images"] != KAGGLE_TEST_IMAGES:
        print(
            f"note: {result['submission']} holds {result['n_images']} rows; Kaggle scores a submission of "
            f"all {KAGGLE_TEST_IMAGES} test images (--input the full test/ folder)",
            file=sys.stderr,
        )
    # written all the same (finished work is kept), but `predict && kaggle submit` must not go on
    return EXIT_REFUSED_SUBMISSION if result["kaggle_refuses"] else 0


def _tuned_apart(result: dict) -> str:
    """The note for an ensemble of checkpoints tuned apart: the mean it applies, and its TTA."""
    post, ttas = result["postprocess"], result["checkpoint_tta"]
    tta = "on" if all(ttas) else "off" if not any(ttas) else f"as each checkpoint has it ({sum(ttas)} on)"
    return (
        f"note: the {len(ttas)} checkpoints were tuned apart: the ensemble applies their mean, "
        f"threshold {post['threshold']:g}, min_area {post['min_area']}, presence_tau "
        f"{post['presence_tau']:g} (tuned for none of them); flip TTA {tta}"
    )

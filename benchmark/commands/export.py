"""`export`: a checkpoint's model as ONNX, its tuned post-processing in the file's metadata."""

from __future__ import annotations

import argparse
import json

HELP = "export a checkpoint to ONNX (post-processing in the metadata), checked against torch"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a nerve-bench checkpoint (best.ckpt)")
    parser.add_argument("--out", required=True, help="the .onnx file to write")
    parser.add_argument(
        "--data-dir",
        default=None,
        help="frames for the parity check: a Kaggle layout (train/ or test/) or a folder of tifs "
        "(default: synthetic frames)",
    )
    # Defaults live in benchmark.export (imported in run(), so --help does not load torch).
    parser.add_argument("--frames", type=int, default=None, help="frames the parity check runs on (4)")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help="largest allowed |p_onnxruntime - p_torch| on any pixel of any output (1e-4)",
    )
    parser.add_argument("--json", action="store_true", help="print the written metadata as JSON")


def run(args: argparse.Namespace) -> int:
    from benchmark.export import PARITY_FRAMES, TOLERANCE, export_checkpoint

    frames = PARITY_FRAMES if args.frames is None else args.frames
    tolerance = TOLERANCE if args.tolerance is None else args.tolerance
    meta = export_checkpoint(args.checkpoint, args.out, args.data_dir, frames, tolerance)
    if args.json:
        print(json.dumps(meta, indent=2, sort_keys=True))
        return 0
    worst = max(meta["parity_max_abs_diff"].values())
    print(
        f"{args.out}: {meta['model']} ({meta['package']}), outputs {', '.join(meta['outputs'])}; "
        f"parity on {meta['parity_inputs']}: max |p_onnx - p_torch| = {worst:.1e} "
        f"(tolerance {meta['parity_tolerance']:.0e}); post-processing threshold {meta['threshold']}, "
        f"min_area {meta['min_area']}, presence_tau {meta['presence_tau']}, tta {meta['tta']}"
    )
    return 0

"""`speed`: the suite's training img/s beside a plain PyTorch loop and the compute ceiling."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

HELP = "measure training and inference speed: suite vs plain PyTorch vs on-device ceiling (and onnxruntime)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models",
        default="unet,unet_resnet34",
        help="comma-separated registry names (default unet,unet_resnet34)",
    )
    parser.add_argument("--image-size", type=int, default=256, help="input size (default 256)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per step (default 64)")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per path (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before each timing (default 3)")
    parser.add_argument("--workers", type=int, default=None, help="plain loop's DataLoader workers")
    parser.add_argument("--compile", action="store_true", help="torch.compile the suite and ceiling models")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--data-dir", default=None, help="Kaggle layout to read (default: synthetic data)")
    parser.add_argument(
        "--runtime",
        choices=("torch", "onnx"),
        default="torch",
        help="onnx: also export each model and time onnxruntime's inference beside torch's",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")


def run(args: argparse.Namespace) -> int:
    from benchmark.core.config import ConfigError, TrainConfig
    from benchmark.core.model_kwargs import build_models
    from benchmark.speed import SpeedSettings, format_table, run_speed

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models:  # measured nothing and exited 0
        raise ConfigError(f"--models {args.models!r}: no model named")
    try:
        settings = SpeedSettings(
            image_size=args.image_size,
            batch_size=args.batch_size,
            steps=args.steps,
            warmup=args.warmup,
            device=args.device,
            compile=args.compile,
            workers=args.workers,
            runtime=args.runtime,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    configs = [TrainConfig(model=m, image_size=settings.image_size) for m in models]
    build_models(configs)  # a misspelt name, then a model off the contract: one line each
    with contextlib.redirect_stdout(sys.stderr):  # keep stdout clean for --json (Lightning chatter)
        rows = run_speed(models, settings, args.data_dir)
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0

"""`fit`: train one model on one fold and write its run directory (checkpoints, summary.json)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from benchmark.commands import add_set_option

if TYPE_CHECKING:
    from benchmark.core.config import TrainConfig

HELP = "train one model on one fold; writes checkpoints/, summary.json and overlays.npz"

# CLI flag -> TrainConfig field (flags left unset keep the config's value).
_FLAGS = {"model": "model", "fold": "fold", "n_folds": "n_folds", "epochs": "epochs",
          "image_size": "image_size", "batch_size": "batch_size", "seed": "seed"}  # fmt: skip


class _DeprecatedFolds(argparse.Action):
    """``fit --folds N``: the old name of ``--n-folds`` (``run --folds`` lists fold ids), kept one release."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        print(
            f"warning: fit --folds {values} sets the number of folds (n_folds={values}), not a fold id "
            "(--fold, as `run --folds` lists); it is deprecated and goes in the next release: use --n-folds",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, values)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from benchmark.core.config import TrainConfig
    from benchmark.core.config_text import help_table

    parser.add_argument("--model", help="registry name, e.g. unet, trans_cg_unet, smp:Unet:resnet34")
    parser.add_argument("--data-dir", type=Path, help="Kaggle-layout directory holding train/ (required)")
    parser.add_argument("--fold", type=int, help="outer fold scored as the test set (default 0)")
    parser.add_argument("--n-folds", type=int, help="number of subject-grouped folds (default 5)")
    parser.add_argument(
        "--folds", type=int, dest="n_folds", action=_DeprecatedFolds, help="deprecated alias of --n-folds"
    )
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--image-size", type=int, help="network input size (multiple of 32)")
    parser.add_argument(
        "--batch-size", type=int, help="GLOBAL training batch per optimiser step (split over devices)"
    )
    parser.add_argument("--seed", type=int)
    parser.add_argument("--out", type=Path, help="run directory (default results/runs/<run name>)")
    parser.add_argument(
        "--config",
        type=Path,
        help="benchmark YAML whose `train:` (and the model's model_kwargs) is the base: its grid's first run",
    )
    add_set_option(parser, "override a TrainConfig field (listed below), e.g. --set lr=3e-4 (repeatable)")
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config as YAML (a --config file) and exit",
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "TrainConfig fields (--set KEY=VALUE; type, default):\n" + help_table(TrainConfig)


def build_config(args: argparse.Namespace) -> TrainConfig:
    """Base (config file or defaults) <- explicit flags <- --set overrides, then checked as run.

    With ``--config`` the benchmark's ``model_kwargs`` and ``model_train`` for the chosen model apply
    too (unless ``--set`` replaces them), so ``fit`` reproduces the run of a ``run`` grid.
    ``devices: auto`` is resolved to this machine's count, so the run hash records the world size, and
    ``precision: auto`` to the precision the run trains in here.
    """
    from benchmark.core.config import TrainConfig, apply_overrides, load_benchmark_config
    from benchmark.core.model_kwargs import build_models
    from benchmark.core.overrides import parse_set_args
    from benchmark.core.world import resolve_auto_precision, resolve_devices
    from benchmark.grid_configs import with_model_recipe

    bench = load_benchmark_config(args.config) if args.config else None
    base = bench.train if bench else TrainConfig()
    flags = {field: getattr(args, flag) for flag, field in _FLAGS.items() if getattr(args, flag) is not None}
    sets = parse_set_args(args.overrides)
    if bench:  # the benchmark's own recipe for this model (model_train), under the flags and --set
        model = str({**flags, **sets}.get("model", base.model))
        base = with_model_recipe(base, bench.model_train, apply_overrides(base, {"model": model}).model)
    cfg = apply_overrides(base, {**flags, **sets})
    if bench and "model_kwargs" not in sets:
        cfg = apply_overrides(
            cfg, {"model_kwargs": {**base.model_kwargs, **bench.model_kwargs.get(cfg.model, {})}}
        )
    cfg = resolve_auto_precision(resolve_devices(cfg))
    build_models([cfg])  # a misspelt name, a refused value, outputs off the contract: one line each
    return cfg


def run(args: argparse.Namespace) -> int:
    from benchmark.core.config import ConfigError
    from benchmark.core.config_text import to_yaml

    cfg = build_config(args)
    if args.print_config:
        print(
            f"# {cfg.run_name()}: `fit --config THIS_FILE` reproduces this run's config\n{to_yaml(cfg)}",
            end="",
        )
        return 0
    if args.data_dir is None:
        raise ConfigError("fit: --data-dir is required (a Kaggle layout holding train/)")
    from benchmark.core.files import check_output_dir
    from benchmark.core.summary import SUMMARY_NAME, is_complete
    from benchmark.grid_checks import check_accelerator, check_launcher, check_logger, gpu_recipe_on_cpu
    from benchmark.pipeline import fit

    check_logger([cfg])
    check_accelerator([cfg])
    check_launcher([cfg])
    out = args.out or Path("results") / "runs" / cfg.run_name()
    # A file there, or a place that cannot be written, is one line before the work (exit 2; it was
    # exit 1 at the first checkpoint), as predict, export, evaluate and folds say it.
    check_output_dir(out, "--out", "the run's directory")
    if is_complete(out / SUMMARY_NAME, cfg.hash()):
        print(f"{out} already holds this run, complete (config hash {cfg.hash()}): nothing trained")
    elif slow := gpu_recipe_on_cpu([cfg]):  # as run refuses it: hours on a CPU for one run
        raise ConfigError(slow)
    try:
        summary = fit(cfg, args.data_dir, out)
    except BaseException as exc:
        from benchmark.core.ranks import global_rank
        from benchmark.runner import interrupted_line

        if not isinstance(exc, Exception) and global_rank() == 0:  # Ctrl-C, SIGTERM: as run says it
            print(interrupted_line(cfg, out), file=sys.stderr)
        raise
    if summary:  # empty on non-zero DDP ranks
        print_summary(summary, out)
    return 0


def print_summary(summary: dict, out: Path) -> None:
    """The reported (outer-fold) metrics first, labelled; the inner selection metrics apart."""
    from benchmark.evaluation.evaluate import format_metrics

    sel, empty = summary["selection"], summary["per_image"]["true_empty"]
    print(f"outer fold {summary['fold']}: {len(empty)} images never used for any decision (reported):")
    print(format_metrics(summary["metrics"]))
    print(f"all-empty baseline on these {len(empty)} images: kaggle_dice {sum(empty) / len(empty):.4f}")
    print(f"selection (inner set, {sel['n_images']} images; chose epoch and post-processing; optimistic):")
    print(format_metrics(sel["metrics"]))
    print(f"{sel['select']} epoch {summary['best_epoch']} of {summary['epochs_run']}; run directory {out}")

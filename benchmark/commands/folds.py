"""`folds`: write the benchmark's outer folds (train / inner / outer stems) for methods trained elsewhere."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmark.commands import add_set_option

HELP = "write the split as JSON: per outer fold the training, inner-selection and outer-fold image stems"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, required=True, help="Kaggle-layout directory holding train/")
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="benchmark YAML whose split is written (default: --results-dir's board, else "
        "benchmark/configs/default.yaml, as `run`)",
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=None,
        help="without --config: the split of this results directory's board (as import and nnunet read "
        "it), so a method trained on the folds written here is scored on the same ones",
    )
    add_set_option(parser, "override a config field, e.g. --set n_folds=3 (repeatable)")
    parser.add_argument("--out", type=Path, required=True, help="the JSON file to write (atomically)")


def run(args: argparse.Namespace) -> int:
    from benchmark.core.files import check_output_file
    from benchmark.core.summary import write_json_atomic
    from benchmark.external.board_config import train_config
    from benchmark.external.folds import folds_document
    from benchmark.grid_checks import inner_larger
    from datamodules.kaggle import layout_paths

    reads = layout_paths(args.data_dir)  # train/ too: the split is made from its images
    check_output_file(
        args.out, "--out", "the path of a .json file", [*reads, *([args.config] if args.config else [])]
    )
    train_set, data_hash = None, None
    if args.config is None and args.results_dir is not None:  # the board of these data, not the fallback's
        from datamodules.kaggle import content_hash, load_train

        train_set = load_train(args.data_dir)  # read once: the document splits the same copy
        data_hash = content_hash(train_set)
    cfg = train_config(args.config, args.overrides, args.results_dir, data_hash)
    doc = folds_document(cfg, args.data_dir, train_set)
    write_json_atomic(args.out, doc)
    for fold in doc["folds"]:  # as run warns: epochs and post-processing chosen on more than is fitted
        if len(fold["inner"]) > len(fold["train"]):
            print(
                inner_larger(args.data_dir, cfg, fold["fold"], len(fold["inner"]), len(fold["train"])),
                file=sys.stderr,
            )
    sizes = ", ".join(f"{len(f['train'])}/{len(f['inner'])}/{len(f['outer'])}" for f in doc["folds"])
    n = len(doc["folds"])
    print(
        f"{n} fold{'s' if n != 1 else ''} (train/inner/outer images: {sizes}), "
        f"split_seed {doc['split_seed']}, content hash {doc['content_hash']} -> {args.out}"
    )
    return 0

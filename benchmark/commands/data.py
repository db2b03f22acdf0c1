"""`data check`: read and validate a Kaggle-layout data directory and summarise it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "inspect a dataset: `data check --data-dir DIR [--json]` validates every file"

_SOURCE_NOTE = {
    "tif": "*_mask.tif files",
    "csv": "train_masks.csv rows (no *_mask.tif files)",
    "tif+csv": "*_mask.tif files and train_masks.csv rows, checked to agree pixel for pixel",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    check = sub.add_parser(
        "check",
        help="validate every image, mask and csv row; print a summary",
        description="Validate a Kaggle-layout directory (train/, test/, train_masks.csv) and summarise it.",
    )
    check.add_argument("--data-dir", type=Path, required=True, help="directory holding train/ and test/")
    check.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def format_summary(info: dict) -> str:
    """The human-readable form of ``check_dataset``'s dict."""
    h, w = info["image_size"]
    source = _SOURCE_NOTE.get(info["mask_source"], info["mask_source"])
    return "\n".join(
        [
            f"data dir        {info['data_dir']}",
            f"training pairs  {info['n_train']} from {info['n_subjects']} subjects",
            f"positive masks  {info['n_positive']} ({100 * info['positive_fraction']:.1f}%)",
            f"test images     {info['n_test']}",
            f"image size      {w}x{h} (W x H), uint8 grayscale",
            f"mask source     {info['mask_source']}: {source}",
            f"content hash    {info['content_hash']}",
            *_links(info.get("linked_subjects") or []),
            "OK: every file is readable and consistent",
        ]
    )


def _links(linked: list[dict]) -> list[str]:
    """One line per pair of subjects that share frames: the split keeps them together."""
    from datamodules.fingerprints import describe

    return [
        f"linked          {describe([*link['subjects'], *link['matching_frames']])}: one unit in splits "
        "and CIs (link_subjects)"
        for link in linked
    ]


def run(args: argparse.Namespace) -> int:
    from datamodules.errors import DataError, DataErrors
    from datamodules.kaggle import check_dataset

    if args.data_command == "check":
        try:
            info = check_dataset(args.data_dir)
        except DataError as exc:
            if args.json:  # every problem for a script, however many; the error line(s) on stderr
                found = exc if isinstance(exc, DataErrors) else DataErrors(exc.path, [exc])
                print(json.dumps({"ok": False, "data_dir": str(args.data_dir), "problems": found.to_list()}))
            raise
        print(json.dumps({"ok": True, **info}, sort_keys=True) if args.json else format_summary(info))
    return 0

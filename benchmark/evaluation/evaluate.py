"""``evaluate``: score a checkpoint on a data directory with its stored post-processing.

What it scores depends on the data (the checkpoint records its training data's content hash and
outer-fold indices):

- the checkpoint's own training data: only its outer fold, the images no decision saw; the rest
  trained or selected the checkpoint, so scoring them would report a training score;
- the same data with ``all_images``: every image, with a warning that training images are included;
- any other data (or a checkpoint without that record): every image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from benchmark.core.summary import to_jsonable, write_json_atomic
from benchmark.evaluation import inference
from benchmark.scoring import counts
from benchmark.training.checkpoint import CKPT_KEY, load_checkpoint_module, postprocess_of
from benchmark.training.device import eval_device, resolve_precision
from benchmark.training.module import config_from_dict

OUTER, ALL_WITH_TRAINING, ALL = "outer_fold", "all_images_including_training", "all_images"


def choose_images(
    record: dict, data_hash: str, n_images: int, all_images: bool
) -> tuple[np.ndarray, str, str]:
    """(indices to score, scope, one-line note) for data with ``data_hash`` and ``n_images`` frames.

    ``record`` is the checkpoint's ``nerve_bench`` block (``data_hash``, ``outer_indices``).
    """
    every = np.arange(n_images, dtype=np.int64)
    outer = record.get("outer_indices")
    if record.get("data_hash") != data_hash or outer is None:
        why = (
            "not the checkpoint's training data"
            if record.get("data_hash")
            else "the checkpoint does not record its training data: training images may be included"
        )
        return every, ALL, f"scoring all {n_images} images ({why})"
    outer = np.asarray(outer, dtype=np.int64)
    n_seen = n_images - len(outer)
    if all_images:
        note = (
            f"warning: --all-images: {n_seen} of these {n_images} images trained or selected this "
            "checkpoint; this is not a held-out score"
        )
        return every, ALL_WITH_TRAINING, note
    note = (
        f"this is the checkpoint's training data: scoring only its outer fold, {len(outer)} of "
        f"{n_images} images (the other {n_seen} trained or selected it; --all-images: all)"
    )
    return outer, OUTER, note


def evaluate(
    checkpoint: str | Path, data_dir: str | Path, out: str | Path | None = None, all_images: bool = False
) -> dict:
    """Score ``checkpoint`` on ``data_dir``'s training images (see the module doc for which ones).

    Returns (and writes to ``out`` as JSON) per-image rows and the mean metrics, raw and
    post-processed, plus ``scope`` (outer_fold | all_images_including_training | all_images) and
    ``note``, the one line that says what was scored.
    """
    from datamodules.datamodule import UltrasoundNerveDataModule
    from datamodules.kaggle import content_hash

    path = Path(checkpoint)
    module, ckpt = load_checkpoint_module(path)
    # The run's own hash: the module was rebuilt for inference (no pretrained download, no compile),
    # and both fields are hashed, so module.cfg.hash() would not match the run's summary.
    trained_hash = config_from_dict(ckpt["hyper_parameters"]["config"]).hash()
    pp = postprocess_of(path, ckpt)
    cfg = module.cfg
    # No split (any directory of any size can be scored), no cleaning, no GPU cache.
    config = {**cfg.to_dict(), "clean_contradictory": False}
    dm = UltrasoundNerveDataModule.from_config_dict(data_dir, config, split=False)
    dm.setup()
    ts = dm.train_set
    indices, scope, note = choose_images(ckpt.get(CKPT_KEY) or {}, content_hash(ts), len(ts), all_images)
    device = eval_device()
    precision = resolve_precision(cfg.precision, device.type) if device.type == "cuda" else "32"
    rows = inference.predict_loader(module, dm.subset_dataloader(indices), device, precision, pp=pp)
    result = {
        "checkpoint": str(path),
        "data_dir": str(data_dir),
        "model": cfg.model,
        "config_hash": trained_hash,
        "scope": scope,
        "note": note,
        "n_images": len(rows["index"]),
        "postprocess": pp.to_dict(),
        "metrics": {
            "raw": counts.score_counts(rows["counts"], rows["presence_prob"]),
            "post": counts.score_counts(rows["post_counts"], None),
        },
        "per_image": _per_image(ts, rows),
    }
    if out is not None:
        write_json_atomic(out, result)
    return to_jsonable(result)


def _per_image(ts: Any, rows: dict[str, Any]) -> dict[str, Any]:
    raw, post = counts.per_image_scores(rows["counts"]), counts.per_image_scores(rows["post_counts"])
    idx = rows["index"]
    return {
        "index": idx,
        "stem": [ts.stems[i] for i in idx],
        "subject": ts.subjects[idx],
        "true_empty": raw["true_empty"],
        "dice_raw": raw["dice"],
        "dice": post["dice"],
        "iou": post["iou"],
        "presence_prob": rows["presence_prob"],
    }


def format_metrics(metrics: dict[str, dict[str, float]]) -> str:
    """A small aligned table: one row per metric, raw and post-processed columns."""
    names = list(metrics["post"])
    width = max(len(n) for n in names)
    lines = [f"{'metric':<{width}}  {'raw':>8}  {'post':>8}"]
    for name in names:
        raw, post = metrics["raw"].get(name), metrics["post"].get(name)
        cells = [f"{v:8.4f}" if isinstance(v, float) else f"{'-':>8}" for v in (raw, post)]
        lines.append(f"{name:<{width}}  {cells[0]}  {cells[1]}")
    return "\n".join(lines)

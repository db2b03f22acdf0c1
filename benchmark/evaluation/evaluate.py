"""``evaluate``: score a checkpoint on a data directory with its stored post-processing."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from benchmark.core.summary import to_jsonable, write_json_atomic
from benchmark.evaluation import inference
from benchmark.scoring import counts
from benchmark.training.checkpoint import load_checkpoint_module, postprocess_of
from benchmark.training.device import eval_device, resolve_precision
from benchmark.training.trainer import make_datamodule


def evaluate(checkpoint: str | Path, data_dir: str | Path, out: str | Path | None = None) -> dict:
    """Score ``checkpoint`` on every training image of ``data_dir`` with its stored post-processing.

    Returns (and writes to ``out`` as JSON) per-image rows and the mean metrics, raw and post-processed.
    """
    path = Path(checkpoint)
    module, ckpt = load_checkpoint_module(path)
    pp = postprocess_of(path, ckpt)
    cfg = module.cfg
    # Only the full-set loader is used: no cleaning, no GPU cache; any valid split will do.
    data_cfg = dataclasses.replace(cfg, clean_contradictory=False, gpu_cache=False, fold=0, n_folds=2)
    dm = make_datamodule(data_cfg, data_dir)
    device = eval_device()
    precision = resolve_precision(cfg.precision, device.type) if device.type == "cuda" else "32"
    rows = inference.predict_loader(module, dm.full_dataloader(), device, precision, pp=pp)
    raw, post = counts.per_image_scores(rows["counts"]), counts.per_image_scores(rows["post_counts"])
    ts, idx = dm.train_set, rows["index"]
    result = {
        "checkpoint": str(path), "data_dir": str(data_dir), "model": cfg.model, "config_hash": cfg.hash(),
        "n_images": len(idx), "postprocess": pp.to_dict(),
        "metrics": {"raw": counts.score_counts(rows["counts"], rows["presence_prob"]),
                    "post": counts.score_counts(rows["post_counts"], None)},
        "per_image": {"index": idx, "stem": [ts.stems[i] for i in idx], "subject": ts.subjects[idx],
                      "true_empty": raw["true_empty"], "dice_raw": raw["dice"], "dice": post["dice"],
                      "iou": post["iou"], "presence_prob": rows["presence_prob"]},
    }  # fmt: skip
    if out is not None:
        write_json_atomic(out, result)
    return to_jsonable(result)


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

"""After training: score the best checkpoint on the validation fold, tune post-processing there,
store it in the checkpoint, and write summary.json and overlays.npz.

Post-processing is tuned on the validation fold only (never on data used for the reported test
numbers of another fold), and both raw (threshold 0.5) and post-processed metrics are reported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.core.config import SCHEMA_VERSION, TrainConfig
from benchmark.core.summary import environment, to_jsonable, write_summary
from benchmark.evaluation import inference
from benchmark.scoring import counts
from benchmark.training.checkpoint import load_checkpoint_module, store_in_checkpoint
from benchmark.training.device import resolve_precision
from benchmark.training.module import SegModule

OVERLAY_NAME = "overlays.npz"
OVERLAY_SHAPE = (128, 177)  # 420x580 scaled by 128/420
OVERLAY_POS, OVERLAY_NEG = 4, 2


def _downsample(stack: np.ndarray, binary: bool) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(stack)).float()[:, None]
    small = F.interpolate(t, size=OVERLAY_SHAPE, mode="area")[:, 0]
    return (
        (small >= 0.5).to(torch.uint8).numpy()
        if binary
        else small.round().clamp(0, 255).to(torch.uint8).numpy()
    )


def overlay_picks(truth: np.ndarray) -> np.ndarray:
    """Positions of the first positives and negatives (inputs are in stem order)."""
    empty = truth.reshape(len(truth), -1).max(axis=1) == 0
    order = np.arange(len(truth))
    return np.concatenate([order[~empty][:OVERLAY_POS], order[empty][:OVERLAY_NEG]]).astype(np.int64)


def write_overlays(
    path: Path, stems: list[str], images: np.ndarray, truth: np.ndarray, pred: np.ndarray
) -> None:
    """Save image/truth/prediction stacks (already picked) downsampled for plotting."""
    np.savez_compressed(
        path, stem=np.asarray(stems, dtype=str), image=_downsample(images, False),
        truth=_downsample(truth, True), pred=_downsample(pred, True),
    )  # fmt: skip


def cost_block(cfg: TrainConfig, module: SegModule, history: dict, device: torch.device) -> dict[str, float]:
    """Parameters, GFLOPs, training throughput and inference speed (zeros where unavailable)."""
    from datamodules.geometry import input_shape
    from models.info import count_params, gflops

    train_s, train_images = sum(history.get("train_s", [])), sum(history.get("train_images", []))
    cost = {"params": int(count_params(module.model)), "gflops": 0.0,
            "train_img_s": train_images / train_s if train_s > 0 else 0.0,
            "infer_img_s": 0.0, "latency_ms": 0.0, "peak_mem_mb": 0.0}  # fmt: skip
    shape = input_shape(cfg.resize_mode, cfg.image_size)  # 448x608 in pad mode, not image_size²
    try:
        cost["gflops"] = float(gflops(module.model, size=shape))
    except Exception:  # noqa: BLE001 - FLOP counting is best effort (exotic ops)
        pass
    try:
        from benchmark.evaluation.costs import measure_inference
    except ImportError:
        return cost
    precision = resolve_precision(cfg.precision, cfg.accelerator)
    measured = measure_inference(module.model, shape, None, device, precision=precision)
    cost.update({k: float(measured[k]) for k in ("infer_img_s", "latency_ms", "peak_mem_mb")})
    return cost


def dataset_block(dm: Any, data_dir: Path, n_val: int) -> dict[str, Any]:
    from datamodules.kaggle import content_hash

    ts = dm.train_set
    return {"name": data_dir.resolve().name, "n_train": len(ts),
            "n_subjects": int(len(np.unique(ts.subjects))), "n_val": int(n_val),
            "content_hash": content_hash(ts),
            "synthetic": (data_dir / "synthetic.json").is_file()}  # fmt: skip


def tune_and_score(val: dict[str, Any], tta: bool) -> tuple[Any, np.ndarray, dict[str, dict[str, float]]]:
    """Tune post-processing on the validation predictions; raw and post-processed metrics."""
    from benchmark.scoring import postprocess

    head = val["presence_prob"] if val["presence_head"] else None  # else the gate uses max prob itself
    pp, _ = postprocess.tune(val["prob_u8"], val["truth"], head, tta=tta)
    post_counts = inference.postprocess_counts(val["prob_u8"], val["truth"], head, pp)
    metrics = {"raw": counts.score_counts(val["counts"], val["presence_prob"]),
               "post": counts.score_counts(post_counts, None)}  # fmt: skip
    return pp, post_counts, metrics


def per_image_block(dm: Any, val: dict[str, Any], post_counts: np.ndarray) -> dict[str, list]:
    raw, post = counts.per_image_scores(val["counts"]), counts.per_image_scores(post_counts)
    idx = val["index"]
    return {"index": idx, "stem": [dm.train_set.stems[i] for i in idx], "subject": dm.train_set.subjects[idx],
            "true_empty": raw["true_empty"], "dice_raw": raw["dice"], "dice": post["dice"],
            "iou": post["iou"], "presence_prob": val["presence_prob"]}  # fmt: skip


def finalize_run(cfg: TrainConfig, dm: Any, data_dir: Path, out_dir: Path, device: torch.device) -> dict:
    """Score ``best.ckpt`` on the validation fold, tune and store post-processing, write the summary."""
    best = out_dir / "checkpoints" / "best.ckpt"
    module, ckpt = load_checkpoint_module(best)
    precision = resolve_precision(cfg.precision, cfg.accelerator)
    val = inference.predict_loader(module, dm.val_dataloader(), device, precision, keep_probs=True)
    pp, post_counts, metrics = tune_and_score(val, cfg.tta)
    pp_dict = pp.to_dict()
    store_in_checkpoint(
        best, ckpt, {"postprocess": pp_dict, "config": cfg.to_dict(), "summary_metrics": metrics}
    )
    _overlays(out_dir / OVERLAY_NAME, dm, val, pp)
    history = _final_history(out_dir / "checkpoints" / "last.ckpt", module.history)
    summary = {
        "schema_version": SCHEMA_VERSION, "run": cfg.run_name(), "model": cfg.model, "fold": cfg.fold,
        "n_folds": cfg.n_folds, "seed": cfg.seed, "config": cfg.to_dict(), "config_hash": cfg.hash(),
        "dataset": dataset_block(dm, data_dir, len(val["index"])), "best_epoch": int(ckpt.get("epoch", 0)),
        "epochs_run": len(history["epoch"]), "train_time_s": float(sum(history["epoch_time_s"])),
        "metrics": metrics, "per_image": per_image_block(dm, val, post_counts), "postprocess": pp_dict,
        "cost": cost_block(cfg, module, history, device),
        "history": {k: history[k] for k in ("epoch", "train_loss", "val_loss", "val_kaggle_dice")},
        "overlays": OVERLAY_NAME, "environment": environment(), "status": "complete",
    }  # fmt: skip
    write_summary(out_dir, summary)
    return to_jsonable(summary)


def _final_history(last: Path, fallback: dict) -> dict:
    """The full per-epoch history lives in last.ckpt (best.ckpt stops at the best epoch)."""
    if not last.is_file():
        return fallback
    saved = torch.load(last, map_location="cpu", weights_only=True).get("nerve_bench_history")
    return saved if saved else fallback


def _overlays(path: Path, dm: Any, val: dict[str, Any], pp: Any) -> None:
    from benchmark.scoring import postprocess

    pick = overlay_picks(val["truth"])
    head = val["presence_prob"][pick] if val["presence_head"] else None
    pred = np.asarray(postprocess.apply(val["prob_u8"][pick], pp, head)).astype(np.uint8)
    index = val["index"][pick]
    stems = [dm.train_set.stems[i] for i in index]
    write_overlays(path, stems, dm.train_set.images[index], val["truth"][pick], pred)

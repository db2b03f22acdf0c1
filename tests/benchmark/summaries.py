"""Hand-made summary.json dicts (schema_version 1) for leaderboard, report, runner and tracking tests."""

from __future__ import annotations

import numpy as np

from benchmark.core.config import TrainConfig


def make_summary(model, fold, seed, dice, *, empty=None, extra=None, cost=True, n_folds=5, content="c0ffee"):
    """A schema-v1 summary whose per-image Dice is ``dice`` (metrics derived from it exactly)."""
    cfg = TrainConfig(model=model, fold=fold, seed=seed, n_folds=n_folds, image_size=64, epochs=2)
    dice = [float(d) for d in dice]
    empty = [False] * len(dice) if empty is None else list(empty)
    positives = [d for d, e in zip(dice, empty) if not e]
    post = {
        "kaggle_dice": float(np.mean(dice)),
        "dice_positive": float(np.mean(positives)) if positives else None,
        "iou": float(np.mean([d / (2 - d) for d in dice])),
        "sensitivity": 0.5, "precision": 0.25, "f1": 1 / 3, "presence_accuracy": 0.75, "pixel_accuracy": 0.98,
    }  # fmt: skip
    post.update(extra or {})
    return {
        "schema_version": 1, "run": cfg.run_name(), "model": model, "fold": fold, "n_folds": n_folds,
        "seed": seed, "config": cfg.to_dict(), "config_hash": cfg.hash(),
        "dataset": {"name": "synth", "n_train": 48, "n_subjects": 6, "n_val": len(dice),
                    "content_hash": content, "synthetic": True},
        "best_epoch": 1, "epochs_run": 2, "train_time_s": 10.0 + fold,
        "metrics": {"raw": {"kaggle_dice": float(np.mean(dice)) - 0.1}, "post": post},
        "per_image": {
            "index": [100 * fold + i for i in range(len(dice))], "stem": [f"1_{i}" for i in range(len(dice))],
            "subject": [1] * len(dice), "true_empty": empty, "dice_raw": [d - 0.1 for d in dice],
            "dice": dice, "iou": [d / (2 - d) for d in dice], "presence_prob": [0.5] * len(dice),
        },
        "postprocess": {"threshold": 0.5, "min_area": 0, "presence_tau": 0.0, "presence_source": "max_prob",
                        "tta": False},
        "cost": ({"params": 1000, "gflops": 0.5, "train_img_s": 20.0, "infer_img_s": 40.0, "latency_ms": 3.0,
                  "peak_mem_mb": 100.0} if cost else {}),
        "history": {"epoch": [0, 1], "train_loss": [1.0, 0.5], "val_loss": [0.9, 0.6],
                    "val_kaggle_dice": [0.4, float(np.mean(dice))]},
        "overlays": "overlays.npz",
        "environment": {"python": "3.11", "torch": "2.x", "lightning": "2.x", "smp": "0.6", "timm": "1.0",
                        "device": "cpu", "git_sha": "abc123", "platform": "linux"},
        "status": "complete",
    }  # fmt: skip

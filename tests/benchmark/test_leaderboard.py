"""Leaderboard aggregation on hand-made summaries with hand-computed numbers."""

from __future__ import annotations

import numpy as np
import pytest

from benchmark import leaderboard as lb
from benchmark.config import TrainConfig

T_975_DF2 = 4.302652729911275  # Student-t 97.5% quantile, 2 degrees of freedom (tables)


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


def three_fold(model, values, n_img=4):
    """Three runs (folds 0-2) whose per-image Dice are constant = values[fold]."""
    return [make_summary(model, f, 0, [v] * n_img) for f, v in enumerate(values)]


def test_t_interval_over_runs_is_hand_computed():
    rows = lb.rank_rows(three_fold("unet", [0.5, 0.6, 0.7]))
    m = rows[0]["metrics"]["kaggle_dice"]
    half = T_975_DF2 * 0.1 / np.sqrt(3)  # sd of (0.5, 0.6, 0.7) is 0.1
    assert m["ci"] == "t"
    assert m["mean"] == pytest.approx(0.6)
    assert (m["lo"], m["hi"]) == (pytest.approx(0.6 - half), pytest.approx(0.6 + half))
    assert rows[0]["n_runs"] == 3 and rows[0]["folds"] == [0, 1, 2]
    assert rows[0]["cost"]["train_time_s"] == pytest.approx(11.0)  # mean of 10, 11, 12


def test_single_run_uses_per_image_bootstrap():
    row = lb.rank_rows([make_summary("unet", 0, 0, [1.0, 1.0, 1.0, 1.0])])[0]
    m = row["metrics"]["kaggle_dice"]
    assert (m["ci"], m["mean"], m["lo"], m["hi"]) == ("bootstrap", 1.0, 1.0, 1.0)
    raw = row["metrics"]["raw_kaggle_dice"]  # dice_raw = 0.9 each
    assert raw["ci"] == "bootstrap" and raw["lo"] == pytest.approx(0.9) and raw["hi"] == pytest.approx(0.9)
    varied = lb.rank_rows([make_summary("unet", 0, 0, [0.0, 1.0] * 20)])[0]["metrics"]["kaggle_dice"]
    assert varied["lo"] < 0.5 < varied["hi"]
    # pooled pixel metrics have no per-image values: mean only, no interval
    assert row["metrics"]["sensitivity"] == {"mean": 0.5, "lo": None, "hi": None, "ci": "n/a"}


def test_bootstrap_skipped_when_per_image_does_not_reproduce_metric():
    s = make_summary("unet", 0, 0, [0.2, 0.4], extra={"iou": 0.9})
    assert lb.rank_rows([s])[0]["metrics"]["iou"]["ci"] == "n/a"


def test_dice_positive_excludes_empty_truth_and_handles_null():
    s = make_summary("unet", 0, 0, [1.0, 0.2, 0.4], empty=[True, False, False])
    m = lb.rank_rows([s])[0]["metrics"]["dice_positive"]
    assert m["mean"] == pytest.approx(0.3) and m["ci"] == "bootstrap"
    all_empty = make_summary("empty", 0, 0, [1.0, 1.0], empty=[True, True])
    assert lb.rank_rows([all_empty])[0]["metrics"]["dice_positive"]["mean"] is None


def test_ranking_ties_baseline_and_paired_pvalues():
    runs = three_fold("b_model", [0.6, 0.6, 0.6]) + three_fold("a_model", [0.6, 0.6, 0.6])
    runs += three_fold("top", [0.9, 0.9, 0.9]) + three_fold("empty", [0.5, 0.5, 0.5])
    rows = lb.rank_rows(runs)
    assert [r["model"] for r in rows] == ["top", "a_model", "b_model", "empty"]  # tie -> name order
    assert [r["rank"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["p_value"] is None and rows[-1]["baseline"] and not rows[0]["baseline"]
    # constant non-zero difference: no centred resample reaches it -> p = 1 / (1 + n_boot)
    assert rows[1]["p_value"] == pytest.approx(1 / (1 + lb.N_BOOT))
    assert rows[1]["n_pairs"] == 12  # 3 folds x 4 images


def test_identical_model_has_p_one_and_pairs_only_shared_images():
    top = three_fold("top", [0.9, 0.8, 0.95])
    twin = [make_summary("twin", f, 0, [v] * 4) for f, v in enumerate([0.9, 0.8])]  # fold 2 missing
    rows = lb.rank_rows(top + twin)
    twin_row = next(r for r in rows if r["model"] == "twin")
    assert twin_row["p_value"] == 1.0 and twin_row["n_pairs"] == 8


def test_select_runs_keeps_the_majority_benchmark_and_complete_only():
    current = three_fold("unet", [0.5, 0.6, 0.7])
    other_data = make_summary("unet", 0, 1, [0.1], content="deadbeef")
    failed = {**make_summary("sk_unet", 0, 0, [0.3]), "status": "running"}
    kept, ignored = lb.select_runs(current + [other_data, failed])
    assert [s["run"] for s in kept] == sorted(s["run"] for s in current)
    assert {s["run"] for s in ignored} == {other_data["run"], failed["run"]}


def test_missing_cost_is_none_and_header_collects_provenance():
    board = lb.build([make_summary("unet", 0, 0, [0.5], cost=False), make_summary("empty", 0, 0, [1.0])])
    unet = next(r for r in board["rows"] if r["model"] == "unet")
    assert unet["cost"]["params"] is None and unet["cost"]["train_time_s"] == 10.0
    h = board["header"]
    assert h["device"] == ["cpu"] and h["git_sha"] == ["abc123"] and h["n_runs"] == 2
    assert h["datasets"][0]["content_hash"] == "c0ffee" and len(h["benchmark_hash"]) == 1
    assert [r["run"] for r in board["runs"]] == sorted(r["run"] for r in board["runs"])

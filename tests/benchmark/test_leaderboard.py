"""Leaderboard aggregation on hand-made summaries with hand-computed numbers."""

from __future__ import annotations

import numpy as np
import pytest

from benchmark.reporting import leaderboard as lb
from tests.benchmark.summaries import make_summary

T_975_DF2 = 4.302652729911275  # Student-t 97.5% quantile, 2 degrees of freedom (tables)


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

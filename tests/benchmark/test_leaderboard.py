"""Out-of-fold leaderboard on hand-made schema-2 summaries, with hand-computed numbers.

The toy data set (tests/benchmark/summaries.py): 8 images of 4 subjects (2 each), 2 outer folds
(subjects 1-2 and 3-4), truth empty on images 0, 2, 5 and 7.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmark.reporting import leaderboard as lb
from benchmark.reporting import tables
from benchmark.scoring import stats
from tests.benchmark.summaries import EMPTY, SUBJECTS, empty_runs, fold_rows, make_summary, model_runs

UNET = {0: [1.0, 0.8, 1.0, 0.6, 0.7, 1.0, 0.5, 0.0], 1: [1.0, 0.6, 0.0, 0.8, 0.9, 1.0, 0.7, 1.0]}
UNET_MEAN = [1.0, 0.7, 0.5, 0.7, 0.8, 1.0, 0.6, 0.5]  # per image, averaged over the two seeds
SK = {0: [1.0, 0.4, 1.0, 0.2, 0.5, 1.0, 0.3, 1.0], 1: [1.0, 0.4, 1.0, 0.2, 0.5, 1.0, 0.3, 1.0]}


def board(*groups):
    return lb.build([s for g in groups for s in g])


def row(b, model):
    return next(r for r in b["rows"] + b["incomplete"] if r["model"] == model)


def test_seeds_are_averaged_per_image_before_the_mean():
    images = lb.oof_images(model_runs("unet", UNET))
    assert images["index"].tolist() == list(range(8)) and images["n_seeds"].tolist() == [2] * 8
    assert images["dice"] == pytest.approx(UNET_MEAN)
    assert images["subject"].tolist() == SUBJECTS and images["true_empty"].tolist() == EMPTY
    unet = row(board(model_runs("unet", UNET), empty_runs()), "unet")
    m = unet["metrics"]
    assert unet["complete"] and unet["n_images"] == 8 and unet["seeds"] == [0, 1] and unet["n_runs"] == 4
    assert m["kaggle_dice"]["mean"] == pytest.approx(5.8 / 8)  # 0.725
    assert m["dice_positive"]["mean"] == pytest.approx(0.7)  # images 1, 3, 4, 6: 0.7, 0.7, 0.8, 0.6
    assert m["empty_correct"]["mean"] == pytest.approx(0.75)  # images 0, 2, 5, 7: 1, 0.5, 1, 0.5
    assert m["raw_kaggle_dice"]["mean"] == pytest.approx(
        np.mean([max(d - 0.1, 0) for v in UNET.values() for d in v])
    )
    iou = np.mean([[d / (2 - d) for d in v] for v in UNET.values()], axis=0)  # IoU averaged per image too
    assert m["iou"]["mean"] == pytest.approx(iou.mean())


def test_ci_is_the_subject_bootstrap_of_the_seed_averaged_images():
    m = row(board(model_runs("unet", UNET), empty_runs()), "unet")["metrics"]
    _, lo, hi = stats.subject_bootstrap_ci(np.array(UNET_MEAN), SUBJECTS, n_boot=lb.N_BOOT, seed=lb.SEED)
    assert (m["kaggle_dice"]["lo"], m["kaggle_dice"]["hi"]) == (pytest.approx(lo), pytest.approx(hi))
    assert lo < 0.725 < hi and lb.N_BOOT >= 2000
    positives = [i for i, e in enumerate(EMPTY) if not e]
    _, lo, hi = stats.subject_bootstrap_ci(
        np.array(UNET_MEAN)[positives], np.array(SUBJECTS)[positives], n_boot=lb.N_BOOT, seed=lb.SEED
    )
    assert (m["dice_positive"]["lo"], m["dice_positive"]["hi"]) == (pytest.approx(lo), pytest.approx(hi))


def test_ranking_paired_sign_flip_and_holm_on_four_subjects():
    b = board(model_runs("unet", UNET), model_runs("sk_unet", SK), empty_runs(seeds=(0, 1)))
    assert [r["model"] for r in b["rows"]] == ["unet", "sk_unet", "empty"] and not b["incomplete"]
    unet, sk, empty = b["rows"]
    assert sk["metrics"]["kaggle_dice"]["mean"] == pytest.approx(0.675)
    assert empty["metrics"]["kaggle_dice"]["mean"] == pytest.approx(0.5) and not empty["derived"]
    # sk - unet per subject: (-0.15, 0, -0.15, +0.1); |sum| >= 0.2 in 8 of the 16 sign patterns
    assert sk["vs_top"]["p"] == pytest.approx(0.5) and sk["vs_top"]["diff"] == pytest.approx(-0.05)
    # empty - unet per subject: (-0.35, -0.1, -0.4, -0.05): only the two all-equal signs reach it
    assert empty["vs_top"]["p"] == pytest.approx(2 / 16) and empty["vs_top"]["n_subjects"] == 4
    # the floor keeps its raw p but stays out of the Holm family: one comparison, Holm = raw for sk
    assert empty["vs_top"]["p_holm"] is None and empty["top_group"] is None
    assert sk["vs_top"]["p_holm"] == pytest.approx(0.5)
    assert unet["vs_top"]["p"] is None and [r["rank"] for r in b["rows"]] == [1, 2, 3]
    assert unet["top_group"] and sk["top_group"]  # 4 subjects cannot reach p < 0.125
    # ... and the board says that this is the sample's limit, not the models' equality
    note = tables.resolution_note(b)
    assert "With 4 subjects" in note and "2/2^4 = 0.1250" in note and "Holm over 1 comparisons" in note
    assert "**Note**: With 4 subjects" in tables.markdown(b) and "Note: With 4 subjects" in tables.console(b)


def twelve_subject_runs(model, per_subject):
    """One image per subject, 12 subjects, 2 folds of 6, all truths positive, one seed."""
    subjects, fold_of = list(range(1, 13)), [0] * 6 + [1] * 6
    return model_runs(model, {0: per_subject}, subjects=subjects, empty=[False] * 12, fold_of=fold_of)


def test_holm_decides_the_group_not_significantly_worse_than_the_top():
    top = [0.9] * 12
    mid = [0.8] * 10 + [1.0] * 2  # 10 subjects 0.1 worse, 2 subjects 0.1 better
    twin = [0.7, 1.0] + [0.9] * 10
    models = {"top": top, "mid": mid, "twin": twin, "bad": [0.5] * 12}
    b = board(*(twelve_subject_runs(m, v) for m, v in models.items()))
    rows = {r["model"]: r for r in b["rows"]}
    assert [r["model"] for r in b["rows"]] == ["top", "twin", "mid", "bad", "empty"]
    # exact sign flips over 2^12 patterns: |sum| reached by k <= 2 or k >= 10 equal signs
    assert rows["mid"]["vs_top"]["p"] == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert rows["bad"]["vs_top"]["p"] == pytest.approx(2 / 4096) and rows["twin"]["vs_top"]["p"] == 1.0
    # Holm over the 3 contenders (the floor is not one): bad x3, mid x2, twin x1
    assert rows["bad"]["vs_top"]["p_holm"] == pytest.approx(3 * 2 / 4096)
    assert rows["empty"]["vs_top"]["p_holm"] is None and rows["empty"]["vs_top"]["p"] == pytest.approx(
        2 / 4096
    )
    assert rows["mid"]["vs_top"]["p_holm"] == pytest.approx(2 * 158 / 4096)  # 0.077: raw 0.039 < 0.05
    assert [rows[m]["top_group"] for m in ("top", "twin", "mid", "bad", "empty")] == [
        True,
        True,
        True,
        False,
        None,  # the floor: not in the top-group comparison
    ]
    assert tables.resolution_note(b) is None  # 12 subjects can reach Holm p < 0.05: no caveat
    # no `empty` runs: the baseline is derived from the truth (all positive -> Dice 0), still ranked
    assert rows["empty"]["derived"] and rows["empty"]["metrics"]["kaggle_dice"]["mean"] == 0.0


def test_missing_fold_is_incomplete_unranked_untested_with_partial_mean():
    b = board(model_runs("unet", UNET, skip={(1, 1)}), model_runs("sk_unet", SK), empty_runs())
    assert [r["model"] for r in b["rows"]] == ["sk_unet", "empty"]
    unet = b["incomplete"][0]
    assert unet["model"] == "unet" and not unet["complete"] and "rank" not in unet and "vs_top" not in unet
    assert unet["missing"] == ["seed 1: fold 1 missing"] and unet["n_runs"] == 3
    # images 0-3 averaged over 2 seeds, 4-7 seed 0 only: not the mean of all 12 rows (0.667)
    partial = unet["metrics"]["kaggle_dice"]
    assert partial["mean"] == pytest.approx((1.0 + 0.7 + 0.5 + 0.7 + 0.7 + 1.0 + 0.5 + 0.0) / 8)
    assert partial["lo"] is None and partial["hi"] is None
    assert b["rows"][1]["model"] == "empty" and b["rows"][1]["vs_top"]["p_holm"] is None  # the floor


def test_a_model_missing_a_whole_seed_is_incomplete():
    """Completeness was judged on the seeds a model had: losing every run of seed 1 went unnoticed,
    and the model was ranked on 1 seed against models averaged over 2."""
    b = board(
        model_runs("unet", UNET), model_runs("sk_unet", SK, skip={(0, 1), (1, 1)}), empty_runs(seeds=(0, 1))
    )
    assert [r["model"] for r in b["rows"]] == ["unet", "empty"]
    assert b["incomplete"][0]["model"] == "sk_unet" and b["incomplete"][0]["missing"] == [
        "seed 1: folds 0, 1 missing"
    ]


def test_holdout_mode_needs_only_the_held_out_images():
    """Hold-out: fold 0 of 1 is scored; the fold table's row 1 (the training rest) is never covered."""
    folds = fold_rows()  # row 0: images 0-3 (subjects 1, 2), row 1: images 4-7
    runs = [
        make_summary("unet", 0, seed, UNET[seed][:4], index=[0, 1, 2, 3], subjects=SUBJECTS[:4],
                     empty=EMPTY[:4], folds=folds, n_folds=1, mode="holdout")
        for seed in (0, 1)
    ]  # fmt: skip
    b = board(runs)
    assert [r["model"] for r in b["rows"]] == ["unet", "empty"] and b["rows"][1]["derived"]
    assert b["rows"][0]["metrics"]["kaggle_dice"]["mean"] == pytest.approx((1.0 + 0.7 + 0.5 + 0.7) / 4)
    assert b["header"]["mode"] == ["holdout"] and b["rows"][0]["n_images"] == 4


def test_coverage_problems_are_named():
    runs = model_runs("unet", UNET)
    assert lb.missing(runs, 2, 8) == []
    doubled = runs + [make_summary("unet", 0, 0, [1.0], index=[0])]
    assert lb.missing(doubled, 2, 8) == ["fold 0 seed 0: 2 runs", "seed 0: 1 images scored more than once"]
    short = [s for s in runs if s["seed"] == 0]
    short[1] = {**short[1], "per_image": {k: v[:3] for k, v in short[1]["per_image"].items()}}
    assert lb.missing(short, 2, 8) == ["seed 0: folds cover 7 of 8 images"]
    assert lb.missing(runs[:1], 3, 8) == ["seed 0: folds 1, 2 missing"]


def test_other_benchmarks_and_unfinished_runs_are_left_out():
    current = model_runs("unet", UNET)
    other_data = make_summary("unet", 0, 1, [0.1], content="deadbeef")
    failed = {**make_summary("sk_unet", 0, 0, [0.3]), "status": "running"}
    kept, ignored = lb.select_runs(current + [other_data, failed])
    assert [s["run"] for s in kept] == sorted(s["run"] for s in current)
    assert {s["run"] for s in ignored} == {other_data["run"], failed["run"]}


def test_header_collects_split_seeds_batch_and_provenance():
    b = board(model_runs("unet", UNET, global_batch=32), empty_runs(), model_runs("sk_unet", SK, cost=False))
    h = b["header"]
    assert (
        h["n_folds"] == 2
        and h["split_seed"] == [0]
        and h["seeds"] == [0, 1]
        and h["global_batch"] == [16, 32]
    )
    assert h["folds"] == [
        {"fold": 0, "subjects": [1, 2], "n_images": 4, "positive_fraction": 0.5},
        {"fold": 1, "subjects": [3, 4], "n_images": 4, "positive_fraction": 0.5},
    ]
    assert h["device"] == ["cpu"] and h["git_sha"] == ["abc123"] and h["n_runs"] == 10
    assert h["datasets"][0]["content_hash"] == "c0ffee" and len(h["benchmark_hash"]) == 1
    # one data set, although each run's fit/inner/outer counts differ (it was listed once per fold)
    assert h["datasets"] == [{"name": "synth", "n_train": 8, "n_subjects": 4, "content_hash": "c0ffee",
                              "synthetic": True}]  # fmt: skip
    sk = row(b, "sk_unet")
    assert sk["cost"]["params"] is None and sk["cost"]["train_time_s"] == pytest.approx(10.5)
    assert sk["run_means"]["selection_kaggle_dice"] == pytest.approx(0.9) and row(b, "unet")[
        "global_batch"
    ] == [32]

"""Completeness: a model is ranked only when each seed's outer folds score exactly the expected
images once (benchmark/reporting/completeness.py), on the hand-made toy set of
tests/benchmark/summaries.py (8 images of 4 subjects, 2 outer folds)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmark.reporting import leaderboard as lb
from tests.benchmark.summaries import (
    EMPTY,
    SK,
    SUBJECTS,
    UNET,
    board,
    empty_runs,
    fold_rows,
    make_summary,
    model_runs,
)


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
    assert b["rows"][1]["model"] == "empty" and b["rows"][1]["p_best"] is None  # the floor


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
    everything = (np.arange(8), "the data set's images 0..7")
    assert lb.expected(runs)[1] == everything[1] and lb.expected(runs)[0].tolist() == list(range(8))
    assert lb.missing(runs, 2, everything) == []
    fold0 = next(s for s in runs if (s["fold"], s["seed"]) == (0, 0))
    doubled = runs + [make_summary("unet", 0, 0, [1.0], index=[0])]
    assert lb.missing(doubled, 2, everything) == [
        "fold 0 seed 0: 2 runs",
        f"seed 0: image 0 scored more than once (by {', '.join(sorted([doubled[-1]['run'], fold0['run']]))})",
    ]
    short = [s for s in runs if s["seed"] == 0]
    short[1] = {**short[1], "per_image": {k: v[:3] for k, v in short[1]["per_image"].items()}}
    assert lb.missing(short, 2, everything) == [
        f"seed 0: image 7 not scored (outer fold of {short[1]['run']})"
    ]
    assert lb.missing(short, 2, 8) == ["seed 0: folds cover 7 of 8 images"]  # the count rule
    assert lb.missing(runs[:1], 3, everything) == ["seed 0: folds 1, 2 missing"]


def _with_index(summary, index):
    return {**summary, "per_image": {**summary["per_image"], "index": index}}


def test_a_wrong_index_makes_the_model_incomplete_and_is_named():
    """A run listing image 99 instead of 11 still had the right COUNT and was ranked."""
    subjects, fold_of = [i // 4 for i in range(24)], [0] * 12 + [1] * 12  # 6 subjects of 4 images
    kw = {"subjects": subjects, "empty": [False] * 24, "fold_of": fold_of}
    runs = model_runs("unet", {0: [0.8] * 24}, **kw)
    wrong = [_with_index(runs[0], [*range(11), 99])] + runs[1:]
    b = board(wrong, model_runs("sk_unet", {0: [0.7] * 24}, **kw))
    assert [r["model"] for r in b["rows"]] == ["sk_unet", "empty"]
    name = runs[0]["run"]
    assert b["incomplete"][0]["missing"] == [
        f"seed 0: image 99 scored by {name} is not in the data set's images 0..23",
        f"seed 0: image 11 not scored (outer fold of {name})",
    ]  # each index is named once: 99 is not reported again as outside the run's own fold
    # 99 is inside a bigger data set, in the other fold: scored twice there, 11 never
    kw24 = {"subjects": subjects + [9] * 76, "empty": [False] * 100, "fold_of": fold_of + [1] * 76}
    runs = model_runs("unet", {0: [0.8] * 100}, **kw24)
    wrong = [_with_index(runs[0], [*range(11), 99])] + runs[1:]
    problems = lb.missing(wrong, 2, lb.expected(wrong))
    assert problems == [
        f"seed 0: image 99 scored more than once (by {', '.join(sorted(s['run'] for s in runs))})",
        f"seed 0: image 11 not scored (outer fold of {runs[0]['run']})",
    ]
    # two runs that swapped an image cover everything once, but each scored outside its own fold
    swapped = [_with_index(runs[0], [*range(11), 12]), _with_index(runs[1], [11, *range(13, 100)])]
    assert lb.missing(swapped, 2, lb.expected(swapped)) == [
        f"seed 0: {runs[0]['run']} scored image 12 outside its outer fold",
        f"seed 0: {runs[1]['run']} scored image 11 outside its outer fold",
    ]


def test_summaries_without_outer_indices():
    """k-fold boards need only dataset.n_train (in every schema-2 summary); a hold-out board whose
    summaries do not name the hold-out set checks the image set most models score, else counts."""
    runs = [_strip(s) for s in model_runs("unet", UNET)]
    assert lb.expected(runs)[0].tolist() == list(range(8))
    wrong = [_with_index(runs[0], [0, 1, 2, 9]), *runs[1:]]
    assert "image 9 scored by" in lb.missing(wrong, 2, lb.expected(wrong))[0]
    holdout = [
        _strip(make_summary("unet", 0, seed, UNET[seed][:4], index=[0, 1, 2, 3], subjects=SUBJECTS[:4],
                            empty=EMPTY[:4], folds=fold_rows(), n_folds=1, mode="holdout"))
        for seed in (0, 1)
    ]  # fmt: skip
    assert lb.expected(holdout)[0].tolist() == [0, 1, 2, 3]  # what both seeds score: the table's 4
    # another model scoring 4 images too, but another one: not ranked on images the others lack
    other = _strip(make_summary("sk_unet", 0, 0, UNET[0][:4], index=[0, 1, 2, 9], subjects=SUBJECTS[:4],
                                empty=EMPTY[:4], folds=fold_rows(), n_folds=1, mode="holdout"))  # fmt: skip
    problems = lb.missing([other], 1, lb.expected([*holdout, other]))
    assert problems == [
        f"seed 0: image 9 scored by {other['run']} is not in the images unet scores",
        "seed 0: image 3 not scored by any fold",
    ]
    assert lb.expected(holdout[:1] + [{**holdout[1], "per_image": {"index": [0, 1]}}]) == 4  # no agreed set
    assert lb.expected([*holdout[:1], make_summary("unet", 0, 2, [1.0], n_folds=1, mode="holdout")])[
        0
    ].tolist() == [0]


def _strip(summary):
    return {**summary, "split": {k: v for k, v in summary["split"].items() if k != "outer_indices"}}


def test_complete_rows_on_other_images_than_most_are_not_ranked():
    """A count is all a board of summaries without the data set's size or outer folds can check, so
    two models can each cover 4 images, but not the same 4: the board tests models on one set."""
    from benchmark.reporting import completeness

    rows = [{"model": m, "complete": True, "missing": []} for m in ("a", "b", "c")]
    rows.append({"model": "d", "complete": False, "missing": ["seed 0: fold 1 missing"]})
    images = {m: {"index": np.array(ix)} for m, ix in
              {"a": [0, 1, 2, 3], "b": [0, 1, 2, 9], "c": [0, 1, 2, 3], "d": [5]}.items()}  # fmt: skip
    completeness.same_images(rows, images)
    assert [r["complete"] for r in rows] == [True, False, True, False]
    assert rows[1]["missing"] == ["scored other images than the 2 model(s) ranked"]
    assert rows[3]["missing"] == ["seed 0: fold 1 missing"]

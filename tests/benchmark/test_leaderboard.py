"""Out-of-fold leaderboard on hand-made schema-2 summaries, with hand-computed numbers.

The toy data set (tests/benchmark/summaries.py): 8 images of 4 subjects (2 each), 2 outer folds
(subjects 1-2 and 3-4), truth empty on images 0, 2, 5 and 7.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from benchmark.reporting import board_stats as bs
from benchmark.reporting import leaderboard as lb
from benchmark.reporting import notes, tables
from benchmark.scoring import ranking, stats
from tests.benchmark.summaries import (
    EMPTY,
    SK,
    SUBJECTS,
    UNET,
    UNET_MEAN,
    board,
    empty_runs,
    make_summary,
    model_runs,
    row,
    twelve_subject_runs,
)


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


def test_ci_is_the_subject_bootstrap_of_the_seed_averaged_images(monkeypatch):
    few = board(model_runs("unet", UNET), empty_runs())  # 4 subjects: below the floor, no CI and a note
    assert row(few, "unet")["metrics"]["kaggle_dice"]["lo"] is None and "0.725 |" in tables.markdown(few)
    assert notes.ci_note(few).startswith("No CIs: a subject-bootstrap interval from 4 subjects covers")
    assert notes.ci_note(board(twelve_subject_runs("a", [0.9] * 12))) is None
    monkeypatch.setattr(bs, "MIN_CI_UNITS", 2)  # the computation itself, on the hand-sized data
    m = row(board(model_runs("unet", UNET), empty_runs()), "unet")["metrics"]
    per_seed = np.array([UNET[0], UNET[1]])  # two seeds: drawn with the subjects
    _, lo, hi = stats.subject_bootstrap_ci(
        np.array(UNET_MEAN), SUBJECTS, bs.N_BOOT, seed=bs.SEED, seeds=per_seed
    )
    assert (m["kaggle_dice"]["lo"], m["kaggle_dice"]["hi"]) == (pytest.approx(lo), pytest.approx(hi))
    assert lo < 0.725 < hi and bs.N_BOOT >= 2000
    _, lo1, hi1 = stats.subject_bootstrap_ci(np.array(UNET_MEAN), SUBJECTS, bs.N_BOOT, seed=bs.SEED)
    assert hi - lo > hi1 - lo1  # the seeds' spread widens it
    positives = [i for i, e in enumerate(EMPTY) if not e]
    _, lo, hi = stats.subject_bootstrap_ci(
        np.array(UNET_MEAN)[positives], np.array(SUBJECTS)[positives], bs.N_BOOT, seed=bs.SEED,
        seeds=per_seed[:, positives],
    )  # fmt: skip
    assert (m["dice_positive"]["lo"], m["dice_positive"]["hi"]) == (pytest.approx(lo), pytest.approx(hi))


def test_ranking_on_four_subjects_tests_nothing():
    b = board(model_runs("unet", UNET), model_runs("sk_unet", SK), empty_runs(seeds=(0, 1)))
    assert [r["model"] for r in b["rows"]] == ["unet", "sk_unet", "empty"] and not b["incomplete"]
    unet, sk, empty = b["rows"]
    assert sk["metrics"]["kaggle_dice"]["mean"] == pytest.approx(0.675)
    assert empty["metrics"]["kaggle_dice"]["mean"] == pytest.approx(0.5) and not empty["derived"]
    # sk - unet per-subject TOTALS (2 images each): (-0.3, 0, -0.3, +0.2), sum -0.4 over 8 images
    assert sk["vs_top"]["diff"] == pytest.approx(-0.05) and empty["vs_top"]["n_subjects"] == 4
    # 4 subjects cannot reach p < 0.05 (2/2^4) and a bootstrap of 4 says nothing: no p is below 1,
    # the tests say so, everyone is in the set, every rank interval is [1, 3]
    assert sk["vs_top"]["p"] == empty["vs_top"]["p"] == sk["vs_top"]["p_unadjusted"] == 1.0
    assert sk["vs_top"]["tested"] is False and unet["vs_floor"]["p"] == pytest.approx(1 / 16)  # exact flips
    assert [r["p_best"] for r in b["rows"]] == [1.0, 1.0, None]  # the floor is not a contender
    assert [r["top_group"] for r in b["rows"]] == [True, True, None]
    assert [r["rank_ci"] for r in b["rows"]] == [[1, 3]] * 3 and sk["vs_top"]["mde"] is None
    assert unet["vs_top"]["p"] is None and [r["rank"] for r in b["rows"]] == [1, 2, 3]
    # ... and the board says that this is the sample's limit, not the models' equality
    note = notes.resolution_note(b)
    assert "With 4 subjects" in note and "2/2^4 = 0.1250" in note
    assert "**Note**: With 4 subjects" in tables.markdown(b) and "Note: With 4 subjects" in tables.console(b)
    assert notes.power_note(b) is None  # nothing is detectable, so no power line


def test_top_group_is_the_confidence_set_for_the_best():
    top = [0.9] * 12
    mid = [0.8] * 10 + [1.0] * 2  # 10 subjects 0.1 worse, 2 subjects 0.1 better
    twin = [0.7, 1.0] + [0.9] * 10
    models = {"top": top, "mid": mid, "twin": twin, "bad": [0.5] * 12}
    b = board(*(twelve_subject_runs(m, v) for m, v in models.items()))
    rows = {r["model"]: r for r in b["rows"]}
    assert [r["model"] for r in b["rows"]] == ["top", "twin", "mid", "bad", "empty"]
    # the set, the rank intervals and the p-values are ranking's, on the ranked rows' totals
    totals = np.array([top, twin, mid, [0.5] * 12, [0.0] * 12])
    pairs = ranking.Pairs.compare(totals, np.ones(12), ranking.Resamples.draw(12, bs.N_SET, bs.SEED))
    corrected = ranking.simultaneous_pvalues(pairs)[:4].tolist()  # pairs (top, row 1..4)
    assert [rows[m]["vs_top"]["p"] for m in ("twin", "mid", "bad", "empty")] == pytest.approx(corrected)
    # the plain p is the pair's own, before the factor of 10 pairs; an exact gap is the smallest
    plain = [rows[m]["vs_top"]["p_unadjusted"] for m in ("twin", "mid", "bad", "empty")]
    assert plain == pytest.approx(pairs.marginal[:4].tolist()) and plain[2] == pytest.approx(
        1 / (1 + bs.N_SET)
    )
    # an exact gap is the most extreme the bootstrap can be (times 10 pairs); mid (plain p 0.039) is not
    assert (
        rows["bad"]["vs_top"]["p"] == pytest.approx(10 / (1 + bs.N_SET)) and rows["mid"]["vs_top"]["p"] > 0.05
    )
    contenders = ranking.best_set(pairs, [0, 1, 2, 3])
    assert [rows[m]["p_best"] for m in ("top", "twin", "mid", "bad")] == pytest.approx(contenders.tolist())
    lo, hi = ranking.rank_intervals(pairs)
    assert [r["rank_ci"] for r in b["rows"]] == [[a, z] for a, z in zip(lo.tolist(), hi.tolist())]
    # bad is 0.4 worse on every subject: an exact gap, the smallest p the bootstrap has, times 6 pairs
    assert rows["bad"]["p_best"] == pytest.approx(6 / (1 + bs.N_SET)) and rows["bad"]["top_group"] is False
    assert rows["top"]["p_best"] == 1.0 and rows["twin"]["top_group"] and rows["twin"]["p_best"] > 0.5
    assert rows["empty"]["p_best"] is None and rows["empty"]["top_group"] is None  # the floor: no contender
    assert rows["bad"]["rank_ci"] == [2, 4] and rows["empty"]["rank_ci"] == [3, 5]
    assert notes.resolution_note(b) is None  # 12 subjects can reach p < 0.05: no caveat
    # a constant gap has no spread: any true gap would be seen. mid and bad differ alike on 10 of the
    # 12 subjects, so 11% of resamples move that pair's gap without any spread (unbounded): the max
    # over all pairs has no finite 95% point, and the corrected test can detect no gap with spread
    assert rows["bad"]["vs_top"]["mde"] == 0.0 and rows["mid"]["vs_top"]["mde"] is None
    assert ranking.simultaneous_criticals(pairs)[1] == float("inf") and rows["mid"]["vs_top"]["p"] > 0.1
    # no `empty` runs: the baseline is derived from the truth (all positive -> Dice 0), still ranked
    assert rows["empty"]["derived"] and rows["empty"]["metrics"]["kaggle_dice"]["mean"] == 0.0


def test_the_test_and_the_rank_measure_the_same_thing():
    """The issue's counter-example: one subject of 1,000 frames where B scores 0.70 against A's 0.80,
    11 subjects of 5 frames where B scores 0.85 against 0.80. B ranks second by the image mean, and a
    test of per-subject MEANS called it significantly worse (p = 0.033) although B is better on 11 of
    12 subjects. On the ranked quantity the verdict is consistent: not significantly worse."""
    subjects = [0] * 1000 + [s for s in range(1, 12) for _ in range(5)]
    fold_of = [0] * 1000 + [1] * 55
    a = [0.80] * 1055
    b_dice = [0.70] * 1000 + [0.85] * 55
    kw = {"subjects": subjects, "empty": [False] * 1055, "fold_of": fold_of}
    b = board(model_runs("a", {0: a}, **kw), model_runs("b", {0: b_dice}, **kw))
    rows = {r["model"]: r for r in b["rows"]}
    assert rows["b"]["rank"] == 2 and rows["b"]["vs_top"]["diff"] == pytest.approx(-97.25 / 1055)
    # totals of b - a: -100 once and +0.25 eleven times: a resample's gap turns on whether it holds
    # the big subject, so nothing is significant, plain or corrected
    assert (
        rows["b"]["vs_top"]["p_unadjusted"] > 0.3
        and rows["b"]["vs_top"]["p"] > 0.05
        and rows["b"]["top_group"]
    )
    means = np.array([-0.1] + [0.05] * 11)  # what the old test used
    assert stats.sign_flip_pvalue(means) == pytest.approx(0.033, abs=0.001)


def test_seed_spread_and_the_one_seed_caveat():
    b = board(model_runs("unet", UNET), model_runs("sk_unet", SK), empty_runs(seeds=(0, 1)))
    unet = row(b, "unet")
    assert unet["seed_means"] == pytest.approx([5.6 / 8, 6.0 / 8])  # per-seed out-of-fold means
    assert (
        unet["seed_sd"] == pytest.approx(np.std([0.7, 0.75], ddof=1)) and row(b, "sk_unet")["seed_sd"] == 0.0
    )
    md = tables.markdown(b)
    assert "| Seed SD |" in md and "| 0.035 |" in md and "2 seeds: every image is averaged over them" in md
    assert "fewer than 20 subjects p vs floor (sign flips of seed-averaged totals) leaves training" in md
    one = board(model_runs("unet", {0: UNET[0]}), empty_runs())
    assert row(one, "unet")["seed_sd"] is None and "Seed SD" not in tables.markdown(one)
    assert (
        "One seed: the CIs, p-values, rank intervals and the top group are about these trained networks"
        in (tables.markdown(one))
    )


def test_one_subject_or_identical_models_give_a_defined_board_without_warnings():
    one = {"subjects": [1] * 4, "empty": [False] * 4, "fold_of": [0, 0, 1, 1]}
    twin = [0.9, 0.8, 0.7, 0.6]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's divide / invalid warnings included
        b = board(model_runs("a", {0: twin}, **one), model_runs("b", {0: [0.5] * 4}, **one))
        same = board(*(twelve_subject_runs(m, [0.9] * 6 + [0.7] * 6) for m in ("a", "b")))
        text = tables.markdown(b) + tables.markdown(same)
    assert [r["vs_top"]["p"] for r in b["rows"][1:]] == [1.0, 1.0]
    assert [r["p_best"] for r in b["rows"]] == [1.0, 1.0, None] and b["rows"][1]["top_group"]
    assert [r["rank_ci"] for r in b["rows"]] == [[1, 3]] * 3 and b["rows"][0]["metrics"]["kaggle_dice"][
        "lo"
    ] is None
    assert "With 1 subject no gap to the top" in text
    a, b2 = same["rows"][:2]
    assert b2["vs_top"] == {"diff": 0.0, "p": 1.0, "p_unadjusted": 1.0, "n_subjects": 12, "mde": 0.0,
                            "tested": True}  # fmt: skip
    assert a["p_best"] == b2["p_best"] == 1.0 and a["rank_ci"] == b2["rank_ci"] == [1, 2]


def test_other_benchmarks_and_unfinished_runs_are_left_out():
    current = model_runs("unet", UNET)
    other_data = make_summary("unet", 0, 1, [0.1], content="deadbeef")
    failed = {**make_summary("sk_unet", 0, 0, [0.3]), "status": "running"}
    kept, ignored = lb.select_runs(current + [other_data, failed])
    assert [s["run"] for s in kept] == sorted(s["run"] for s in current)
    assert {s["run"] for s in ignored} == {other_data["run"], failed["run"]}


def test_runs_of_several_cpu_processes_are_another_benchmark():
    """CPU DDP normalises per process (no SyncBatchNorm): its runs carry cpu_processes, which the
    run hash has, and the board must keep them apart too, not rank them beside one process's."""
    from benchmark.core.config import TrainConfig
    from benchmark.evaluation.finalize import run_identity

    cpu = TrainConfig(model="unet", accelerator="cpu", batch_size=8)
    assert "cpu_processes" not in run_identity(cpu)
    assert run_identity(cpu.__class__(**{**cpu.to_dict(), "devices": 2}))["cpu_processes"] == 2
    current = model_runs("unet", UNET)
    ddp = {**model_runs("sk_unet", SK)[0], "cpu_processes": 2}
    assert lb.benchmark_hash(ddp) != lb.benchmark_hash({**ddp, "cpu_processes": None})
    assert lb.benchmark_hash({**ddp, "cpu_processes": None}) == lb.benchmark_hash(current[0])
    kept, ignored = lb.select_runs(current + [ddp])
    assert [s["run"] for s in kept] == sorted(s["run"] for s in current) and ignored == [ddp]


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
        {
            "fold": k,
            "subjects": [2 * k + 1, 2 * k + 2],
            "n_images": 4,
            "positive_fraction": 0.5,
            "inner": {"subjects": [99], "n_images": 2},
        }
        for k in (0, 1)
    ]  # inner: every run of the fold chose its epoch and post-processing on subject 99's 2 images
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


def test_a_column_from_few_subjects_gets_no_ci_and_a_note():
    """12 subjects, but nerve-positive frames in 5 of them: dice_positive averages images of 5
    subjects, too few for a 95% interval, while the headline has its CI."""
    subjects = [s for s in range(1, 13) for _ in range(2)]
    empty = [not (s <= 5 and i == 0) for s in range(1, 13) for i in range(2)]
    dice = [0.8 if not e else 1.0 for e in empty]
    runs = model_runs("a", {0: dice}, subjects=subjects, empty=empty, fold_of=[int(s > 6) for s in subjects])
    b = board(runs)
    m = row(b, "a")["metrics"]
    assert m["kaggle_dice"]["lo"] is not None and m["dice_positive"]["lo"] is None
    assert notes.ci_note(b) == (
        "No CI in dice_positive: the images these columns average come from fewer than 10 subjects, too "
        "few for a subject-bootstrap interval to hold 95%."
    )


def test_a_board_with_too_many_pairs_for_its_resamples_says_so(monkeypatch):
    """Bonferroni over the pairs: the smallest corrected p is pairs / (1 + resamples). With 20
    resamples, 3 rows (3 pairs) can reach no p below 0.05 (3/21), and the board says why."""
    monkeypatch.setattr(bs, "N_SET", 20)
    b = board(*(twelve_subject_runs(m, [0.9 - 0.1 * i] * 12) for i, m in enumerate(("a", "b"))))
    assert notes.resolution_note(b) == (
        "With 3 rows (3 pairs) no gap can be significant here: the smallest corrected p is 3/21 >= 0.05. "
        "Rank fewer models on one board."
    )
    assert all(r["vs_top"]["p"] is None or r["vs_top"]["p"] >= 0.05 for r in b["rows"])
    monkeypatch.setattr(bs, "N_SET", 10_000)
    assert notes.resolution_note(board(twelve_subject_runs("a", [0.9] * 12))) is None


def _row(model, rank, diff, p, mde, rank_ci, baseline=False, floor_p=None):
    vs_floor = None if floor_p is None else {"diff": 0.4, "p_holm": floor_p}
    return {"model": model, "rank": rank, "baseline": baseline, "rank_ci": rank_ci, "vs_floor": vs_floor,
            "vs_top": {"diff": diff, "p": p, "mde": mde, "n_subjects": 8}}  # fmt: skip


def test_the_power_note_counts_rows_with_nothing_detectable_and_says_where_the_mde_was_checked():
    """It quoted the one usable MDE of 7 contenders as the board's power (a review: the MDE is
    detected 39-50% of the time at 8 subjects and 9 rows, not 80%)."""
    rows = [_row("top", 1, 0.0, None, None, [1, 3], floor_p=0.01), _row("a", 2, -0.05, 1.0, 0.287, [1, 4]),
            _row("b", 3, -0.1, 1.0, None, [1, 4]), _row("c", 4, -0.2, 1.0, 0.6, [1, 4]),
            _row("empty", 5, -0.45, 0.02, None, [4, 5], baseline=True)]  # fmt: skip
    board = {"rows": rows, "header": {}}
    # c's MDE (0.6) exceeds the top's lead over the floor (0.45): only a gap below the floor shows
    assert (
        "would detect, with 80% probability at alpha 0.05, a true gap to the top of 0.287 (MDE column); "
        "for 2 of the 3 rows only a gap that would put the model below the floor (an approximation "
        "checked in simulation at 40 subjects and 2 models; with fewer subjects and more rows"
    ) in notes.power_note(board)
    rows[3]["vs_top"]["mde"] = 0.0  # no spread: any gap shows, and 0 is not part of the range
    assert "top of 0.287 (MDE column); for 1 of the 3 rows only" in notes.power_note(board)
    for r in rows[1:4]:
        r["vs_top"]["mde"] = None
    assert "alpha 0.05, no gap to the top that would leave a model above the floor (an" in notes.power_note(
        board
    )
    rows[4]["vs_top"]["diff"] = 0.1  # the floor above the top: nothing to say about gaps above it
    assert notes.power_note(board) is None


def test_a_note_says_when_p_vs_top_and_p_vs_floor_disagree():
    rows = [_row("top", 1, 0.0, None, None, [1, 2], floor_p=0.01),
            _row("a", 2, -0.05, 1.0, None, [1, 3], floor_p=0.02),
            _row("empty", 3, -0.45, 0.02, None, [2, 3], baseline=True)]  # fmt: skip
    note = notes.tests_disagree_note({"rows": rows, "header": {}})
    assert note.startswith(
        "Shown above the floor by p vs floor, yet with the floor's rank in their rank interval: a."
    )
    assert "(one-sided, exact, Holm over the models only)" in note  # 8 subjects: all 2^8 flips
    rows[1]["rank_ci"] = [1, 2]
    assert notes.tests_disagree_note({"rows": rows, "header": {}}) is None  # they agree
    rows[2]["vs_top"]["p"] = 0.3
    assert notes.tests_disagree_note({"rows": rows, "header": {}}).startswith(
        "Shown above the floor by p vs floor, the top is not separated from it by p vs top (p 0.3000). With 8"
    )
    rows[0]["vs_floor"]["p_holm"] = 0.2  # neither test separates them: no disagreement to report
    assert notes.tests_disagree_note({"rows": rows, "header": {}}) is None


def test_the_ci_floor_counts_units_not_images():
    """6 subjects of 5 frames are 30 images but 6 units: below MIN_CI_UNITS (10), no CI (a gate on the
    image count would give one); 10 subjects of one frame each get theirs."""

    def images(units):
        dice = np.linspace(0.2, 0.9, units.size)
        return {"index": np.arange(units.size), "unit": units, "dice": dice, "seeds_dice": dice[None]}

    few = lb.metric(images(np.repeat(np.arange(6), 5)), "dice", None, with_ci=True)
    assert few["mean"] == pytest.approx(0.55) and few["n_images"] == 30
    assert few["lo"] is None and few["hi"] is None
    ten = lb.metric(images(np.arange(10)), "dice", None, with_ci=True)
    assert ten["mean"] == pytest.approx(0.55) and ten["lo"] < 0.55 < ten["hi"]


def test_truth_flags_follow_the_sorted_index_whatever_the_run_order():
    """A run of images 2, 3 (image 2 empty) listed before a run of images 0, 1: the sorted images 0-3
    have true_empty F, F, T, F. Taking the flags in concatenation order would mark image 0 empty."""
    late = make_summary("m", 1, 0, [1.0, 0.5], index=[2, 3], empty=[True, False], subjects=[2, 2])
    early = make_summary("m", 0, 0, [0.4, 0.6], index=[0, 1], empty=[False, False], subjects=[1, 1])
    images = lb.oof_images([late, early])
    assert images["index"].tolist() == [0, 1, 2, 3] and images["subject"].tolist() == [1, 1, 2, 2]
    assert images["true_empty"].tolist() == [False, False, True, False]
    assert images["dice"].tolist() == pytest.approx([0.4, 0.6, 1.0, 0.5])


def test_an_imported_rows_provenance_says_which_folds_said_what():
    """Fold 0 imported with --folds-file, folds 1 and 2 without: the texts were joined, the same words
    twice and which fold was unchecked unsaid (a review)."""
    runs = [make_summary("x", k, 0, [0.5, 1.0]) for k in range(3)]
    for k, s in enumerate(runs):
        s["external"] = {"provenance": "tuned on inner" + ("" if k == 0 else "; split not checked")}
    assert (
        lb.external_provenance(runs)
        == "tuned on inner [fold 0]; tuned on inner; split not checked [fold 1, 2]"
    )
    for s in runs:
        s["external"]["provenance"] = "tuned on inner"
    assert lb.external_provenance(runs) == "tuned on inner" and lb.external_provenance(runs[:0]) is None

"""The all-empty floor on the board: which models are shown above it (one-sided, Holm over the
models; exact sign flips below 20 subjects), the notes that say which are not or that the sample
cannot tell, and a model tied with it."""

from __future__ import annotations

import pytest

from benchmark.reporting import board_stats as bs
from benchmark.reporting import notes, tables
from tests.benchmark.summaries import UNET, board, model_runs, row, twelve_subject_runs


def test_the_floor_note_names_models_not_shown_to_beat_predicting_nothing():
    """Issue 20: the board says in one line which models do not clear the all-empty floor. Every truth
    is positive, so the floor scores 0 and each gap is the model's Dice. One-sided exact sign flips
    over 2^12 patterns (zero differences flip to themselves), Holm over the 3 models."""
    models = {
        "good": [0.9] * 12,  # every subject above: p = 1/4096, Holm x3
        "edge": [0.3] * 5 + [0.0] * 7,  # 5 subjects above: p = 1/32 = 0.031 < 0.05, Holm x2 = 0.0625
        "weak": [0.3] * 3 + [0.0] * 9,  # 3 subjects above: p = 1/8, Holm x1
    }
    b = board(*(twelve_subject_runs(m, v) for m, v in models.items()))
    rows = {r["model"]: r for r in b["rows"]}
    floor = {m: rows[m]["vs_floor"] for m in models}
    assert floor["good"] == pytest.approx({"diff": 0.9, "p": 1 / 4096, "p_holm": 3 / 4096})
    assert floor["edge"] == pytest.approx({"diff": 0.125, "p": 1 / 32, "p_holm": 2 / 32})
    assert floor["weak"] == pytest.approx({"diff": 0.075, "p": 1 / 8, "p_holm": 1 / 8})
    assert rows["empty"]["vs_floor"] is None and bs.beats_floor(rows["empty"]) is None
    assert [bs.beats_floor(rows[m]) for m in models] == [True, False, False]  # edge: only Holm stops it
    note = notes.floor_note(b)
    assert note is not None and note.startswith("Not shown to beat the all-empty floor")
    assert "edge (+0.125, p 0.0625), weak (+0.075, p 0.1250)" in note and "good" not in note
    assert f"**Note**: {note}" in tables.markdown(b)
    columns, lines = tables.csv_table(b)
    edge = dict(zip(columns, next(line for line in lines if line[1] == "edge")))
    assert (edge["diff_vs_floor"], edge["p_vs_floor"]) == ("0.125000", "0.062500")
    clear = board(twelve_subject_runs("good", models["good"]))
    assert notes.floor_note(clear) is None  # every model above the floor: no line


def test_the_floor_note_blames_the_sample_when_no_model_could_clear_it():
    """6 subjects, 4 models: even a model above the floor on every subject has one-sided p = 1/64,
    Holm x4 = 0.0625 >= 0.05. The note says it is the sample's limit, not the models'."""
    subjects, fold_of = list(range(1, 7)), [0] * 3 + [1] * 3
    runs = [model_runs(m, {0: [0.9] * 6}, subjects=subjects, empty=[False] * 6, fold_of=fold_of)
            for m in ("a", "b", "c", "d")]  # fmt: skip
    b = board(*runs)
    assert notes.resolution_note(b) is None and bs.floor_resolution(6, 4) == pytest.approx(0.0625)
    assert all(r["vs_floor"]["p_holm"] == pytest.approx(4 / 64) for r in b["rows"] if not r["baseline"])
    assert notes.floor_note(b) == (
        "With 6 subjects and 4 models no model can be shown to beat the all-empty floor: the smallest "
        "Holm-adjusted one-sided sign-flip p is at best 4/2^6 = 0.0625 >= 0.05. A limit of the sample, "
        "not of the models."
    )
    # the one-sided test needs fewer subjects than the two-sided ones: with 5 subjects and one model
    # (p = 1/32) the floor can be beaten although no gap to the top can be significant
    five = board(model_runs("a", {0: [0.9] * 5}, subjects=[1, 2, 3, 4, 5], empty=[False] * 5,
                            fold_of=[0, 0, 0, 1, 1]))  # fmt: skip
    assert notes.resolution_note(five) is not None and bs.beats_floor(five["rows"][0]) is True
    assert bs.floor_resolution(25, 2) == pytest.approx(2 / (1 + bs.N_SET))  # the bootstrap's, from 20


def test_a_model_below_the_floor_gets_p_one_and_is_named():
    """Every truth empty: the floor scores 1 and a model with false positives is below it. A negative
    gap is never evidence of beating the floor, whatever its two-sided p (here the smallest)."""
    runs = model_runs("noisy", {0: [0.5] * 12}, subjects=list(range(1, 13)), empty=[True] * 12,
                      fold_of=[0] * 6 + [1] * 6)  # fmt: skip
    b = board(runs)
    noisy = row(b, "noisy")
    assert noisy["vs_floor"] == pytest.approx({"diff": -0.5, "p": 1.0, "p_holm": 1.0})
    assert bs.beats_floor(noisy) is False and noisy["rank"] == 2  # the floor ranks first here
    assert noisy["vs_top"]["p_unadjusted"] == pytest.approx(
        1 / (1 + bs.N_SET)
    )  # two-sided: significant, but below
    assert "noisy (-0.500, p 1.0000)" in notes.floor_note(b)


def test_a_model_tied_with_the_floor_ranks_above_it():
    """ "empty" sorts before most names: a model scoring exactly the floor's mean was ranked below it,
    and every row's Delta and p vs top were then against the floor."""
    b = board(twelve_subject_runs("unet", [0.0] * 12))  # every truth positive: the floor scores 0 too
    assert [r["model"] for r in b["rows"]] == ["unet", "empty"] and b["rows"][1]["vs_top"]["diff"] == 0.0


def test_the_derived_floor_scores_iou_like_dice():
    """The floor derived from the truth scores 1 on the 4 empty truths of the toy set and 0 on the 4
    positive ones, in IoU as in Dice: both means 0.5. Catches a floor that kept the model's IoU."""
    floor = row(board(model_runs("unet", UNET)), "empty")
    assert floor["derived"] and floor["metrics"]["kaggle_dice"]["mean"] == pytest.approx(0.5)
    assert floor["metrics"]["iou"]["mean"] == pytest.approx(0.5)

"""`benchmark import`: every bad input is one line naming the file (exit 2, nothing written); a
perfect prediction scores 1.0; an imported row is ranked, marked external, its costs unknown; and
our own model's outer-fold masks imported again give its own per-image numbers exactly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from benchmark.cli import main
from benchmark.core.config import ConfigError
from benchmark.core.summary import read_summary, write_summary
from benchmark.external.board_config import train_config
from benchmark.external.folds import split_fold
from tests.benchmark.oracles import missing_keys
from tests.benchmark.summaries import make_summary
from tests.external.helpers import two_fold_config, write_masks, write_png


@pytest.fixture(scope="module")
def setup(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("import")
    config = two_fold_config(root)
    folds = [split_fold(train_config(config, None), synthetic_dir, k) for k in (0, 1)]
    return synthetic_dir, config, folds


def _args(data: Path, results: Path, config: Path, predictions: Path, fold: int = 0, name: str = "outside"):
    return [
        "import",
        "--name",
        name,
        "--data-dir",
        str(data),
        "--results-dir",
        str(results),
        "--fold",
        str(fold),
        "--predictions",
        str(predictions),
        "--config",
        str(config),
    ]


def _truth(fold) -> np.ndarray:
    return fold.dm.train_set.masks[fold.dm.outer_indices]


def _bad(case: str, pred: Path, fold, other) -> str:
    """Spoil a copy of the perfect predictions; the text the error line must contain."""
    stems = fold.outer
    if case == "missing":
        (pred / f"{stems[1]}.png").unlink()
        return f"{pred}: no prediction for outer-fold image {stems[1]}"
    if case == "extra":
        write_png(pred / f"{other.outer[0]}.png", np.zeros((420, 580), np.uint8))
        return f"{pred / (other.outer[0] + '.png')}: not an image of outer fold 0"
    if case == "twice":
        write_png(pred / f"{stems[0]}.tif", np.zeros((420, 580), np.uint8))
        return f"{pred / (stems[0] + '.tif')}: a second prediction for image {stems[0]}"
    if case == "shape":
        write_png(pred / f"{stems[2]}.png", np.zeros((420, 581), np.uint8))
        shape = "expected a 580x420 single-channel mask (H=420), got shape (420, 581)"
        return f"{pred / (stems[2] + '.png')}: {shape}"
    mask = np.zeros((420, 580), np.uint8)
    mask[10:20, 10:20] = 7
    write_png(pred / f"{stems[3]}.png", mask)
    return f"{pred / (stems[3] + '.png')}: mask is not binary: values 0, 7 (expected 0/1 or 0/255)"


@pytest.mark.parametrize("case", ["missing", "extra", "twice", "shape", "binary"])
def test_bad_masks_are_one_line_and_write_nothing(case, setup, tmp_path, capsys) -> None:
    data, config, (fold, other) = setup
    pred = write_masks(tmp_path / "pred", fold.outer, _truth(fold))
    expected = _bad(case, pred, fold, other)
    results = tmp_path / "results"
    assert main(_args(data, results, config, pred)) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {expected}" or (err.startswith(f"error: {expected}") and "\n" not in err), err
    assert not results.exists()


def test_every_bad_mask_is_named_in_one_attempt(setup, tmp_path, capsys) -> None:
    """Only the first problem was named: a folder with five took five attempts to mend."""
    data, config, (fold, other) = setup
    pred = write_masks(tmp_path / "pred", fold.outer, _truth(fold))
    cases = ["twice", "extra", "missing", "shape", "binary"]  # the order they are checked in
    expected = [_bad(case, pred, fold, other) for case in cases]
    assert main(_args(data, tmp_path / "results", config, pred)) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"error: {pred}: 5 problems:" and len(lines) == 6
    assert all(line.strip().startswith(text) for line, text in zip(lines[1:], expected)), lines
    assert not (tmp_path / "results").exists()


def test_other_data_missing_fold_and_taken_names(setup, tmp_path, capsys) -> None:
    data, config, (fold, _) = setup
    pred = write_masks(tmp_path / "pred", fold.outer, _truth(fold))
    results = tmp_path / "results"
    other = make_summary("unet", 0, 0, [1.0], content="0123456789abcdef", synthetic=False)
    write_summary(results / "runs" / other["run"], other)
    assert main(_args(data, results, config, pred)) == 2
    assert sorted(p.name for p in (results / "runs").iterdir()) == [other["run"]]  # nothing new
    err = capsys.readouterr().err
    run = results / "runs" / other["run"]
    assert err.startswith(f"error: {run}: made on data with content hash 0123456789abcdef, but {data} has ")
    assert err.count("\n") == 1
    shutil.rmtree(results)
    assert main(_args(data, results, config, pred, fold=2)) == 2
    assert capsys.readouterr().err == "error: fold 2 does not exist: the split has folds 0..1\n"
    assert main(_args(data, results, config, pred, name="unet")) == 2
    assert "is a nerve-bench model" in capsys.readouterr().err
    assert not results.exists()
    (tmp_path / "bad.json").write_text(json.dumps({"format": "nerve-bench folds 1", "content_hash": "x"}))
    assert main(_args(data, results, config, pred) + ["--folds-file", str(tmp_path / "bad.json")]) == 2
    assert capsys.readouterr().err.startswith(
        f"error: {tmp_path / 'bad.json'}: made on data with content hash x"
    )
    three = tmp_path / "three.json"  # 3 folds; the board has 2
    assert main(["folds", "--data-dir", str(data), "--out", str(three), "--set", "n_folds=3"]) == 0
    capsys.readouterr()
    assert main(_args(data, results, config, pred) + ["--folds-file", str(three)]) == 2
    assert capsys.readouterr().err == (
        f"error: {three}: fold 0 of this file is not this benchmark's fold (n_folds 3 here, 2 on the board; "
        "write the folds file from the board's config and train on it again)\n"
    )
    good = tmp_path / "good.json"  # this split, then edited: trained on the outer fold, or re-split
    assert main(["folds", "--data-dir", str(data), "--config", str(config), "--out", str(good)]) == 0
    doc = json.loads(good.read_text())
    for part, edit, why in (
        ("train", lambda f: f["train"] + f["outer"][:2], "fold 0's train set holds 2 of its outer images"),
        (
            "inner",
            lambda f: f["inner"][1:],
            "fold 0's inner set is not this benchmark's (the same split "
            "settings, other images: edited, or written by another version of nerve-bench?)",
        ),
        (  # a hand-edited file of other types: a line, not a TypeError traceback (exit 1)
            "inner",
            lambda f: [{"x": 1}],
            "fold 0's inner set is not this benchmark's (the same split "
            "settings, other images: edited, or written by another version of nerve-bench?)",
        ),
        (
            "fold",
            lambda f: [0],
            "fold 0 of this file is not this benchmark's fold (the same split settings, "
            "other images: edited, or written by another version of nerve-bench?)",
        ),
    ):
        edited = json.loads(json.dumps(doc))
        edited["folds"][0][part] = edit(edited["folds"][0])
        (tmp_path / "edited.json").write_text(json.dumps(edited))
        capsys.readouterr()
        assert main(_args(data, results, config, pred) + ["--folds-file", str(tmp_path / "edited.json")]) == 2
        assert capsys.readouterr().err == f"error: {tmp_path / 'edited.json'}: {why}\n"
    other = tmp_path / "other.json"  # this split's outer folds, another inner_fraction: the cause is named
    assert main(["folds", "--data-dir", str(data), "--config", str(config), "--out", str(other),
                 "--set", "inner_fraction=0.6"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(_args(data, results, config, pred) + ["--folds-file", str(other)]) == 2
    err = capsys.readouterr().err
    assert "fold 0's train set is not this benchmark's (inner_fraction 0.6 here, " in err, err
    assert err.endswith("on the board; write the folds file from the board's config and train on it again)\n")
    assert not results.exists()  # nothing written by any of the refused imports


def test_perfect_masks_score_one_and_rank_as_external(setup, tmp_path, capsys) -> None:
    data, config, folds = setup
    results = tmp_path / "results"
    folds_file = tmp_path / "folds.json"
    assert main(["folds", "--data-dir", str(data), "--config", str(config), "--out", str(folds_file)]) == 0
    for fold, kind in zip(folds, ("png", "tif")):
        pred = write_masks(tmp_path / f"pred{fold.cfg.fold}", fold.outer, _truth(fold), kind)
        args = _args(data, results, config, pred, fold=fold.cfg.fold, name="perfect")
        assert main(args + ["--provenance", "the truth itself", "--folds-file", str(folds_file)]) == 0
    runs = sorted((results / "runs").glob("perfect__f*"))
    summary = read_summary(runs[0])
    assert missing_keys(summary) == [] and summary["external"]["provenance"] == "the truth itself"
    assert summary["external"]["folds"] == f"checked against {folds_file.resolve()}"
    assert summary["metrics"]["post"]["kaggle_dice"] == 1.0 and set(summary["per_image"]["dice"]) == {1.0}
    assert summary["cost"] == dict.fromkeys(summary["cost"]) and summary["postprocess"] is None
    assert (runs[0] / "overlays.npz").is_file()
    capsys.readouterr()
    assert main(["report", "--results", str(results)]) == 0  # plots too: overlays come from the masks
    assert (results / "plots" / "overlays.png").is_file()
    board = json.loads((results / "leaderboard.json").read_text())
    top = board["rows"][0]
    assert (top["model"], top["external"], top["metrics"]["kaggle_dice"]["mean"]) == (
        "perfect",
        "the truth itself",
        1.0,
    )
    assert top["rank"] == 1 and top["complete"]  # ranked like any model (6 subjects: no CI, a note says why)
    md = (results / "leaderboard.md").read_text()
    cost_row = next(
        line for line in md.splitlines() if line.startswith("| perfect (external) |") and "unknown" in line
    )
    assert "0.00" not in cost_row and cost_row.count("unknown") == 7
    assert "- **perfect** (external): the truth itself" in md
    # the protocol said of every row that its outer fold was never used for any decision (a review)
    assert "with `benchmark import` was trained and tuned as its authors state" in md
    assert "unknown" in (results / "leaderboard.csv").read_text()


def test_a_second_import_of_a_fold_is_refused_without_replace(setup, tmp_path, capsys) -> None:
    """It used to replace the scores on the board silently (Kaggle Dice 0.02 -> 0.52, no notice)."""
    data, config, folds = setup
    fold, results = folds[0], tmp_path / "results"
    perfect = write_masks(tmp_path / "perfect", fold.outer, _truth(fold), "png")
    empty = write_masks(tmp_path / "empty", fold.outer, [np.zeros_like(m) for m in _truth(fold)], "png")
    assert main(_args(data, results, config, perfect)) == 0
    (summary,) = (results / "runs").glob("outside__f0__s0__*/summary.json")
    before = summary.read_bytes()
    capsys.readouterr()
    assert main(_args(data, results, config, empty)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"error: {summary}: outside fold 0 seed 0 is already imported "
    )
    assert f"(Kaggle Dice 1.0000, from {perfect.resolve()}); --replace to overwrite it" in err[0]
    assert summary.read_bytes() == before
    assert main([*_args(data, results, config, empty), "--replace"]) == 0
    replaced = read_summary(summary.parent)
    low = replaced["metrics"]["post"]["kaggle_dice"]
    assert low < 1.0 and replaced["external"]["replaced"] == [
        {"source": str(perfect.resolve()), "kaggle_dice": 1.0}
    ]
    # the board says what it cannot check, and that scores of other masks were seen and replaced
    assert replaced["external"]["provenance"] == (
        f"predictions imported from {empty}; training split not checked (imported without --folds-file); "
        "replaced 1 earlier import(s) of other masks (outer-fold Kaggle Dice 1.0000)"
    )
    assert main([*_args(data, results, config, perfect), "--replace"]) == 0
    again = read_summary(summary.parent)["external"]
    assert [e["kaggle_dice"] for e in again["replaced"]] == [1.0, low]
    assert again["provenance"].endswith(
        f"replaced 1 earlier import(s) of other masks (outer-fold Kaggle Dice {low:.4f})"
    )


def test_an_import_that_finishes_meanwhile_is_not_overwritten(setup, tmp_path, monkeypatch, capsys) -> None:
    """Two imports of one fold: both passed the overwrite check before either wrote, so the later
    one replaced the earlier's scores without a word. The check is now made again under the lock."""
    from benchmark.external import importer

    data, config, (fold, _) = setup
    results = tmp_path / "results"
    perfect = write_masks(tmp_path / "perfect", fold.outer, _truth(fold), "png")
    empty = write_masks(tmp_path / "empty", fold.outer, [np.zeros_like(m) for m in _truth(fold)], "png")
    read = importer.read_predictions

    def other_import_lands(folder, stems, k):  # the other process finishes while these masks are read
        if folder == empty:
            monkeypatch.setattr(importer, "read_predictions", read)
            assert main(_args(data, results, config, perfect)) == 0
        return read(folder, stems, k)

    monkeypatch.setattr(importer, "read_predictions", other_import_lands)
    assert main(_args(data, results, config, empty)) == 2
    assert "outside fold 0 seed 0 is already imported (Kaggle Dice 1.0000" in capsys.readouterr().err
    (summary,) = (results / "runs").glob("outside__f0__s0__*/summary.json")
    assert read_summary(summary.parent)["metrics"]["post"]["kaggle_dice"] == 1.0
    monkeypatch.setattr(importer, "read_predictions", other_import_lands)
    (summary.parent / "summary.json").unlink()
    assert main([*_args(data, results, config, empty), "--replace"]) == 0  # the one that landed: listed
    replaced = read_summary(summary.parent)["external"]["replaced"]
    assert replaced == [{"source": str(perfect.resolve()), "kaggle_dice": 1.0}]


def test_round_trip_gives_the_runs_own_numbers(fit_runs, tmp_path) -> None:
    """Our unet's outer-fold post-processed masks, exported and imported, score exactly as its summary."""
    from benchmark.evaluation.inference import predict_loader
    from benchmark.scoring import postprocess
    from benchmark.training.checkpoint import load_checkpoint_module, postprocess_of
    from tests.benchmark.fitting import UNET

    run_dir = fit_runs.run_dir(UNET)
    module, ckpt = load_checkpoint_module(run_dir / "checkpoints" / "best.ckpt")
    pp = postprocess_of(run_dir, ckpt)
    split = split_fold(UNET, fit_runs.data, UNET.fold)
    rows = predict_loader(
        module, split.dm.outer_dataloader(), __import__("torch").device("cpu"), "32", keep_probs=True, pp=pp
    )
    head = rows["presence_prob"] if rows["presence_head"] else None
    masks = np.asarray(postprocess.apply(rows["prob_u8"], pp, head))
    pred = write_masks(tmp_path / "pred", [split.dm.stems[i] for i in rows["index"]], masks, "tif")
    results = tmp_path / "results"
    write_summary(results / "runs" / run_dir.name, fit_runs.unet)  # the board it joins: its config, its split
    args = [
        "import",
        "--name",
        "unet_again",
        "--data-dir",
        str(fit_runs.data),
        "--results-dir",
        str(results),
        "--fold",
        str(UNET.fold),
        "--predictions",
        str(pred),
    ]
    assert main(args) == 0
    imported = read_summary(next((results / "runs").glob("unet_again__*")))
    own = fit_runs.unet
    for key in ("index", "stem", "subject", "true_empty", "dice", "iou"):
        assert imported["per_image"][key] == own["per_image"][key], key
    assert imported["metrics"]["post"] == own["metrics"]["post"]
    assert imported["split"] == own["split"] and imported["dataset"] == own["dataset"]


def test_an_import_joins_the_board_it_finds_or_is_refused(setup, tmp_path, capsys) -> None:
    """A seed the other rows lack took every model off the ranking, an import under another config
    took the board over (exit 0 both), and a model trained here under an imported name merged into
    one ranked row with the masks from elsewhere."""
    from benchmark.grid_checks import check_imported_names
    from benchmark.reporting import leaderboard as lb
    from benchmark.reporting.report import load_summaries

    data, config, (fold, other) = setup
    results = tmp_path / "results"
    masks = [write_masks(tmp_path / f"p{f.cfg.fold}", f.outer, _truth(f), "png") for f in (fold, other)]
    for k, pred in enumerate(masks):
        assert main(_args(data, results, config, pred, fold=k)) == 0
    capsys.readouterr()
    assert main([*_args(data, results, config, masks[0], name="second"), "--seed", "7"]) == 2
    assert capsys.readouterr().err == (
        f"error: --seed 7: the other rows in {results} have seed(s) 0; a row needs every seed of the board, "
        "so import one of those (or use another --results-dir)\n"
    )
    assert main([*_args(data, results, config, masks[0]), "--seed", "1"]) == 0  # its own row: any seed
    err = capsys.readouterr().err  # seed 1 of the very masks of seed 0: said, not refused
    assert "seed 0 scored the same per-image numbers; the same masks under two seeds show no training" in err
    assert main([*_args(data, results, config, masks[0], name="second"), "--set", "lr=0.5"]) == 2
    assert capsys.readouterr().err.endswith(
        "holds runs of another benchmark config; an import joins its board (pass no --config), or goes to "
        "another --results-dir\n"
    )
    assert sorted({s["model"] for _, s in load_summaries(results)}) == ["outside"]
    (tmp_path / "a_file").write_text("")
    assert main(_args(data, tmp_path / "a_file", config, masks[0])) == 2  # was found at the write: exit 1
    assert capsys.readouterr().err == (
        f"error: {tmp_path / 'a_file'}: --results-dir is a file; expected a results directory\n"
    )
    with pytest.raises(ConfigError, match="'outside' is an imported method here; a model trained by"):
        check_imported_names(results, ["unet", "outside"])
    check_imported_names(results, ["unet"])
    native = make_summary("outside", 1, 1, [0.5])  # a run trained here under the imported name
    problems = lb.missing([*[s for _, s in load_summaries(results)], native], 2, 8)
    assert (
        "mixes runs trained by nerve-bench with imported masks (fold 0 seed 0, fold 0 seed 1, fold 1 seed 0 "
        "imported)" in problems
    )
    assert not any("mixes" in p for p in lb.missing([s for _, s in load_summaries(results)], 2, 8))

"""`benchmark folds` writes exactly our split: the DataModule's parts, and a real run's subjects."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from benchmark.cli import main
from benchmark.external.folds import folds_document
from datamodules.data_config import DataConfig
from datamodules.datamodule import UltrasoundNerveDataModule
from datamodules.kaggle import check_dataset
from tests.benchmark.fitting import UNET
from tests.external.helpers import two_fold_config


def test_folds_file_is_the_datamodule_split(synthetic_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "folds.json"
    assert (
        main(
            [
                "folds",
                "--data-dir",
                str(synthetic_dir),
                "--config",
                str(two_fold_config(tmp_path)),
                "--set",
                "split_seed=3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "2 folds" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc["split_seed"] == 3 and doc["content_hash"] == check_dataset(synthetic_dir)["content_hash"]
    outers = []
    for k, entry in enumerate(doc["folds"]):
        dm = UltrasoundNerveDataModule(synthetic_dir, DataConfig(fold=k, n_folds=2, split_seed=3))
        dm.setup("fit")
        for part, idx in (
            ("train", dm.fit_indices),
            ("inner", dm.inner_indices),
            ("outer", dm.outer_indices),
        ):
            assert entry[part] == [dm.stems[i] for i in idx], (k, part)
        assert not set(entry["train"]) & set(entry["inner"]) and not set(entry["inner"]) & set(entry["outer"])
        assert len(entry["train"]) + len(entry["inner"]) + len(entry["outer"]) == len(dm.stems)
        outers += entry["outer"]
    assert sorted(outers) == sorted(dm.stems)  # the outer folds cover every image once


def test_folds_match_a_real_run(fit_runs) -> None:
    """The fold of a trained run: its outer images are the summary's, its subjects the split block's."""
    doc = folds_document(UNET, fit_runs.data)
    summary = fit_runs.unet
    entry = doc["folds"][UNET.fold]
    assert entry["outer"] == summary["per_image"]["stem"]
    assert entry["outer_subjects"] == summary["split"]["outer_subjects"]
    assert entry["inner_subjects"] == summary["split"]["inner_subjects"]
    assert entry["train_subjects"] == summary["split"]["fit_subjects"]
    assert (len(entry["train"]), len(entry["inner"])) == (
        summary["dataset"]["n_fit"],
        summary["dataset"]["n_inner"],
    )
    assert doc["content_hash"] == summary["dataset"]["content_hash"]
    assert np.unique([s.split("_")[0] for s in entry["inner"]]).tolist() == [
        str(s) for s in entry["inner_subjects"]
    ]


def test_folds_of_a_results_directory_are_its_boards(fit_runs, tmp_path: Path, capsys) -> None:
    """`folds` wrote default.yaml's 5 folds beside a board of 3: a method trained on them was refused
    by `import` only after its training (a review). --results-dir takes the board's split."""
    from benchmark.core.summary import write_summary

    summary = fit_runs.unet
    write_summary(tmp_path / "runs" / summary["run"], summary)
    out = tmp_path / "folds.json"
    argv = ["folds", "--data-dir", str(fit_runs.data), "--out", str(out)]
    assert main([*argv, "--results-dir", str(tmp_path)]) == 0 and "3 folds" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc["folds"][summary["fold"]]["outer"] == summary["per_image"]["stem"]
    assert main(argv) == 0 and "5 folds" in capsys.readouterr().out  # default.yaml's, as before


def test_folds_warns_where_the_inner_set_outnumbers_the_training_part(
    synthetic_dir: Path, tmp_path: Path, capsys
) -> None:
    """`run` warned of such a split and `folds` wrote it without a word, for an outside method to train."""
    argv = ["folds", "--data-dir", str(synthetic_dir), "--config", str(two_fold_config(tmp_path))]
    assert main([*argv, "--out", str(tmp_path / "a.json")]) == 0
    assert capsys.readouterr().err == ""
    assert main([*argv, "--set", "inner_fraction=0.8", "--out", str(tmp_path / "b.json")]) == 0
    doc, err = json.loads((tmp_path / "b.json").read_text()), capsys.readouterr().err.splitlines()
    larger = [f for f in doc["folds"] if len(f["inner"]) > len(f["train"])]
    assert larger and err == [
        f"warning: {synthetic_dir}: fold {f['fold']}: the inner selection set ({len(f['inner'])} images) is "
        f"larger than the fit part ({len(f['train'])}); with so few subjects, use fewer folds or a smaller "
        "inner_fraction"
        for f in larger
    ]
    # An --out it cannot write is refused before the split is computed (exit 2), not after it (exit 1)
    assert main([*argv, "--out", str(tmp_path)]) == 2
    assert (
        capsys.readouterr().err
        == f"error: {tmp_path}: --out is a directory; expected the path of a .json file\n"
    )
    assert main([*argv, "--out", str(tmp_path / "a.json" / "c.json")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'a.json'}: a file, not a folder; --out ")

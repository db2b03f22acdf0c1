"""evaluate(): every training image scored with the checkpoint's stored post-processing; clear errors."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from benchmark.cli import main
from benchmark.evaluation.evaluate import evaluate
from benchmark.pipeline import fit
from datamodules.errors import NerveBenchError
from tests.benchmark.fitting import EMPTY, PER_SUBJECT, SUBJECTS, UNET, trained_runs

pytestmark = pytest.mark.slow


def test_evaluate_scores_every_image_consistently_with_fit(tmp_path_factory, tmp_path):
    runs = trained_runs(tmp_path_factory)
    out = tmp_path / "eval.json"
    result = evaluate(runs.run_dir(UNET) / "checkpoints" / "best.ckpt", runs.data, out)
    per = result["per_image"]
    assert result["n_images"] == SUBJECTS * PER_SUBJECT and per["index"] == list(
        range(SUBJECTS * PER_SUBJECT)
    )
    assert json.loads(out.read_text()) == result
    assert result["postprocess"] == runs.unet["postprocess"]
    # The validation images get the very per-image scores fit() reported for them.
    fit_per = runs.unet["per_image"]
    for key in ("dice", "dice_raw", "iou", "true_empty", "stem", "subject"):
        assert [per[key][i] for i in fit_per["index"]] == fit_per[key], key
    assert np.mean(per["dice"]) == pytest.approx(result["metrics"]["post"]["kaggle_dice"])


def test_empty_model_on_real_sample_scores_its_empty_masks_exactly(uns_sample, tmp_path):
    summary = fit(dataclasses.replace(EMPTY, n_folds=2), uns_sample, tmp_path / "run")
    assert summary["status"] == "complete"
    result = evaluate(tmp_path / "run" / "checkpoints" / "best.ckpt", uns_sample)
    per = result["per_image"]
    assert result["n_images"] == 26 and len(per["stem"]) == 26
    empty = np.asarray(per["true_empty"])
    assert empty.sum() == 11
    assert np.all(np.asarray(per["dice"])[empty] == 1.0) and np.all(np.asarray(per["dice"])[~empty] == 0.0)
    assert result["metrics"]["raw"]["kaggle_dice"] == result["metrics"]["post"]["kaggle_dice"] == 11 / 26


def test_missing_or_invalid_checkpoint_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(NerveBenchError, match="checkpoint not found"):
        evaluate(tmp_path / "nope.ckpt", tmp_path)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(NerveBenchError, match=r"garbage\.ckpt: unreadable checkpoint"):
        evaluate(garbage, tmp_path)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(NerveBenchError, match="not a nerve-bench checkpoint"):
        evaluate(foreign, tmp_path)
    assert main(["evaluate", "--checkpoint", str(garbage), "--data-dir", str(tmp_path)]) == 2
    assert "unreadable checkpoint" in capsys.readouterr().err


def test_cli_evaluate_prints_a_table_and_writes_json(tmp_path_factory, tmp_path, capsys):
    runs = trained_runs(tmp_path_factory)
    out = tmp_path / "metrics.json"
    ckpt = runs.run_dir(EMPTY) / "checkpoints" / "best.ckpt"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data-dir", str(runs.data), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert "kaggle_dice" in printed and f"{result['metrics']['post']['kaggle_dice']:.4f}" in printed
    assert result["metrics"]["post"]["kaggle_dice"] == float(np.mean(result["per_image"]["true_empty"]))

"""fit(): learning beats the empty baseline, summary.json schema, checkpoints, resume, determinism, CLI."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from benchmark import pipeline as train
from benchmark.cli import main
from benchmark.core.config import ConfigError
from benchmark.core.summary import dumps, missing_keys
from tests.benchmark.fitting import TINY, UNET, trained_runs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return trained_runs(tmp_path_factory)


def test_unet_clearly_beats_the_empty_baseline(runs):
    empty, unet = runs.empty, runs.unet
    fraction_empty = float(np.mean(empty["per_image"]["true_empty"]))
    assert 0 < fraction_empty < 1
    # An all-background prediction scores exactly 1 on empty truths and 0 elsewhere.
    assert empty["metrics"]["raw"]["kaggle_dice"] == fraction_empty
    assert empty["metrics"]["post"]["kaggle_dice"] == fraction_empty
    assert empty["per_image"]["dice"] == [float(e) for e in empty["per_image"]["true_empty"]]
    assert unet["metrics"]["raw"]["kaggle_dice"] >= fraction_empty + 0.1
    assert unet["metrics"]["post"]["kaggle_dice"] >= fraction_empty + 0.1
    assert unet["per_image"]["index"] == empty["per_image"]["index"]  # same fold, same images


def test_summary_follows_the_schema(runs):
    s = runs.unet
    path = runs.run_dir(UNET) / "summary.json"
    text = path.read_text()
    assert text == dumps(json.loads(text))  # sorted keys, indent 2, strict JSON
    assert missing_keys(s) == []
    assert s["status"] == "complete" and s["schema_version"] == 1
    assert s["config"] == UNET.to_dict() and s["config_hash"] == UNET.hash() and s["run"] == UNET.run_name()
    assert (s["model"], s["fold"], s["n_folds"], s["seed"]) == ("unet", 0, 3, 0)
    ds = s["dataset"]
    assert (ds["n_train"], ds["n_subjects"], ds["n_val"], ds["synthetic"]) == (66, 6, 22, False)
    assert re.fullmatch(r"[0-9a-f]{16}", ds["content_hash"])
    per = s["per_image"]
    assert all(len(per[k]) == 22 for k in per) and per["index"] == sorted(per["index"])
    assert all(stem.startswith(f"{subj}_") for stem, subj in zip(per["stem"], per["subject"]))
    h = s["history"]
    assert h["epoch"] == list(range(UNET.epochs)) and s["epochs_run"] == UNET.epochs
    assert s["best_epoch"] == int(np.argmax(h["val_kaggle_dice"]))
    # The raw metrics are the validation metric of the best epoch, recomputed from best.ckpt.
    assert s["metrics"]["raw"]["kaggle_dice"] == pytest.approx(
        h["val_kaggle_dice"][s["best_epoch"]], abs=1e-12
    )
    assert s["metrics"]["post"]["kaggle_dice"] >= s["metrics"]["raw"]["kaggle_dice"]  # tuned on these images
    assert np.mean(per["dice"]) == pytest.approx(s["metrics"]["post"]["kaggle_dice"])
    assert s["cost"]["params"] > 0 and s["cost"]["train_img_s"] > 0 and s["train_time_s"] > 0
    assert set(s["postprocess"]) >= {"threshold", "min_area", "presence_tau", "presence_source", "tta"}


def test_best_checkpoint_carries_the_tuned_postprocessing(runs):
    ckpt_dir = runs.run_dir(UNET) / "checkpoints"
    best = torch.load(ckpt_dir / "best.ckpt", map_location="cpu", weights_only=True)
    assert best["nerve_bench"]["postprocess"] == runs.unet["postprocess"]
    assert best["nerve_bench"]["config"] == UNET.to_dict()
    assert best["nerve_bench"]["summary_metrics"]["post"] == pytest.approx(runs.unet["metrics"]["post"])
    assert best["epoch"] == runs.unet["best_epoch"]
    assert (ckpt_dir / "last.ckpt").is_file()


def test_overlays_hold_first_positives_and_negatives(runs):
    with np.load(runs.run_dir(UNET) / "overlays.npz") as z:
        stems, image, truth, pred = z["stem"], z["image"], z["truth"], z["pred"]
    assert image.shape == truth.shape == pred.shape == (len(stems), 128, 177)
    positive = truth.reshape(len(stems), -1).any(axis=1)
    per = runs.unet["per_image"]
    val_pos = [s for s, e in zip(per["stem"], per["true_empty"]) if not e]
    val_neg = [s for s, e in zip(per["stem"], per["true_empty"]) if e]
    assert stems.tolist() == val_pos[:4] + val_neg[:2]
    assert positive.tolist() == [True] * min(4, len(val_pos)) + [False] * min(2, len(val_neg))


def test_complete_run_is_not_retrained(runs, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("a complete run must not be retrained")

    monkeypatch.setattr(train, "train", boom)
    assert train.fit(UNET, runs.data, runs.run_dir(UNET)) == runs.unet


class Stop(Exception):
    pass


class StopAt(Callback):
    """Simulates a crash at the start of an epoch (after the previous epoch's checkpoint)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise Stop


class CountEpochs(Callback):
    def __init__(self) -> None:
        self.epochs: list[int] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epochs.append(trainer.current_epoch)


def test_interrupted_run_resumes_from_last_checkpoint(runs, tmp_path):
    cfg = dataclasses.replace(TINY, epochs=3)
    with pytest.raises(Stop):
        train.fit(cfg, runs.data, tmp_path, callbacks=[StopAt(1)])
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file() and not (tmp_path / "summary.json").exists()
    counter = CountEpochs()
    summary = train.fit(cfg, runs.data, tmp_path, callbacks=[counter])
    assert counter.epochs == [1, 2]  # epoch 0 was not trained again
    assert summary["history"]["epoch"] == [0, 1, 2] and summary["epochs_run"] == 3


def test_checkpoint_of_another_config_is_refused(runs, tmp_path):
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    source = runs.run_dir(UNET) / "checkpoints" / "last.ckpt"
    (ckpt_dir / "last.ckpt").write_bytes(source.read_bytes())
    with pytest.raises(ConfigError, match="checkpoint of a different config"):
        train.fit(TINY, runs.data, tmp_path)


def test_same_seed_and_config_give_bit_identical_results(runs, tmp_path):
    a = train.fit(TINY, runs.data, tmp_path / "a")
    b = train.fit(TINY, runs.data, tmp_path / "b")
    assert a["per_image"] == b["per_image"]
    assert a["metrics"] == b["metrics"] and a["postprocess"] == b["postprocess"]
    assert a["history"] == b["history"]


def test_cli_fit_writes_the_run_and_prints_metrics(runs, tmp_path, capsys):
    out = tmp_path / "cli_run"
    argv = ["fit", "--model", "empty", "--data-dir", str(runs.data), "--out", str(out), "--image-size", "64",
            "--folds", "3", "--fold", "1", "--set", "logger=none", "--set", "progress_bar=false"]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["fold"] == 1 and summary["model"] == "empty"
    printed = capsys.readouterr().out
    assert "kaggle_dice" in printed and f"{summary['metrics']['post']['kaggle_dice']:.4f}" in printed


def test_cli_fit_reports_bad_input_in_one_line(runs, tmp_path, capsys):
    argv = ["fit", "--model", "unet", "--data-dir", str(runs.data), "--out", str(tmp_path), "--set", "lr=abc"]
    assert main(argv) == 2
    assert "lr='abc'" in capsys.readouterr().err


def test_gpu_cache_fast_path_trains_on_cpu_too(runs, tmp_path):
    counter = CountEpochs()
    cfg = dataclasses.replace(TINY, gpu_cache=True, epochs=1)
    summary = train.fit(cfg, runs.data, tmp_path, callbacks=[counter])
    assert counter.epochs == [0] and summary["status"] == "complete"
    assert summary["dataset"]["n_val"] == 22 and summary["cost"]["train_img_s"] > 0

"""fit(): learning beats the empty baseline, the nested protocol (selection on the inner set, scores
on the outer fold), summary.json schema 2, checkpoints, resume, determinism, CLI."""

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
from benchmark.core.summary import dumps
from benchmark.evaluation import inference
from benchmark.scoring.counts import score_counts
from benchmark.training.checkpoint import load_checkpoint_module
from benchmark.training.trainer import make_datamodule
from tests.benchmark.fitting import TINY, UNET, Stop, StopAt, one_thread
from tests.benchmark.oracles import missing_keys

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(fit_runs):
    return fit_runs


@pytest.fixture(scope="module")
def dm(runs):
    """The UNET run's DataModule, rebuilt from its config: the split is a function of the config."""
    module = make_datamodule(UNET, runs.data)
    module.setup()
    return module


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
    assert unet["per_image"]["index"] == empty["per_image"]["index"]  # same outer fold, same images
    # `empty` selects nothing, but goes through the same protocol: tuned on inner, scored on outer.
    assert empty["selection"]["n_images"] == 11 and empty["best_epoch"] == 0


def test_summary_follows_the_schema(runs):
    s = runs.unet
    path = runs.run_dir(UNET) / "summary.json"
    text = path.read_text()
    assert text == dumps(json.loads(text))  # sorted keys, indent 2, strict JSON
    assert missing_keys(s) == []
    assert s["status"] == "complete" and s["schema_version"] == 3
    assert s["config"] == UNET.to_dict() and s["config_hash"] == UNET.hash() and s["run"] == UNET.run_name()
    assert (s["model"], s["fold"], s["n_folds"], s["seed"]) == ("unet", 0, 3, 0)
    source = s["model_source"]  # which code made the row: the registering package, its version, paper
    assert source["package"] == "nerve-bench" and "Ronneberger" in source["paper"] and source["version"]
    ds = s["dataset"]
    sizes = (ds["n_train"], ds["n_subjects"], ds["n_fit"], ds["n_inner"], ds["n_outer"], ds["synthetic"])
    assert sizes == (66, 6, 33, 11, 22, False)
    assert re.fullmatch(r"[0-9a-f]{16}", ds["content_hash"])
    per = s["per_image"]
    assert all(len(per[k]) == 22 for k in per) and per["index"] == sorted(per["index"])
    assert all(stem.startswith(f"{subj}_") for stem, subj in zip(per["stem"], per["subject"]))
    h = s["history"]
    assert h["epoch"] == list(range(UNET.epochs)) and s["epochs_run"] == UNET.epochs
    assert s["best_epoch"] == s["selection"]["best_epoch"] == int(np.argmax(h["val_kaggle_dice"]))
    assert (
        s["selection"]["select"] == "best" and s["global_batch"] == UNET.batch_size and s["world_size"] == 1
    )
    assert np.mean(per["dice"]) == pytest.approx(s["metrics"]["post"]["kaggle_dice"])
    assert np.mean(per["dice_raw"]) == pytest.approx(s["metrics"]["raw"]["kaggle_dice"])
    split = s["split"]
    assert (split["split_seed"], split["n_folds"], split["fold"], split["inner_fraction"]) == (0, 3, 0, 0.15)
    assert [row["n_images"] for row in split["folds"]] == [22, 22, 22]
    assert [row["fold"] for row in split["folds"]] == [0, 1, 2]
    assert split["folds"][0]["subjects"] == split["outer_subjects"] == sorted(set(per["subject"]))
    assert s["cost"]["params"] > 0 and s["cost"]["train_img_s"] > 0 and s["train_time_s"] > 0
    assert set(s["postprocess"]) >= {"threshold", "min_area", "presence_tau", "presence_source", "tta"}


def test_epoch_and_postprocessing_are_chosen_on_the_inner_set_only(runs, dm):
    s, split = runs.unet, runs.unet["split"]
    outer, inner, fit_part = set(dm.outer_indices), set(dm.inner_indices), set(dm.fit_indices)
    assert s["per_image"]["index"] == sorted(outer)  # the reported images are the outer fold
    assert split["outer_indices"] == sorted(outer)  # ... and the split names them (completeness checks it)
    assert not outer & inner and not outer & fit_part and not inner & fit_part  # bookkeeping: exact
    assert (len(fit_part), len(inner), len(outer)) == (33, 11, 22)
    assert split["inner_subjects"] == s["selection"]["subjects"] == sorted(set(dm.subjects[dm.inner_indices]))
    assert split["fit_subjects"] == sorted(set(dm.subjects[dm.fit_indices]))
    assert s["selection"]["n_images"] == 11
    # The epoch was chosen by val/kaggle_dice: that value is the selection set's raw score of best.ckpt.
    sel = s["selection"]["metrics"]
    assert sel["raw"]["kaggle_dice"] == pytest.approx(
        s["history"]["val_kaggle_dice"][s["best_epoch"]], abs=1e-9
    )
    # ... and re-scoring best.ckpt on the inner images reproduces it (same loader, same device, and
    # the one thread the run was scored on: another thread count may flip a pixel near the threshold).
    module, _ = load_checkpoint_module(runs.run_dir(UNET) / "checkpoints" / "best.ckpt")
    with one_thread():
        rows = inference.predict_loader(module, dm.inner_dataloader(), torch.device("cpu"), "32")
    assert rows["index"].tolist() == sorted(inner)
    rescored = score_counts(rows["counts"], rows["presence_prob"])["kaggle_dice"]
    assert rescored == pytest.approx(sel["raw"]["kaggle_dice"], abs=1e-9)
    # (Selection and reported numbers are of disjoint images, asserted above by index; their values
    # may still coincide on a tiny model, so they are not compared.)


def test_select_last_keeps_the_final_epoch_in_holdout_mode(runs, tmp_path):
    cfg = dataclasses.replace(TINY, epochs=2, select="last", holdout_fraction=0.34)
    summary = train.fit(cfg, runs.data, tmp_path)
    assert summary["best_epoch"] == 1 and summary["selection"]["select"] == "last"
    best = torch.load(tmp_path / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert best["epoch"] == 1
    # Hold-out mode: the hold-out (2 of 6 subjects) is the one outer set; selection comes from the rest.
    split, ds = summary["split"], summary["dataset"]
    assert (split["mode"], split["n_folds"], split["fold"]) == ("holdout", 1, 0)
    assert (ds["n_fit"], ds["n_inner"], ds["n_outer"]) == (33, 11, 22)
    assert [row["n_images"] for row in split["folds"]] == [22, 44]
    assert not set(split["outer_subjects"]) & set(split["inner_subjects"] + split["fit_subjects"])


def test_best_checkpoint_carries_the_tuned_postprocessing(runs):
    ckpt_dir = runs.run_dir(UNET) / "checkpoints"
    best = torch.load(ckpt_dir / "best.ckpt", map_location="cpu", weights_only=True)
    assert best["nerve_bench"]["postprocess"] == runs.unet["postprocess"]
    assert best["nerve_bench"]["config"] == UNET.to_dict()
    assert best["nerve_bench"]["summary_metrics"]["post"] == pytest.approx(runs.unet["metrics"]["post"])
    assert best["nerve_bench"]["selection_metrics"]["post"] == pytest.approx(
        runs.unet["selection"]["metrics"]["post"]
    )
    # What `evaluate` needs to recognise the training data and score only the outer fold.
    assert best["nerve_bench"]["data_hash"] == runs.unet["dataset"]["content_hash"]
    assert best["nerve_bench"]["outer_indices"] == runs.unet["per_image"]["index"]
    assert best["epoch"] == runs.unet["best_epoch"]
    # The resume state (weights and optimiser moments) is deleted once the summary is written; its
    # per-epoch history stays (a re-score needs it).
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["best.ckpt", "trained.json"]


def test_overlays_hold_first_positives_and_negatives(runs):
    with np.load(runs.run_dir(UNET) / "overlays.npz") as z:
        stems, image, truth, pred = z["stem"], z["image"], z["truth"], z["pred"]
    assert image.shape == truth.shape == pred.shape == (len(stems), 128, 177)
    positive = truth.reshape(len(stems), -1).any(axis=1)
    per = runs.unet["per_image"]  # the outer fold's images
    outer_pos = [s for s, e in zip(per["stem"], per["true_empty"]) if not e]
    outer_neg = [s for s, e in zip(per["stem"], per["true_empty"]) if e]
    assert stems.tolist() == outer_pos[:4] + outer_neg[:2]
    assert positive.tolist() == [True] * min(4, len(outer_pos)) + [False] * min(2, len(outer_neg))


def test_complete_run_is_not_retrained(runs, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("a complete run must not be retrained")

    monkeypatch.setattr(train, "train", boom)
    assert train.fit(UNET, runs.data, runs.run_dir(UNET)) == runs.unet


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
    source = runs.run_dir(UNET) / "checkpoints" / "best.ckpt"  # same config record as its last.ckpt had
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
    argv = [
        "fit",
        "--model",
        "empty",
        "--data-dir",
        str(runs.data),
        "--out",
        str(out),
        "--image-size",
        "64",
        "--n-folds",
        "3",
        "--fold",
        "1",
        "--set",
        "logger=none",
        "--set",
        "progress_bar=false",
    ]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["fold"] == 1 and summary["model"] == "empty"
    printed = capsys.readouterr().out
    reported, selection = printed.split("selection (inner set")
    assert "outer fold 1:" in reported and f"{summary['metrics']['post']['kaggle_dice']:.4f}" in reported
    assert f"{summary['selection']['metrics']['post']['kaggle_dice']:.4f}" in selection


def test_cli_fit_reports_bad_input_in_one_line(runs, tmp_path, capsys):
    argv = ["fit", "--model", "unet", "--data-dir", str(runs.data), "--out", str(tmp_path), "--set", "lr=abc"]
    assert main(argv) == 2
    assert "lr='abc'" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("")  # was found at the first checkpoint: exit 1
    out = tmp_path / "a_file" / "run"
    assert main(["fit", "--model", "empty", "--data-dir", str(runs.data), "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"error: {tmp_path / 'a_file'}: a file, not a folder; --out {tmp_path / 'a_file' / 'run'} needs a "
        "folder there\n"
    )


def test_a_diverged_run_is_one_line_naming_the_epoch(runs, tmp_path, capsys):
    """Outputs gone NaN ended in a 30-frame traceback of the scoring code ("presence_prob contains
    NaN"), which said nothing of the training; `run` recorded that line as the run's failure."""
    argv = ["fit", "--model", "unet", "--data-dir", str(runs.data), "--out", str(tmp_path / "nan"),
            "--epochs", "1", "--set", "image_size=32", "--set", "lr=1e30",
            "--set", "model_kwargs={base_width: 4, depth: 2}"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: training diverged by epoch 0: the network's outputs are NaN or infinite")
    assert err.endswith("; lower lr (1e+30), or train in precision 32")
    assert not (tmp_path / "nan" / "summary.json").exists()


def test_gpu_cache_fast_path_trains_on_cpu_too(runs, tmp_path):
    counter = CountEpochs()
    cfg = dataclasses.replace(TINY, gpu_cache=True, epochs=1)
    summary = train.fit(cfg, runs.data, tmp_path, callbacks=[counter])
    assert counter.epochs == [0] and summary["status"] == "complete"
    assert summary["dataset"]["n_outer"] == 22 and summary["cost"]["train_img_s"] > 0


def test_empty_baseline_checkpoints_come_from_global_rank_zero_only(runs, tmp_path, monkeypatch):
    """Under DDP every rank runs train(); for the `empty` baseline (nothing to optimise) only rank 0
    may write its checkpoints, as Lightning's checkpoint callbacks do for trained models."""
    from lightning import Trainer

    from benchmark.training.module import SegModule
    from benchmark.training.trainer import train as train_run
    from tests.benchmark.fitting import EMPTY

    module = SegModule(EMPTY.to_dict())
    dm = make_datamodule(EMPTY, runs.data)
    monkeypatch.setattr(Trainer, "is_global_zero", property(lambda self: False))
    train_run(EMPTY, module, dm, tmp_path / "rank1")
    assert not (tmp_path / "rank1" / "checkpoints").exists()
    monkeypatch.undo()
    train_run(EMPTY, module, dm, tmp_path / "rank0")
    assert sorted(p.name for p in (tmp_path / "rank0" / "checkpoints").iterdir()) == [
        "best.ckpt",
        "last.ckpt",
    ]
    # nothing to fit, so no DDP processes start: the floor is one process whatever devices says
    summary = train.fit(dataclasses.replace(EMPTY, devices=2), runs.data, tmp_path / "devices2")
    assert summary["world_size"] == 1 and summary["cpu_processes"] == 2  # the board: its DDP peers'


def test_an_epochs_training_time_waits_for_the_gpu_work_still_queued(monkeypatch):
    """The training clock stops at validation start, after a device sync: the last steps' kernels may
    still be queued on a GPU, and they are training time (train_img_s), not validation's."""
    from types import SimpleNamespace

    from benchmark.training import callbacks

    events: list = []
    ticks = iter([10.0, 12.5])
    monkeypatch.setattr(callbacks, "synchronize", lambda device: events.append(f"sync {device}"))
    clock = SimpleNamespace(perf_counter=lambda: events.append("clock") or next(ticks))
    monkeypatch.setattr(callbacks, "time", clock)  # this module's clock only
    trainer = SimpleNamespace(state=SimpleNamespace(fn="fit"), sanity_checking=False)
    module = SimpleNamespace(device=torch.device("cuda", 1))
    history = callbacks.EpochHistory()
    history.on_train_epoch_start(trainer, module)
    history.on_validation_start(trainer, module)
    assert events == ["clock", "sync cuda:1", "clock"] and history._t_train == 2.5


class BestState(Callback):
    """The best-epoch checkpoint's selection state as training (re)starts."""

    def on_train_start(self, trainer, pl_module) -> None:
        best = next(cb for cb in trainer.checkpoint_callbacks if cb.monitor == "val/kaggle_dice")
        self.score, self.paths = best.best_model_score, list(best.best_k_models)


def test_a_run_resumed_in_a_moved_directory_keeps_its_best_epoch_so_far(runs, tmp_path):
    """Lightning forgets the best score when the checkpoint directory changed, so the first epoch
    after the resume replaced best.ckpt whatever its score. Moved results keep their selection."""
    import shutil

    cfg = dataclasses.replace(TINY, epochs=3)
    with pytest.raises(Stop):
        train.fit(cfg, runs.data, tmp_path / "a", callbacks=[StopAt(2)])
    best_so_far = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=True)
    saved = next(v for k, v in best_so_far["callbacks"].items() if "val/kaggle_dice" in k)
    shutil.move(tmp_path / "a", tmp_path / "b")
    state = BestState()
    train.fit(cfg, runs.data, tmp_path / "b", callbacks=[state])
    assert state.score is not None and float(state.score) == float(saved["best_model_score"])
    assert state.paths == [str(tmp_path / "b" / "checkpoints" / "best.ckpt")]


def test_checkpoint_state_keys_are_those_of_earlier_versions():
    """Lightning keys a callback's saved state by its class name: the best-epoch callback keeps
    ModelCheckpoint's, so a last.ckpt written before RelocatableCheckpoint still restores it."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from benchmark.training.callbacks import RelocatableCheckpoint, ResumeCheckpoint

    kwargs = {"monitor": "val/kaggle_dice", "mode": "max", "save_top_k": 1}
    assert RelocatableCheckpoint(**kwargs).state_key == ModelCheckpoint(**kwargs).state_key
    assert ResumeCheckpoint(0.0).state_key.startswith("ResumeCheckpoint{")


def test_saved_paths_are_re_rooted_in_the_moved_directory():
    from benchmark.training.callbacks import RelocatableCheckpoint

    def restored(old_dir: str, path: str) -> RelocatableCheckpoint:
        cb = RelocatableCheckpoint(dirpath="/new/ckpt", monitor="val/kaggle_dice", mode="max")
        score = torch.tensor(0.9)
        state = {"dirpath": old_dir, "best_model_path": path, "best_model_score": score,
                 "best_k_models": {path: score}, "kth_best_model_path": path, "kth_value": score,
                 "last_model_path": "", "current_score": score}  # fmt: skip
        cb.load_state_dict(state)
        return cb

    for old_dir, path in (
        ("/old/run/ckpt", "/old/run/ckpt/best.ckpt"),
        ("/old/run/ckpt", "/old/run/ckpt-x/best.ckpt"),  # shares a prefix, not the directory
        ("C:\\runs\\ckpt", "C:\\runs\\ckpt\\best.ckpt"),  # written on Windows
    ):
        cb = restored(old_dir, path)
        assert cb.best_model_path == "/new/ckpt/best.ckpt" and list(cb.best_k_models) == [
            "/new/ckpt/best.ckpt"
        ]
        assert float(cb.best_model_score) == pytest.approx(0.9) and cb.last_model_path == ""

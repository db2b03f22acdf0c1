"""trained.json: a finished run's training kept small when its last.ckpt goes, and counted only while
it matches (config, schema, no training under way, the same best.ckpt)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark import pipeline
from benchmark.core.config import ConfigError
from benchmark.evaluation import finalize
from benchmark.training import finished
from benchmark.training.callbacks import HISTORY_CKPT_KEY
from tests.benchmark.fitting import TINY, UNET, Stop, StopAt, one_thread

HASH = TINY.hash()  # the run's config: its best.ckpt records it
FACTS = {"world_size": 2, "environment": {"device": "NVIDIA H100 80GB HBM3"}, "data_hash": "d1"}
OF_TINY = {"hyper_parameters": {"config": TINY.to_dict()}}
HISTORY = {"epoch": [0, 1], "train_loss": [0.9, 0.5], "val_loss": [0.8, float("nan")]}


def _finished_run(tmp_path: Path, best_epoch: int = 1) -> Path:
    ckpt_dir = tmp_path / "run" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    torch.save({"weights": torch.zeros(3), HISTORY_CKPT_KEY: HISTORY, "epoch": 1, "global_step": 8},
               ckpt_dir / "last.ckpt")  # fmt: skip
    best = {"weights": torch.ones(3), "epoch": best_epoch, "global_step": 4 * (best_epoch + 1), **OF_TINY}
    torch.save(best, ckpt_dir / "best.ckpt")
    return ckpt_dir.parent


def test_the_resume_state_becomes_the_record_of_the_training(tmp_path):
    run = _finished_run(tmp_path, best_epoch=0)
    finished.drop_resume_state(run, HASH, {**FACTS, "other": "not kept"})
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "trained.json"]
    saved = json.loads((run / "checkpoints" / "trained.json").read_text())
    assert saved["best"] == [0, 4] and "other" not in saved  # best.ckpt's epoch and global step
    record = finished.trained_record(run, HASH)
    assert record is not None and {k: record[k] for k in finished.FACTS} == FACTS
    history = record["history"]
    assert (
        history["epoch"] == [0, 1] and history["train_loss"] == [0.9, 0.5] and history["epoch_time_s"] == []
    )
    assert history["val_loss"][1] != history["val_loss"][1]  # NaN kept
    with pytest.raises(
        ConfigError, match=rf"trained.json: a finished run of a different config \(hash {HASH}"
    ):
        finished.trained_record(run, "other")


def test_the_record_counts_only_with_the_best_checkpoint_it_selected(tmp_path, capsys):
    run = _finished_run(tmp_path)
    finished.drop_resume_state(run, HASH, FACTS)
    best = run / "checkpoints" / "best.ckpt"
    torch.save(
        {"weights": torch.ones(3), "epoch": 1, "global_step": 5, **OF_TINY}, best
    )  # another training's
    assert finished.trained_record(run, HASH) is None
    # another run's best.ckpt copied in, at the same epoch and step: scored, it was on images it trained on
    other = dataclasses.replace(TINY, fold=1)
    torch.save({"weights": torch.ones(3), "epoch": 1, "global_step": 8,
                "hyper_parameters": {"config": other.to_dict()}}, best)  # fmt: skip
    assert finished.trained_record(run, HASH) is None
    problem = f"the checkpoint of a different config (hash {other.hash()} != {HASH}); training the run again"
    assert f"warning: {best}: {problem}" in capsys.readouterr().err
    torch.save({"weights": torch.ones(3), "epoch": 1, "global_step": 8, **OF_TINY}, best)
    assert finished.trained_record(run, HASH) is not None  # the one it selected
    best.write_bytes(b"PK\x03\x04 half a checkpoint")
    assert finished.trained_record(run, HASH) is None
    assert f"warning: {best}: unreadable (" in capsys.readouterr().err
    best.unlink()
    assert finished.trained_record(run, HASH) is None


def test_the_record_does_not_count_while_training_is_under_way_or_after_a_schema_change(tmp_path):
    run = _finished_run(tmp_path)
    finished.drop_resume_state(run, HASH, FACTS)
    path = run / "checkpoints" / "trained.json"
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "schema_version": record["schema_version"] - 1}))
    assert finished.trained_record(run, HASH) is None  # the recipe changed with the schema
    for history in ({"epoch": [0, 1], "train_loss": 5}, [1, 2], {"epoch": "01"}):  # damaged: none
        path.write_text(json.dumps({**record, "history": history}))
        assert finished.trained_record(run, HASH) is None
    path.write_text(json.dumps(record))
    assert finished.trained_record(run, HASH) is not None
    (run / "checkpoints" / "last.ckpt").write_bytes(b"an epoch of a new training")
    assert finished.trained_record(run, HASH) is None  # it resumes instead
    finished.forget(run)
    assert not path.exists()


def test_without_room_for_the_record_the_resume_state_stays(tmp_path, monkeypatch):
    run = _finished_run(tmp_path)

    def full(path, data):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(finished, "atomic_write", full)
    finished.drop_resume_state(run, HASH, FACTS)
    assert (run / "checkpoints" / "last.ckpt").is_file() and finished.trained_record(run, HASH) is None
    monkeypatch.undo()
    (run / "checkpoints" / "best.ckpt").write_bytes(b"PK\x03\x04 half a checkpoint")
    finished.drop_resume_state(run, HASH, FACTS)  # the selected weights are gone: the final ones stay
    assert (run / "checkpoints" / "last.ckpt").is_file() and finished.trained_record(run, HASH) is None
    (run / "checkpoints" / "last.ckpt").write_bytes(b"not a checkpoint")
    finished.drop_resume_state(run, HASH, FACTS)  # unreadable: it could not be resumed either
    assert not (run / "checkpoints" / "last.ckpt").exists()
    assert not (run / "checkpoints" / "trained.json").exists()


def _copy_without_summary(fit_runs, tmp_path: Path, **record_changes) -> Path:
    """The session's finished UNET run, copied, its summary removed (and its record changed)."""
    out = tmp_path / "run"
    shutil.copytree(fit_runs.run_dir(UNET), out)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.ckpt", "trained.json"]
    (out / "summary.json").unlink()
    record = out / "checkpoints" / "trained.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), **record_changes}))
    return out


def _no_training(*args, **kwargs):
    pytest.fail("a finished run was trained again")


@pytest.mark.slow
def test_a_finished_run_whose_summary_is_removed_is_scored_again_not_trained(
    fit_runs, tmp_path, monkeypatch, nondeterministic
):
    """The summary takes the training's history, world and environment from trained.json (here
    another box's: 2 processes on an H100) and names the scoring machine under scored_again; it is
    scored on rank 0's Trainer device under the Trainer's global flags, with the same figures (same
    process, same CPU)."""
    first = fit_runs.unet
    trained_on = {**first["environment"], "device": "NVIDIA H100 80GB HBM3"}
    assert (
        json.loads((fit_runs.run_dir(UNET) / "checkpoints" / "trained.json").read_text())["model_source"]
        == (first["model_source"])
    )
    source = {**first["model_source"], "version": "0.0.1"}  # the code that trained it, not today's
    out = _copy_without_summary(fit_runs, tmp_path, world_size=2, environment=trained_on, model_source=source)
    seen, real = [], finalize.finalize_run

    def spy(*args, **kwargs):
        seen.append((str(args[4]), torch.are_deterministic_algorithms_enabled()))
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "train", _no_training)
    monkeypatch.setattr(finalize, "finalize_run", spy)
    with one_thread():  # as fit_runs scored it: the same figures need the same float order
        again = pipeline.fit(UNET, fit_runs.data, out)
    assert seen == [("cpu", True)]  # strict determinism on CPU, as a fit leaves it
    assert again["world_size"] == 2 and again["environment"] == trained_on and again["model_source"] == source
    assert again["scored_again"]["device"] == first["environment"]["device"] != trained_on["device"]
    assert again["history"] == first["history"] and again["epochs_run"] == first["epochs_run"] > 1
    assert again["train_time_s"] == first["train_time_s"] and again["best_epoch"] == first["best_epoch"]
    assert again["cost"]["train_img_s"] == first["cost"]["train_img_s"]
    assert again["per_image"]["index"] == first["per_image"]["index"]
    np.testing.assert_allclose(again["per_image"]["dice"], first["per_image"]["dice"], atol=1e-6)
    assert json.loads((out / "summary.json").read_text())["status"] == "complete"
    # Another config in this directory would overwrite a finished run: refused, as last.ckpt's is.
    with pytest.raises(ConfigError, match=r"summary.json: the finished run '.*' of another config"):
        pipeline.fit(TINY, fit_runs.data, out)
    (out / "summary.json").unlink()  # its record of the training says so too
    with pytest.raises(ConfigError, match=r"trained.json: a finished run of a different config"):
        pipeline.fit(TINY, fit_runs.data, out)


@pytest.mark.slow
def test_a_finished_run_is_scored_again_on_its_own_data_by_rank_zero(fit_runs, tmp_path, monkeypatch):
    out = _copy_without_summary(fit_runs, tmp_path)
    monkeypatch.setattr(pipeline, "train", _no_training)
    monkeypatch.setattr(pipeline, "global_rank", lambda: 1)
    assert pipeline.fit(UNET, fit_runs.data, out) == {} and not (out / "summary.json").exists()
    monkeypatch.undo()
    out = _copy_without_summary(fit_runs, tmp_path / "other", data_hash="0123abcd")
    with pytest.raises(ConfigError, match=rf"{out}: trained on data with content hash 0123abcd, but "):
        pipeline.fit(UNET, fit_runs.data, out)


@pytest.mark.slow
def test_a_finished_run_of_an_older_schema_is_trained_again(fit_runs, tmp_path, monkeypatch):
    """A schema bump changed the recipe for the same config hash: best.ckpt is not scored again."""
    out = _copy_without_summary(fit_runs, tmp_path, schema_version=2)
    monkeypatch.setattr(pipeline, "train", lambda *a, **k: pytest.fail("trained again"))
    with pytest.raises(pytest.fail.Exception, match="trained again"):
        pipeline.fit(UNET, fit_runs.data, out)


@pytest.mark.slow
def test_training_again_forgets_the_finished_training(fit_runs, tmp_path):
    """Without its best.ckpt the run trains again; the record goes first, so a kill mid-training
    leaves a run that resumes, never a half-trained best.ckpt scored as the finished one."""
    out = _copy_without_summary(fit_runs, tmp_path)
    (out / "checkpoints" / "best.ckpt").unlink()
    with pytest.raises(Stop):
        pipeline.fit(UNET, fit_runs.data, out, callbacks=[StopAt(1)])
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


def test_a_finished_run_of_another_config_is_never_overwritten(tmp_path, monkeypatch):
    """`fit --out` into an imported run's directory trained there and replaced its summary (Dice
    1.0 gone, exit 0): a complete summary of another config hash is refused like trained.json."""
    out = tmp_path / "runs" / "oracle__f0__s0__60ca50d43edd"
    out.mkdir(parents=True)
    text = json.dumps({"status": "complete", "config_hash": "60ca50d43edd", "run": out.name})
    (out / "summary.json").write_text(text)
    monkeypatch.setattr(pipeline, "train", lambda *a, **k: pytest.fail("trained over it"))
    with pytest.raises(ConfigError, match=r"summary.json: the finished run 'oracle__f0__s0__60ca50d43edd'"):
        pipeline.fit(UNET, tmp_path / "no-data-needed", out)
    assert (out / "summary.json").read_text() == text
    (out / "summary.json").write_text(json.dumps({"status": "running", "config_hash": "60ca50d43edd"}))
    pipeline.refuse_another_run(out / "summary.json", UNET.hash())  # not finished: resumed or trained
    (out / "summary.json").write_text("{not json")
    pipeline.refuse_another_run(out / "summary.json", UNET.hash())

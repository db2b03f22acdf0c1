"""trained.json: a finished run's training kept small when its last.ckpt goes, and counted only while
it matches (config, schema, no training under way, the same best.ckpt)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmark.core.config import ConfigError
from benchmark.training import finished
from benchmark.training.callbacks import HISTORY_CKPT_KEY

FACTS = {"world_size": 2, "environment": {"device": "NVIDIA H100 80GB HBM3"}, "data_hash": "d1"}
HISTORY = {"epoch": [0, 1], "train_loss": [0.9, 0.5], "val_loss": [0.8, float("nan")]}


def _finished_run(tmp_path: Path, best_epoch: int = 1) -> Path:
    ckpt_dir = tmp_path / "run" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    torch.save({"weights": torch.zeros(3), HISTORY_CKPT_KEY: HISTORY, "epoch": 1, "global_step": 8},
               ckpt_dir / "last.ckpt")  # fmt: skip
    torch.save({"weights": torch.ones(3), "epoch": best_epoch, "global_step": 4 * (best_epoch + 1)},
               ckpt_dir / "best.ckpt")  # fmt: skip
    return ckpt_dir.parent


def test_the_resume_state_becomes_the_record_of_the_training(tmp_path):
    run = _finished_run(tmp_path, best_epoch=0)
    finished.drop_resume_state(run, "abc", {**FACTS, "other": "not kept"})
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "trained.json"]
    saved = json.loads((run / "checkpoints" / "trained.json").read_text())
    assert saved["best"] == [0, 4] and "other" not in saved  # best.ckpt's epoch and global step
    record = finished.trained_record(run, "abc")
    assert record is not None and {k: record[k] for k in finished.FACTS} == FACTS
    history = record["history"]
    assert (
        history["epoch"] == [0, 1] and history["train_loss"] == [0.9, 0.5] and history["epoch_time_s"] == []
    )
    assert history["val_loss"][1] != history["val_loss"][1]  # NaN kept
    with pytest.raises(ConfigError, match=r"trained.json: a finished run of a different config \(hash abc"):
        finished.trained_record(run, "other")


def test_the_record_counts_only_with_the_best_checkpoint_it_selected(tmp_path, capsys):
    run = _finished_run(tmp_path)
    finished.drop_resume_state(run, "abc", FACTS)
    best = run / "checkpoints" / "best.ckpt"
    torch.save({"weights": torch.ones(3), "epoch": 1, "global_step": 5}, best)  # another training's
    assert finished.trained_record(run, "abc") is None
    best.write_bytes(b"PK\x03\x04 half a checkpoint")
    assert finished.trained_record(run, "abc") is None
    assert f"warning: {best}: unreadable (" in capsys.readouterr().err
    best.unlink()
    assert finished.trained_record(run, "abc") is None


def test_the_record_does_not_count_while_training_is_under_way_or_after_a_schema_change(tmp_path):
    run = _finished_run(tmp_path)
    finished.drop_resume_state(run, "abc", FACTS)
    path = run / "checkpoints" / "trained.json"
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "schema_version": record["schema_version"] - 1}))
    assert finished.trained_record(run, "abc") is None  # the recipe changed with the schema
    path.write_text(json.dumps(record))
    (run / "checkpoints" / "last.ckpt").write_bytes(b"an epoch of a new training")
    assert finished.trained_record(run, "abc") is None  # it resumes instead
    finished.forget(run)
    assert not path.exists()


def test_without_room_for_the_record_the_resume_state_stays(tmp_path, monkeypatch):
    run = _finished_run(tmp_path)

    def full(path, data):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(finished, "atomic_write", full)
    finished.drop_resume_state(run, "abc", FACTS)
    assert (run / "checkpoints" / "last.ckpt").is_file() and finished.trained_record(run, "abc") is None
    (run / "checkpoints" / "last.ckpt").write_bytes(b"not a checkpoint")
    finished.drop_resume_state(run, "abc", FACTS)  # unreadable: it could not be resumed either
    assert not (run / "checkpoints" / "last.ckpt").exists()
    assert not (run / "checkpoints" / "trained.json").exists()

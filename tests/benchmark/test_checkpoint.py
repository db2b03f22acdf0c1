"""Checkpoint files: atomic writes that leave the previous file intact on failure, and one-line errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from benchmark.core.config import TrainConfig
from benchmark.training import checkpoint
from benchmark.training.checkpoint import (
    SafeCheckpointIO,
    load_checkpoint_module,
    read_checkpoint,
    save_plain_checkpoint,
    store_in_checkpoint,
)
from benchmark.training.module import SegModule
from benchmark.training.trainer import build_trainer
from datamodules.errors import NerveBenchError

SMALL = TrainConfig(model="unet", model_kwargs={"base_width": 4, "depth": 2}, image_size=64, logger="none",
                    progress_bar=False)  # fmt: skip


@pytest.fixture
def ckpt(tmp_path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "model.ckpt"
    save_plain_checkpoint(SegModule(SMALL.to_dict()), path)
    return path


def _failing_save(monkeypatch) -> None:
    """torch.save that writes half a file and then fails, as a full disk or a kill would."""

    def half_then_fail(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")  # checkpoints are written through a file handle
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", half_then_fail)


def test_failed_writes_leave_the_previous_checkpoint_intact(ckpt, monkeypatch):
    before = ckpt.read_bytes()
    loaded = read_checkpoint(ckpt)
    _failing_save(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        SafeCheckpointIO().save_checkpoint({"epoch": 3}, ckpt)
    with pytest.raises(OSError, match="No space left"):
        store_in_checkpoint(ckpt, loaded, {"postprocess": {}})
    with pytest.raises(OSError, match="No space left"):
        save_plain_checkpoint(SegModule(SMALL.to_dict()), ckpt)
    assert ckpt.read_bytes() == before
    assert os.listdir(ckpt.parent) == [ckpt.name]  # no temporary file left behind


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (a device that is always full)")
def test_a_full_disk_says_no_space_left_and_names_the_checkpoint(ckpt, monkeypatch):
    """torch's own file writer reports a full disk as `RuntimeError: [enforce fail at
    inline_container.cc:672] . unexpected pos`; through a file handle the kernel's ENOSPC comes back."""
    import builtins

    before = ckpt.read_bytes()
    full = []

    def open_full(path, mode="r", buffering=-1):
        full.append(path)
        return builtins.open("/dev/full", mode, buffering=buffering)  # every write: ENOSPC, for real

    monkeypatch.setattr(checkpoint, "open", open_full, raising=False)
    with pytest.raises(OSError) as err:
        SafeCheckpointIO().save_checkpoint({"w": torch.zeros(100_000)}, ckpt)
    assert err.value.errno == 28 and err.value.filename == str(ckpt) and len(full) == 1
    assert f"No space left on device: '{ckpt}'" in str(err.value)
    assert ckpt.read_bytes() == before and os.listdir(ckpt.parent) == [ckpt.name]


def test_a_planted_checkpoint_is_refused_naming_what_it_tried_to_load(tmp_path):
    class Planted:
        def __reduce__(self):
            return (os.system, ("echo planted",))

    path = tmp_path / "planted.ckpt"
    torch.save({"state_dict": {}, "x": Planted()}, path)
    with pytest.raises(NerveBenchError) as err:
        read_checkpoint(path)
    message = str(err.value)  # torch's text runs to 6 lines of advice before the useful one
    assert message.startswith(f"{path}: not a readable checkpoint (refused by the weights-only loader: ")
    assert "unsupported GLOBAL posix.system" in message and "\n" not in message


def test_lightning_writes_and_reads_through_the_safe_checkpoint_io(tmp_path, ckpt):
    trainer = build_trainer(SMALL, tmp_path)
    assert isinstance(trainer.strategy.checkpoint_io, SafeCheckpointIO)
    io = SafeCheckpointIO()
    io.save_checkpoint({"epoch": 3, "w": torch.ones(2)}, tmp_path / "x.ckpt")
    assert io.load_checkpoint(tmp_path / "x.ckpt")["epoch"] == 3
    assert sorted(os.listdir(tmp_path)) == sorted(["model.ckpt", "x.ckpt"])


def _one_line_error(path: Path) -> str:
    with pytest.raises(NerveBenchError) as info:
        load_checkpoint_module(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    return message


def test_weights_of_another_shape_are_one_line_with_counts(ckpt):
    saved = torch.load(ckpt, weights_only=True)
    saved["hyper_parameters"]["config"]["model_kwargs"] = {"base_width": 8, "depth": 2}
    torch.save(saved, ckpt)
    message = _one_line_error(ckpt)
    assert (
        "weights do not fit (0 missing, 0 unexpected, " in message and " mis-shaped keys; first: " in message
    )
    assert len(message) < 300  # PyTorch's own message lists every key (13 KB for a wider U-Net)


def test_missing_and_unexpected_keys_are_counted(ckpt):
    saved = torch.load(ckpt, weights_only=True)
    first = next(iter(saved["state_dict"]))
    saved["state_dict"]["model.extra.weight"] = saved["state_dict"].pop(first)
    torch.save(saved, ckpt)
    assert f"(1 missing, 1 unexpected, 0 mis-shaped keys; first: {first})" in _one_line_error(ckpt)


def test_nan_weights_are_one_line_for_predict_and_evaluate(ckpt, tmp_path, synthetic_dir, capsys):
    """A diverged run's weights: predict thresholded the NaN probabilities to empty masks, wrote an
    all-empty submission and exited 0; evaluate died in a traceback."""
    from benchmark.cli import main

    saved = torch.load(ckpt, weights_only=True)
    last = list(saved["state_dict"])[-1]
    saved["state_dict"][last] = torch.full_like(saved["state_dict"][last], float("nan"))
    torch.save(saved, ckpt)
    line = f"error: {ckpt}: 1 weight tensor(s) hold NaN (first: {last}): a diverged run's or a damaged "
    line += "checkpoint\n"
    out, sub = tmp_path / "masks", tmp_path / "sub.csv"
    assert main(["predict", "--checkpoint", str(ckpt), "--input", str(synthetic_dir), "--out", str(out),
                 "--submission", str(sub)]) == 2  # fmt: skip
    assert not sub.exists() and capsys.readouterr().err.endswith(line)  # after "no tuned post-processing"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data-dir", str(synthetic_dir)]) == 2
    assert capsys.readouterr().err == line  # before its "no scoring record" refusal of this file
    saved["state_dict"][last] = torch.full_like(saved["state_dict"][last], float("-inf"))
    torch.save(saved, ckpt)  # an infinite weight can be meant: the empty floor's logit -inf
    assert load_checkpoint_module(ckpt)[0] is not None


def test_a_random_file_is_one_line(tmp_path):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(bytes(range(256)) * 20)
    assert "not a readable checkpoint (" in _one_line_error(junk)
    junk.write_bytes(b"")
    assert "empty, truncated or not a PyTorch file" in _one_line_error(junk)


def test_a_plain_pickle_is_one_line_without_torchs_protocol_warning(tmp_path):
    """A file pickled by pickle.dump, not torch.save: torch printed two warning lines first."""
    import pickle
    import warnings

    path = tmp_path / "pickled.ckpt"
    path.write_bytes(pickle.dumps({"weights": 1}, protocol=4))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(NerveBenchError, match=r"pickled.ckpt: not a readable checkpoint \(refused by"):
            read_checkpoint(path)
    assert not [str(w.message)[:60] for w in seen]


def test_an_unknown_model_names_the_checkpoint(ckpt):
    saved = torch.load(ckpt, weights_only=True)
    saved["hyper_parameters"]["config"].update(model="unet_v9", model_kwargs={})
    torch.save(saved, ckpt)
    message = _one_line_error(ckpt)
    assert "cannot rebuild the model" in message and "unknown model 'unet_v9'" in message


def test_plain_checkpoint_loads_weights_only_with_its_empty_history(ckpt):
    module, raw = load_checkpoint_module(ckpt)
    assert raw["nerve_bench_history"]["epoch"] == [] and module.history["train_loss"] == []
    reference = SegModule(SMALL.to_dict())
    reference.load_state_dict(raw["state_dict"])
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(module(x), reference.eval()(x))


def test_predict_reports_a_weight_mismatch_in_one_line(ckpt):
    """`predict` rebuilt the model itself and printed PyTorch's every-key message (56 lines)."""
    from benchmark.predict import load_model

    saved = torch.load(ckpt, weights_only=True)
    saved["hyper_parameters"]["config"]["model_kwargs"] = {"base_width": 8, "depth": 2}
    torch.save(saved, ckpt)
    with pytest.raises(NerveBenchError) as info:
        load_model(ckpt, torch.device("cpu"))
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{ckpt}: ") and "mis-shaped keys" in message
    assert len(message) < 300


def test_a_checkpoint_is_scored_again_in_the_precision_its_run_was_scored_in(fit_runs, monkeypatch):
    """evaluate and predict score on a GPU in the precision finalize recorded ("auto" resolved by
    the run's accelerator: a CPU run stays float32), and in float32 on a CPU; a checkpoint from
    before the record takes the recipe's precision resolved for a GPU."""
    from benchmark.evaluation import evaluate as ev
    from benchmark.training.checkpoint import CKPT_KEY, load_plain, scoring_precision_of
    from tests.benchmark.fitting import UNET

    best = fit_runs.run_dir(UNET) / "checkpoints" / "best.ckpt"
    ckpt = load_plain(best)
    assert ckpt[CKPT_KEY]["precision"] == "32"  # trained and scored on this CPU (precision auto)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert scoring_precision_of(ckpt, cuda) == "32" and scoring_precision_of(ckpt, cpu) == "32"
    older = {**ckpt, CKPT_KEY: {k: v for k, v in ckpt[CKPT_KEY].items() if k != "precision"}}
    assert scoring_precision_of(older, cuda) == "bf16-mixed" and scoring_precision_of(older, cpu) == "32"
    seen = []

    def predict_loader(module, loader, device, precision, **kwargs):
        seen.append(precision)
        raise RuntimeError("enough")

    monkeypatch.setattr(ev, "eval_device", lambda: cuda)
    monkeypatch.setattr(ev.inference, "predict_loader", predict_loader)
    with pytest.raises(RuntimeError, match="enough"):
        ev.evaluate(best, fit_runs.data)
    assert seen == ["32"]  # a GPU scores it in float32, as its run was scored (bf16 before)

"""Exact and safe resume: a run killed at an epoch boundary and resumed gives bit-identical results to an
uninterrupted one (same machine, same batches, so exactness is legitimate here); checkpoints are read
weights-only, so a planted pickle runs nothing; an unreadable last.ckpt restarts the run with one line.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pickle
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from benchmark import pipeline
from benchmark.training.callbacks import ResumeRandomState
from benchmark.training.checkpoint import SafeCheckpointIO
from benchmark.training.random_state import global_rng_state
from benchmark.training.trainer import make_datamodule
from tests.benchmark.fitting import TINY, Stop, StopAt

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CFG = dataclasses.replace(TINY, epochs=3)  # augmentation on, shuffled batches
COMPARED = ("per_image", "metrics", "postprocess", "history", "best_epoch", "selection")

# Trains CFG in a fresh interpreter and SIGKILLs itself when epoch KILL_AT starts, i.e. right after
# the previous epoch's checkpoints were written: no clean-up code runs, as with `kill -9`.
KILL_SCRIPT = """
import json, os, signal, sys
import torch
from lightning.pytorch.callbacks import Callback
from benchmark import pipeline
from benchmark.training.module import config_from_dict

data, out, config, threads, kill_at = sys.argv[1:6]
torch.set_num_threads(int(threads))

class Kill(Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == int(kill_at):
            os.kill(os.getpid(), signal.SIGKILL)

pipeline.fit(config_from_dict(json.loads(config)), data, out, callbacks=[Kill()])
"""


class CountEpochs(Callback):
    def __init__(self) -> None:
        self.epochs: list[int] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epochs.append(trainer.current_epoch)


def _sigkilled_run(cfg, data: Path, out: Path, kill_at: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [str(data), str(out), json.dumps(cfg.to_dict()), str(torch.get_num_threads()), str(kill_at)]
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, *args], env=env, capture_output=True,
                          text=True, timeout=600, cwd=ROOT)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert (out / "checkpoints" / "last.ckpt").is_file() and not (out / "summary.json").exists()


def _assert_identical(resumed: dict, whole: dict) -> None:
    dice = np.abs(np.subtract(resumed["per_image"]["dice_raw"], whole["per_image"]["dice_raw"]))
    assert dice.max() == 0.0
    for key in COMPARED:
        assert resumed.get(key) == whole.get(key), key


def test_sigkilled_run_resumes_bit_identical(synthetic_dir, tmp_path):
    whole = pipeline.fit(CFG, synthetic_dir, tmp_path / "whole")
    out = tmp_path / "killed"
    _sigkilled_run(CFG, synthetic_dir, out, kill_at=1)
    counter = CountEpochs()
    resumed = pipeline.fit(CFG, synthetic_dir, out, callbacks=[counter])
    assert counter.epochs == [1, 2]  # epoch 0 came from last.ckpt
    assert resumed["history"]["epoch"] == [0, 1, 2]
    _assert_identical(resumed, whole)


def test_gpu_cache_run_resumes_bit_identical(synthetic_dir, tmp_path, capsys):
    cfg = dataclasses.replace(CFG, gpu_cache=True, epochs=2)
    whole = pipeline.fit(cfg, synthetic_dir, tmp_path / "whole")
    with pytest.raises(Stop):
        pipeline.fit(cfg, synthetic_dir, tmp_path / "stopped", callbacks=[StopAt(1)])
    counter = CountEpochs()
    capsys.readouterr()
    resumed = pipeline.fit(cfg, synthetic_dir, tmp_path / "stopped", callbacks=[counter])
    last = tmp_path / "stopped" / "checkpoints" / "last.ckpt"
    assert f"resuming {cfg.run_name()} from {last} (after epoch 1)\n" in capsys.readouterr().err
    assert counter.epochs == [1]
    _assert_identical(resumed, whole)


def test_a_run_with_loader_workers_resumes_bit_identical(synthetic_dir, tmp_path):
    """Lightning creates the loader's iterator before it sets the resumed epoch: a worker would
    fetch epoch 0's order and augmentation for epoch 1 unless the loader starts at the epoch."""
    cfg = dataclasses.replace(CFG, num_workers=1, epochs=2)
    whole = pipeline.fit(cfg, synthetic_dir, tmp_path / "whole")
    with pytest.raises(Stop):
        pipeline.fit(cfg, synthetic_dir, tmp_path / "stopped", callbacks=[StopAt(1)])
    counter = CountEpochs()
    resumed = pipeline.fit(cfg, synthetic_dir, tmp_path / "stopped", callbacks=[counter])
    assert counter.epochs == [1]
    _assert_identical(resumed, whole)


def test_a_dropout_model_resumes_bit_identical(synthetic_dir, tmp_path):
    """Each loader iterator took a draw from the global CPU stream that CPU dropout draws from, and a
    resume restores that stream after Lightning made the epoch's iterator: the resumed run trained
    other weights (trans_cg_unet's dropout: train loss 2.02458 vs 2.02468 in epoch 1)."""
    kwargs = {"base_width": 4, "depth": 2, "embed_dim": 16, "num_layers": 1, "num_heads": 2, "pos_grid": 4}
    cfg = dataclasses.replace(CFG, model="trans_cg_unet", model_kwargs=kwargs, epochs=2, image_size=32)
    whole = pipeline.fit(cfg, synthetic_dir, tmp_path / "whole")
    with pytest.raises(Stop):
        pipeline.fit(cfg, synthetic_dir, tmp_path / "stopped", callbacks=[StopAt(1)])
    _assert_identical(pipeline.fit(cfg, synthetic_dir, tmp_path / "stopped"), whole)


@pytest.mark.parametrize("workers", [0, 1])
def test_loaders_leave_the_global_stream_to_the_model(synthetic_dir, workers):
    """With persistent workers a loader makes one iterator per run, without them one per epoch; each
    took a draw from the global stream, so ``num_workers`` (not hashed: the same run) changed the
    dropout masks and the trained weights (max |dW| 0.0045 after 2 epochs). No loader draws now."""
    dm = make_datamodule(dataclasses.replace(CFG, num_workers=workers), synthetic_dir)
    before = torch.get_rng_state()
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.outer_dataloader()):
        next(iter(loader))
    assert torch.equal(torch.get_rng_state(), before)


def test_checkpoint_every_s_spaces_resume_points_and_changes_nothing_else(
    synthetic_dir, tmp_path, monkeypatch
):
    """One full write per epoch was a third of a CPU run; with checkpoint_every_s only the final epoch
    (and any epoch that ends the interval) writes last.ckpt. Same results and hash; a crash costs
    the epochs since the last write. best.ckpt holds no optimiser state (it is never resumed)."""
    whole = pipeline.fit(CFG, synthetic_dir, tmp_path / "whole")
    sparse = dataclasses.replace(CFG, checkpoint_every_s=1e6)
    assert sparse.hash() == CFG.hash()
    with pytest.raises(Stop):  # at the start of epoch 2: epochs 0 and 1 trained, none written
        pipeline.fit(sparse, synthetic_dir, tmp_path / "sparse", callbacks=[StopAt(2)])
    ckpts = tmp_path / "sparse" / "checkpoints"
    assert not (ckpts / "last.ckpt").exists() and (ckpts / "best.ckpt").is_file()
    best = torch.load(ckpts / "best.ckpt", weights_only=True)
    assert "optimizer_states" not in best and "state_dict" in best
    counter, at_the_end = CountEpochs(), []
    scoring = pipeline.finalize.finalize_run

    def finalize_run(*args, **kwargs):  # training is over: the final epoch's resume point is written
        at_the_end.append(torch.load(ckpts / "last.ckpt", weights_only=True))
        return scoring(*args, **kwargs)

    monkeypatch.setattr(pipeline.finalize, "finalize_run", finalize_run)
    resumed = pipeline.fit(sparse, synthetic_dir, tmp_path / "sparse", callbacks=[counter])
    assert counter.epochs == [0, 1, 2]  # nothing to resume from: trained again from the start
    (last,) = at_the_end
    assert last["epoch"] == 2 and last["nerve_bench_history"]["epoch"] == [0, 1, 2]
    assert not (ckpts / "last.ckpt").exists()  # and it went once the summary was written
    _assert_identical(resumed, whole)


def _weights_only_roundtrip(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_global_random_streams_roundtrip_through_a_weights_only_checkpoint():
    callback = ResumeRandomState()
    saved = _weights_only_roundtrip(callback.state_dict())
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    callback.load_state_dict(saved)
    callback.on_train_start(None, None)
    again = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1])
    assert expected[2] == again[2]


def test_each_ddp_rank_draws_its_own_dropout_and_a_resume_restores_it():
    from types import SimpleNamespace

    def draws_on(rank: int) -> torch.Tensor:
        torch.manual_seed(7)  # Lightning seeds every rank alike
        ResumeRandomState(seed=7).setup(SimpleNamespace(global_rank=rank), None, "fit")
        return torch.nn.functional.dropout(torch.ones(64), 0.5)

    rank0, rank1 = draws_on(0), draws_on(1)
    torch.manual_seed(7)
    assert torch.equal(rank0, torch.nn.functional.dropout(torch.ones(64), 0.5))  # one device: unchanged
    assert not torch.equal(rank0, rank1) and torch.equal(rank1, draws_on(1))  # its own, reproducible
    callback = ResumeRandomState(seed=7)  # a resume: the saved state wins over the rank's seed
    callback.load_state_dict({"per_rank": [global_rng_state()]})
    expected = torch.rand(3)
    callback.setup(SimpleNamespace(global_rank=1), None, "fit")
    callback.on_train_start(None, None)
    assert torch.equal(torch.rand(3), expected)


def _epoch(loader, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    loader.sampler.set_epoch(epoch)  # what Lightning does before every epoch, a resumed one too
    batches = list(loader)
    return torch.cat([b["index"] for b in batches]), torch.cat([b["image"] for b in batches])


@pytest.mark.parametrize("gpu_cache", [False, True])
def test_train_stream_needs_only_the_epoch(synthetic_dir, gpu_cache):
    """A resumed run builds a fresh loader: given the epoch, it shuffles and augments exactly as the
    uninterrupted run's loader did in that epoch (no generator state to save)."""
    cfg = dataclasses.replace(CFG, gpu_cache=gpu_cache)
    loader = make_datamodule(cfg, synthetic_dir).train_dataloader()
    first, second = _epoch(loader, 0), _epoch(loader, 1)
    resumed = _epoch(make_datamodule(cfg, synthetic_dir).train_dataloader(), 1)
    assert torch.equal(resumed[0], second[0]) and torch.equal(resumed[1], second[1])
    assert not torch.equal(first[0], second[0])  # epochs do differ: the check above can fail


class Planted:
    """Pickles to "call exec(code)": what a crafted checkpoint would run when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.code = f"open({str(marker)!r}, 'w').write('code ran')"

    def __reduce__(self):
        return (exec, (self.code,))


def _plant(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"hyper_parameters": {"config": CFG.to_dict()}, "state_dict": {}, "x": Planted(marker)}, path)


def test_planted_pickle_in_last_ckpt_is_never_executed(synthetic_dir, tmp_path, capsys):
    marker = tmp_path / "marker"
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    _plant(last, marker)
    pickle.loads(pickle.dumps(Planted(marker)))  # the plant is live: plain unpickling runs it
    assert marker.read_text() == "code ran"
    marker.unlink()
    with pytest.raises(Exception, match="[Ww]eights.only"):
        SafeCheckpointIO().load_checkpoint(last)  # Lightning's own resume path reads weights-only too
    cfg = dataclasses.replace(CFG, epochs=1)
    summary = pipeline.fit(cfg, synthetic_dir, tmp_path / "run")
    assert not marker.exists()
    assert summary["status"] == "complete" and summary["history"]["epoch"] == [0]
    lines = [line for line in capsys.readouterr().err.splitlines() if "last.ckpt" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "from scratch" in lines[0]


def test_truncated_last_ckpt_restarts_the_run_with_one_warning(synthetic_dir, tmp_path, capsys):
    cfg = dataclasses.replace(CFG, epochs=1)
    first = pipeline.fit(cfg, synthetic_dir, tmp_path / "a")
    run = tmp_path / "b"
    last = run / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    data = (tmp_path / "a" / "checkpoints" / "best.ckpt").read_bytes()  # the finished run's last.ckpt is gone
    last.write_bytes(data[: len(data) // 2])  # what a full disk or a crash mid-copy leaves
    counter = CountEpochs()
    capsys.readouterr()
    again = pipeline.fit(cfg, synthetic_dir, run, callbacks=[counter])
    assert counter.epochs == [0]  # from scratch
    lines = [line for line in capsys.readouterr().err.splitlines() if "last.ckpt" in line]
    assert len(lines) == 1 and lines[0].startswith(f"warning: {last}: unreadable")
    _assert_identical(again, first)

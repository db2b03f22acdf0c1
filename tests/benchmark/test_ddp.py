"""DDP on CPU (gloo, ddp_spawn): the inner-set metrics equal single-device ones image for image, and
training itself is the same recipe on 2 processes as on 1 (issue 15).

Scoring: two processes over an ODD number of images. Lightning's distributed sampler would pad one
rank by repeating an image: KaggleScores drops repeats by index, but the validation loss would count
it. So each process takes its unpadded share (``EvalSampler``), and the loss equals one process's.

Training: ``batch_size`` is the global batch; with augmentation on, 2 processes must take the same
optimiser steps on the same samples with the same augmentation draws as 1 process, so the weights
after two epochs agree within float tolerance. (A model without BatchNorm: on CPU there is no
SyncBatchNorm, so there each process would normalise its own half-batch; on GPU the Trainer uses
SyncBatchNorm under DDP.)

What is exact and what is not: gathering, de-duplication and sorting are bookkeeping and must be
bit-exact. A real network's floats are not: CPU convolution kernels may change with the batch
composition (each rank sees different batches), so its probabilities may differ in the last bits
(issue 9: presence_prob differed in the last bit on an AMD EPYC). Exactness is therefore proven
with ``PixelModule``, whose per-image output is a per-pixel comparison (no reduction, no
transcendental function), which no batch composition can change; the real model is compared with a
stated tolerance.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning import Trainer
from lightning.pytorch.callbacks import Callback

from benchmark.training.callbacks import CloseProcessGroup, ConvPrecision, checkpoint_history
from benchmark.training.checkpoint import load_checkpoint_module
from benchmark.training.module import SegModule
from benchmark.training.trainer import build_trainer, make_datamodule
from datamodules.rle import KAGGLE_SHAPE
from tests.benchmark.fitting import PER_SUBJECT, SUBJECTS, TINY, UNET

pytestmark = pytest.mark.slow

# One subject per outer fold: PER_SUBJECT (odd) outer images, and an inner set of one subject (odd).
# eval_batch_size 5: the 2 ranks' shares of the 11 inner images (6 and 5) take 2 and 1 batches, so
# no collective may run per validation step (unpadded shares, EvalSampler)
DDP_CFG = dataclasses.replace(UNET, n_folds=SUBJECTS, fold=2, eval_batch_size=5)
ROW_KEYS = ("index", "counts", "presence_prob", "dice", "iou", "true_empty")
# Real-model tolerances across batch compositions: probabilities to 1e-5; a pixel whose probability
# sits within float noise of 0.5 may flip, so per-image counts may differ by a few boundary pixels.
PROB_ATOL, BOUNDARY_PIXELS, DICE_ATOL = 1e-5, 3, 1e-3


class PixelModule(SegModule):
    """Foreground where the normalised input is positive (nearest-upsampled to 420x580); presence is an
    exact affine function of one input pixel. Bit-identical per image whatever the batch."""

    def predict_orig(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fg = (image[:, :1] > 0).float()
        prob = F.interpolate(fg, size=KAGGLE_SHAPE, mode="nearest")[:, 0]
        presence = (image[:, 0, 0, 0] * 0.25 + 0.5).clamp(0.0, 1.0)
        return prob, presence, fg * 8.0 - 4.0  # logits for the (not compared) loss


class DumpScores(Callback):
    """Rank 0 writes the gathered, scored rows; every rank writes how many rows it held itself."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def _dump(self, trainer, pl_module, stage: str) -> None:
        local = sum(t.numel() for t in pl_module.scores[stage].index)
        (self.out / f"rows_rank{trainer.global_rank}.json").write_text(json.dumps(local))
        if trainer.is_global_zero:
            result = pl_module.last_eval
            names = sorted(result["metrics"])
            values = np.asarray([result["metrics"][k] for k in names], dtype=np.float64)
            rows = {k: result[k] for k in ROW_KEYS}
            np.savez(self.out / "scores.npz", **rows, metric_names=np.asarray(names), metric_values=values)

    def on_validation_end(self, trainer, pl_module) -> None:
        self._dump(trainer, pl_module, "val")


def _evaluate(module: SegModule, data: Path, out: Path, devices: int) -> tuple[dict, int, dict]:
    """(gathered rows + metrics, rows held over all ranks, what was logged) of one evaluation."""
    out.mkdir()
    # spawn, not fork: a fork after the parent's OpenMP pool has run (any earlier test with more than
    # one thread) deadlocks the children in GNU OpenMP; the full suite hung exactly there.
    fork = "ddp_spawn"
    trainer = Trainer(
        accelerator="cpu", devices=devices, strategy=fork if devices > 1 else "auto", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[DumpScores(out), CloseProcessGroup()],
    )  # fmt: skip
    logged = trainer.validate(module, datamodule=make_datamodule(DDP_CFG, data), verbose=False)[0]
    with np.load(out / "scores.npz", allow_pickle=False) as z:
        result = {k: z[k] for k in ROW_KEYS}
        result["metrics"] = dict(zip(z["metric_names"].tolist(), z["metric_values"].tolist()))
    held = sum(json.loads(p.read_text()) for p in out.glob("rows_rank*.json"))
    return result, held, logged


EXIT_PROBE = """
import atexit, json, sys
import torch.distributed as dist
from benchmark.training.callbacks import CloseProcessGroup

out, calls = sys.argv[1], []
real = dist.destroy_process_group
dist.destroy_process_group = lambda *a: (calls.append(1), real(*a))[1]
# Registered first, so it runs last (atexit is LIFO): what the process group looks like at the end.
atexit.register(lambda: open(out, "w").write(json.dumps([dist.is_initialized(), len(calls)])))
dist.init_process_group("gloo", init_method="file://" + out + ".store", rank=0, world_size=1)
for stage in ("fit", "validate", "fit"):  # several runs in one process
    CloseProcessGroup().setup(None, None, stage)
"""


def test_the_process_group_is_destroyed_once_when_the_process_exits(tmp_path):
    """A gloo group left to interpreter shutdown aborted about 1 DDP process exit in 10 (SIGABRT,
    "terminate called without an active exception"); Lightning destroys only NCCL groups."""
    out = tmp_path / "exit.json"
    done = subprocess.run([sys.executable, "-c", EXIT_PROBE, str(out)], timeout=600, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert json.loads(out.read_text()) == [False, 1]  # destroyed, by one registration


def _check_bookkeeping(one: dict, two: dict, held_two: int) -> None:
    assert PER_SUBJECT % 2 == 1 and len(one["index"]) == PER_SUBJECT
    assert held_two == PER_SUBJECT  # no rank repeats an image (Lightning's sampler would) ...
    assert one["index"].tolist() == sorted(set(one["index"].tolist()))  # ... and each is scored once
    assert np.array_equal(one["index"], two["index"])
    assert np.array_equal(one["true_empty"], two["true_empty"])  # from the truth alone: exact


def test_gathering_is_bit_exact_with_a_batch_independent_model(fit_runs, tmp_path):
    module = PixelModule(dataclasses.replace(TINY, n_folds=SUBJECTS, fold=2).to_dict()).eval()
    one, held_one, logged_one = _evaluate(module, fit_runs.data, tmp_path / "one", 1)
    two, held_two, logged_two = _evaluate(module, fit_runs.data, tmp_path / "two", 2)
    assert held_one == PER_SUBJECT
    _check_bookkeeping(one, two, held_two)
    for key in ROW_KEYS:
        assert np.array_equal(one[key], two[key]), key  # bit-identical, duplicates dropped
    np.testing.assert_equal(one["metrics"], two["metrics"])  # NaN-aware, otherwise exact
    dice = [logged["val/kaggle_dice"] for logged in (logged_one, logged_two)]
    assert dice[0] == dice[1] == pytest.approx(one["metrics"]["kaggle_dice"])
    # the loss is a mean of per-image terms here: a repeated image would move it (it did, by 0.2%)
    assert logged_two["val/loss"] == pytest.approx(logged_one["val/loss"], rel=1e-6)
    assert 0 < one["dice"].mean() < 1 and len(np.unique(one["presence_prob"])) > 1  # a non-trivial check


def test_ddp_two_processes_equal_one_within_float_tolerance(fit_runs, tmp_path):
    module, _ = load_checkpoint_module(fit_runs.run_dir(UNET) / "checkpoints" / "best.ckpt")
    one, _, logged_one = _evaluate(module, fit_runs.data, tmp_path / "one", 1)
    two, held_two, logged_two = _evaluate(module, fit_runs.data, tmp_path / "two", 2)
    _check_bookkeeping(one, two, held_two)
    np.testing.assert_allclose(one["presence_prob"], two["presence_prob"], rtol=0, atol=PROB_ATOL)
    assert np.abs(one["counts"] - two["counts"]).max() <= BOUNDARY_PIXELS
    np.testing.assert_allclose(one["dice"], two["dice"], rtol=0, atol=DICE_ATOL)
    assert one["metrics"]["kaggle_dice"] == pytest.approx(two["metrics"]["kaggle_dice"], abs=DICE_ATOL)
    assert logged_one["val/kaggle_dice"] == pytest.approx(one["metrics"]["kaggle_dice"])
    assert logged_two["val/kaggle_dice"] == pytest.approx(two["metrics"]["kaggle_dice"])


def _initial(net: type[torch.nn.Module] | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    return (net or PlainNet)()


class PlainNet(torch.nn.Module):
    """Two convolutions and a ReLU: no BatchNorm, so a sample's gradient cannot depend on its batch."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BoxNet(torch.nn.Module):
    """PlainNet with presence and box heads (as trans_cg_unet has), still without BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.plain, self.box = PlainNet(), torch.nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        mask = self.plain(x)
        pooled = torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)
        return {"mask": mask, "presence": mask.flatten(1).amax(1), "bbox": self.box(pooled).sigmoid()}


# Augmentation on (every switch), shuffled global batches of 4, two epochs of 6 steps.
RECIPE = dataclasses.replace(UNET, epochs=2, batch_size=4, lr=1e-2, warmup_epochs=0.0, aug_elastic=True)
# Float tolerance for weights after 12 AdamW steps: the gradient all-reduce sums two half-batch
# means where one process sums one batch (same terms, other order).
WEIGHT_ATOL, LOSS_RTOL = 1e-4, 1e-4


def _train(
    data: Path, out: Path, devices: int, gpu_cache: bool, net: type[torch.nn.Module] | None = None
) -> tuple[dict, list[float]]:
    cfg = dataclasses.replace(RECIPE, devices=devices, gpu_cache=gpu_cache)
    module = SegModule(cfg.to_dict())
    module.model = _initial(net)  # replaces the registry model before training (pickled to the ranks)
    strategy = {"strategy": "ddp_spawn"} if devices > 1 else {}
    trainer = build_trainer(cfg, out, **strategy)
    trainer.fit(module, datamodule=make_datamodule(cfg, data))
    last = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return last["state_dict"], checkpoint_history(last)["train_loss"]


@pytest.mark.parametrize("gpu_cache", [False, True])
def test_two_processes_train_the_one_process_recipe(fit_runs, tmp_path, gpu_cache):
    """Same global batch, steps and augmentation stream on 1 and 2 processes: the weights agree.
    (Before issue 15, batch_size was per device: 2 processes took half the steps on twice the batch,
    with both ranks drawing identical augmentations.)"""
    one, loss_one = _train(fit_runs.data, tmp_path / "one", 1, gpu_cache)
    two, loss_two = _train(fit_runs.data, tmp_path / "two", 2, gpu_cache)
    assert len(loss_one) == len(loss_two) == 2
    np.testing.assert_allclose(loss_two, loss_one, rtol=LOSS_RTOL)
    moved, start = 0.0, _initial().state_dict()
    for key in one:
        if key.startswith("model."):
            np.testing.assert_allclose(
                two[key].numpy(), one[key].numpy(), rtol=0, atol=WEIGHT_ATOL, err_msg=key
            )
            moved = max(moved, float((one[key] - start[key[6:]]).abs().max()))
    assert moved > 100 * WEIGHT_ATOL  # training moved the weights far beyond the tolerance


def test_the_box_loss_is_the_global_batchs_mean_on_two_processes(fit_runs, tmp_path):
    """The box loss averages over the positive images: under DDP over those of the whole global
    batch (an all-reduce of the count), not of each process's half, whose positives differ."""
    one, loss_one = _train(fit_runs.data, tmp_path / "one", 1, False, BoxNet)
    two, loss_two = _train(fit_runs.data, tmp_path / "two", 2, False, BoxNet)
    np.testing.assert_allclose(loss_two, loss_one, rtol=LOSS_RTOL)
    start = _initial(BoxNet).state_dict()
    assert float((one["model.box.weight"] - start["box.weight"]).abs().max()) > 100 * WEIGHT_ATOL
    for key in ("model.box.weight", "model.box.bias"):
        np.testing.assert_allclose(two[key].numpy(), one[key].numpy(), rtol=0, atol=WEIGHT_ATOL, err_msg=key)


class CompileCheaply(Callback):
    """In each rank: torch.compile on aot_eager (dynamo and AOTAutograd without code generation, so
    cheap on CPU), and a count of the graphs dynamo's DDPOptimizer split at the gradient buckets."""

    def setup(self, trainer, pl_module, stage) -> None:
        from torch._dynamo.backends.distributed import DDPOptimizer
        from torch._dynamo.utils import counters

        compile_fn, real = DDPOptimizer.compile_fn, torch.compile

        def counted(optimizer, gm, inputs):
            counters["nerve_bench"]["ddp_optimizer"] += 1
            return compile_fn(optimizer, gm, inputs)

        DDPOptimizer.compile_fn = counted  # a spawned rank's own process: nothing to restore
        torch.compile = lambda model, **kw: real(model, **{**kw, "backend": "aot_eager"})


class CheckCompiled(Callback):
    """Rank 0 records whether the DDP module or the inner model was compiled, the graphs dynamo made
    and how many of them its DDPOptimizer split."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def on_train_end(self, trainer, pl_module) -> None:
        from torch._dynamo.utils import counters

        if trainer.is_global_zero:
            found = {
                "outer": isinstance(trainer.strategy.model, torch._dynamo.eval_frame.OptimizedModule),
                "inner": pl_module.__dict__.get("_compiled") is not None,
                "graphs": counters["stats"]["unique_graphs"],
                "ddp_optimizer": counters["nerve_bench"]["ddp_optimizer"],
            }
            (self.out / "checked.json").write_text(json.dumps(found))


def test_compile_under_ddp_compiles_the_inner_model_and_dynamo_splits_it_at_the_buckets(fit_runs, tmp_path):
    """compile: true on 2 processes compiles the inner model inside DDP's forward, where dynamo's
    DDPOptimizer splits it at the gradient buckets (the all-reduce overlaps the backward); a few
    graphs (train and eval), not one per step; and it trains the one-process uncompiled recipe."""
    cfg = dataclasses.replace(RECIPE, devices=2, compile=True)
    module = SegModule(cfg.to_dict())
    module.model = _initial()
    out = tmp_path / "compiled"
    out.mkdir()
    callbacks = [CompileCheaply(), CheckCompiled(out)]
    trainer = build_trainer(cfg, out, callbacks=callbacks, strategy="ddp_spawn")
    trainer.fit(module, datamodule=make_datamodule(cfg, fit_runs.data))
    found = json.loads((out / "checked.json").read_text())
    assert found["outer"] is False and found["inner"] is True, found
    assert 1 <= found["graphs"] <= 4 and found["ddp_optimizer"] >= 1, found
    last = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    one, _ = _train(fit_runs.data, tmp_path / "one", 1, False)
    for key in one:
        if key.startswith("model."):
            np.testing.assert_allclose(
                last["state_dict"][key].numpy(), one[key].numpy(), rtol=0, atol=WEIGHT_ATOL
            )


def test_compile_with_sync_batchnorm_warns_that_dynamo_breaks_the_graph(tmp_path, monkeypatch):
    """On GPUs a DDP run normalises over the global batch (SyncBatchNorm), which torch.compile does
    not trace (pytorch/pytorch#161302): the run says so before it trains."""
    from benchmark.training import trainer

    monkeypatch.setattr(trainer, "uses_gpu", lambda cfg: True)
    cfg = dataclasses.replace(RECIPE, devices=2, compile=True)
    with pytest.warns(UserWarning, match=r"graph-breaks at every SyncBatchNorm \(pytorch/pytorch#161302\)"):
        built = trainer.build_trainer(cfg, tmp_path, accelerator="cpu", benchmark=False, deterministic=True)
    assert built.strategy._layer_sync is not None  # SyncBatchNorm at setup


def test_a_float32_recipe_on_a_gpu_turns_off_cudnn_tf32_and_speed_restores_it(tmp_path, monkeypatch):
    """cuDNN convolves float32 in TF32 by default: a "32" GPU run says float32 and must be it."""
    from benchmark.speed import restore_global_torch_state
    from benchmark.training import trainer

    monkeypatch.setattr(trainer, "uses_gpu", lambda cfg: True)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    with restore_global_torch_state():
        built = trainer.build_trainer(
            dataclasses.replace(RECIPE, precision="32"), tmp_path, accelerator="cpu"
        )
        assert torch.backends.cudnn.allow_tf32 is False
        # a rank ddp_spawn starts unpickles the Trainer with torch's defaults (TF32 on): setup sets it
        (rank_side,) = [
            c for c in pickle.loads(pickle.dumps(built.callbacks)) if isinstance(c, ConvPrecision)
        ]
        torch.backends.cudnn.allow_tf32 = True
        rank_side.setup(built, None, "fit")
        assert torch.backends.cudnn.allow_tf32 is False
        trainer.build_trainer(
            dataclasses.replace(RECIPE, precision="bf16-mixed"), tmp_path, accelerator="cpu"
        )
        assert torch.backends.cudnn.allow_tf32 is True  # convolutions run in bf16 there anyway
        trainer.build_trainer(dataclasses.replace(RECIPE, precision="32"), tmp_path, accelerator="cpu")
    assert torch.backends.cudnn.allow_tf32 is True  # as before the block
    monkeypatch.setattr(trainer, "uses_gpu", lambda cfg: False)
    trainer.build_trainer(dataclasses.replace(RECIPE, precision="32"), tmp_path, accelerator="cpu")
    assert torch.backends.cudnn.allow_tf32 is True  # a CPU run leaves it alone


def test_evaluate_and_predict_score_a_float32_checkpoint_in_float32_on_a_gpu(monkeypatch):
    """They build no Trainer: the scoring context turns TF32 off for a "32" recipe on CUDA only."""
    from benchmark.training.device import scoring_precision

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    with scoring_precision(torch.device("cuda"), "32"):  # "32" autocasts nothing: no CUDA call
        assert torch.backends.cudnn.allow_tf32 is False
    assert torch.backends.cudnn.allow_tf32 is True
    with scoring_precision(torch.device("cpu"), "32"):
        assert torch.backends.cudnn.allow_tf32 is True

"""Validation/test metrics under DDP equal single-device ones, image for image.

Two CPU processes (gloo, ddp_spawn) over an ODD number of validation images: the distributed
sampler pads one rank by repeating an image, which the module must drop before scoring.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from lightning import Trainer

from benchmark.evaluation.inference import load_eval
from benchmark.training.checkpoint import load_checkpoint_module
from benchmark.training.trainer import make_datamodule
from tests.benchmark.fitting import PER_SUBJECT, SUBJECTS, UNET, trained_runs

pytestmark = pytest.mark.slow

# One subject per fold: PER_SUBJECT (odd) validation images.
DDP_CFG = dataclasses.replace(UNET, n_folds=SUBJECTS, fold=2)


def _evaluate(ckpt, data, dump, devices: int, stage: str) -> list[dict]:
    module, _ = load_checkpoint_module(ckpt)
    module.eval_dump = str(dump)  # rank 0 writes the gathered per-image rows here (spawned processes)
    trainer = Trainer(
        accelerator="cpu", devices=devices, strategy="ddp_spawn" if devices > 1 else "auto", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    run = trainer.validate if stage == "val" else trainer.test
    return run(module, datamodule=make_datamodule(DDP_CFG, data), verbose=False)


@pytest.mark.parametrize("stage", ["val", "test"])
def test_ddp_two_processes_equal_one(tmp_path_factory, tmp_path, stage):
    runs = trained_runs(tmp_path_factory)
    ckpt = runs.run_dir(UNET) / "checkpoints" / "best.ckpt"
    one = _evaluate(ckpt, runs.data, tmp_path / "one.npz", 1, stage)
    two = _evaluate(ckpt, runs.data, tmp_path / "two.npz", 2, stage)
    a, b = load_eval(tmp_path / "one.npz"), load_eval(tmp_path / "two.npz")
    assert PER_SUBJECT % 2 == 1 and len(a["index"]) == PER_SUBJECT
    assert a["index"].tolist() == sorted(set(a["index"].tolist()))
    for key in ("index", "counts", "presence_prob", "dice", "iou", "true_empty"):
        assert np.array_equal(a[key], b[key]), key  # bit-identical, duplicates dropped
    np.testing.assert_equal(a["metrics"], b["metrics"])  # NaN-aware, otherwise exact
    assert (
        one[0][f"{stage}/kaggle_dice"]
        == two[0][f"{stage}/kaggle_dice"]
        == pytest.approx(a["metrics"]["kaggle_dice"])
    )

"""Shared training runs for the training/evaluation tests: configs here, trained once per session
by the ``fit_runs`` fixture of tests/conftest.py (which calls :func:`build_runs`).

Nested split of the 6 x 11 frames with 3 folds: 22 outer (2 subjects), 11 inner (1 subject),
33 fit (3 subjects).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import Callback

from benchmark.core.config import TrainConfig

# 6 subjects x 11 frames: 3 folds give 22 outer images; 6 folds give 11 (odd, for DDP padding).
SUBJECTS, PER_SUBJECT = 6, 11
FAST = {"image_size": 64, "batch_size": 4, "eval_batch_size": 4, "n_folds": 3, "logger": "none",
        "progress_bar": False, "warmup_epochs": 0.5}  # fmt: skip
# lr 1e-2: at 2e-2 one seed collapsed to near-empty predictions on one thread (Dice 0.55), not on two.
UNET = TrainConfig(model="unet", model_kwargs={"base_width": 8}, epochs=10, lr=1e-2, **FAST)
EMPTY = TrainConfig(model="empty", epochs=1, **FAST)
TINY = TrainConfig(model="unet", model_kwargs={"base_width": 4, "depth": 2}, epochs=2, lr=1e-2, **FAST)


@dataclass
class Runs:
    data: Path
    root: Path
    unet: dict
    empty: dict

    def run_dir(self, cfg: TrainConfig) -> Path:
        return self.root / cfg.run_name()


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread for the block, as :func:`build_runs` trains and scores the runs: the same
    float order, so the same weights however many cores and test workers (a tiny model on tiny data
    can learn or collapse with the order of its sums), and a re-score of a run in this block
    reproduces its figures, where another thread count may flip a pixel near the threshold."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def build_runs(factory: pytest.TempPathFactory) -> Runs:
    """A synthetic dataset plus fitted `unet` and `empty` runs on fold 0."""
    from benchmark.pipeline import fit
    from datamodules.synth import generate

    data = factory.mktemp("fit_data")
    generate(data, subjects=SUBJECTS, per_subject=PER_SUBJECT, n_test=1, seed=0)
    root = factory.mktemp("fit_runs")
    with one_thread():
        unet = fit(UNET, data, root / UNET.run_name())
        empty = fit(EMPTY, data, root / EMPTY.run_name())
    return Runs(data, root, unet, empty)


class Stop(Exception):
    """Raised by :class:`StopAt`: a crash that only the test expects."""


class StopAt(Callback):
    """Simulates a crash at the start of an epoch (after the previous epoch's checkpoint)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise Stop

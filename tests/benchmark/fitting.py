"""Shared, cached training runs for the training/evaluation tests (trained once per session).

Not a conftest: the cache lives here so test modules of other engineers are unaffected.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmark.core.config import TrainConfig

# 6 subjects x 11 frames: 3 folds give 22 validation images; 6 folds give 11 (odd, for DDP padding).
SUBJECTS, PER_SUBJECT = 6, 11
FAST = {"image_size": 64, "batch_size": 4, "eval_batch_size": 4, "n_folds": 3, "logger": "none",
        "progress_bar": False, "warmup_epochs": 0.5}  # fmt: skip
UNET = TrainConfig(model="unet", model_kwargs={"base_width": 8}, epochs=10, lr=2e-2, **FAST)
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


_CACHE: dict[str, Runs] = {}


def trained_runs(factory: pytest.TempPathFactory) -> Runs:
    """A synthetic dataset plus fitted `unet` and `empty` runs on fold 0 (cached)."""
    if "runs" not in _CACHE:
        from benchmark.pipeline import fit
        from datamodules.synth import generate

        data = factory.mktemp("fit_data")
        generate(data, subjects=SUBJECTS, per_subject=PER_SUBJECT, n_test=1, seed=0)
        root = factory.mktemp("fit_runs")
        unet = fit(UNET, data, root / UNET.run_name())
        empty = fit(EMPTY, data, root / EMPTY.run_name())
        _CACHE["runs"] = Runs(data, root, unet, empty)
    return _CACHE["runs"]

"""Shared fixtures: a small synthetic Kaggle-layout dataset and the optional real samples."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 subjects x 8 frames (about half with a nerve) and 5 test images, generated once per session."""
    from datamodules.synth import generate

    out = tmp_path_factory.mktemp("synthetic")
    generate(out, subjects=6, per_subject=8, n_test=5, seed=0)
    return out


@pytest.fixture(scope="session")
def uns_sample() -> Path:
    """The 26 real Kaggle training pairs and 25 test images; skipped when ../shared is absent."""
    path = SHARED_DATA / "uns-sample"
    if not (path / "train").is_dir():
        pytest.skip(f"real sample data not found at {path}")
    return path


@pytest.fixture(scope="session")
def fit_runs(tmp_path_factory: pytest.TempPathFactory):
    """Fitted `unet` and `empty` runs on a synthetic dataset (tests/benchmark/fitting.py), trained once."""
    from tests.benchmark.fitting import build_runs

    return build_runs(tmp_path_factory)

"""Subjects that share a frame are one unit end to end: the split keeps them on one side, the
summary records the link and each image's unit, the board resamples units, ``data check`` says so,
and a results directory does not mix linked and unlinked splits."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from benchmark.cli import main
from benchmark.core.config import TrainConfig
from benchmark.evaluation import finalize
from benchmark.external.folds import folds_document
from benchmark.reporting import board_stats as bs
from benchmark.reporting import leaderboard as lb
from benchmark.scoring import stats
from datamodules.datamodule import UltrasoundNerveDataModule
from datamodules.synth import generate
from tests.benchmark.summaries import SUBJECTS, empty_runs, model_runs

UNET = {0: [1.0, 0.8, 1.0, 0.6, 0.7, 1.0, 0.5, 0.0], 1: [1.0, 0.6, 0.0, 0.8, 0.9, 1.0, 0.7, 1.0]}
UNET_MEAN = [1.0, 0.7, 0.5, 0.7, 0.8, 1.0, 0.6, 0.5]  # per image, averaged over the two seeds


@pytest.fixture(scope="module")
def shared_frame(tmp_path_factory) -> Path:
    """6 synthetic subjects of 5 frames; subject 4's first image is subject 2's first (its own mask)."""
    out = tmp_path_factory.mktemp("linked")
    generate(out, subjects=6, per_subject=5, n_test=0, seed=0)
    shutil.copyfile(out / "train" / "2_1.tif", out / "train" / "4_1.tif")
    return out


def _setup(data: Path, **fields) -> UltrasoundNerveDataModule:
    dm = UltrasoundNerveDataModule.from_config_dict(data, TrainConfig(**fields).to_dict())
    dm.setup()
    return dm


def _side(dm: UltrasoundNerveDataModule, subject: int) -> set[str]:
    parts = {"fit": dm.fit_indices, "inner": dm.inner_indices, "outer": dm.outer_indices}
    return {name for name, idx in parts.items() if (dm.subjects[idx] == subject).any()}


def test_linked_subjects_stay_on_one_side_of_every_split(shared_frame):
    apart = 0
    for fold in range(3):
        for seed in range(4):
            dm = _setup(shared_frame, fold=fold, n_folds=3, split_seed=seed)
            assert dm.links == [(2, 4, 1)]
            assert dm.units.tolist() == [2 if s == 4 else int(s) for s in dm.subjects]
            assert _side(dm, 2) == _side(dm, 4) and len(_side(dm, 2)) == 1
            plain = _setup(shared_frame, fold=fold, n_folds=3, split_seed=seed, link_subjects=False)
            assert plain.links == [] and plain.units.tolist() == plain.subjects.tolist()
            apart += _side(plain, 2) != _side(plain, 4)
    assert apart > 0  # unlinked, the same patient's frames did land on both sides of some split


def test_the_summary_records_the_link(shared_frame):
    cfg = TrainConfig(n_folds=3)
    dm = _setup(shared_frame, n_folds=3)
    split = finalize.split_block(cfg, dm)
    assert split["link_subjects"] is True
    assert split["linked_subjects"] == [{"subjects": [2, 4], "shared_frames": 1}]
    doc = folds_document(cfg, shared_frame)
    assert doc["split"]["linked_subjects"] == [{"subjects": [2, 4], "shared_frames": 1}]


def test_data_check_names_linked_subjects(shared_frame, capsys):
    assert main(["data", "check", "--data-dir", str(shared_frame)]) == 0
    out = capsys.readouterr().out
    assert (
        "linked subjects 2 and 4 share 1 frame (identical or re-encoded): one unit in splits and CIs" in out
    )


def _with_units(runs: list[dict], merge: dict[int, int]) -> list[dict]:
    for run in runs:
        run["per_image"]["unit"] = [merge.get(s, s) for s in run["per_image"]["subject"]]
    return runs


def test_the_board_resamples_units_not_subjects():
    merge = {4: 3}  # the toy set's subjects 3 and 4 are one patient: 3 units
    board = lb.build(_with_units(model_runs("unet", UNET), merge) + _with_units(empty_runs(), merge))
    unet = next(r for r in board["rows"] if r["model"] == "unet")
    units = [merge.get(s, s) for s in SUBJECTS]
    _, lo, hi = stats.subject_bootstrap_ci(np.array(UNET_MEAN), units, n_boot=bs.N_BOOT, seed=bs.SEED)
    assert (unet["metrics"]["kaggle_dice"]["lo"], unet["metrics"]["kaggle_dice"]["hi"]) == (
        pytest.approx(lo),
        pytest.approx(hi),
    )
    _, lo4, hi4 = stats.subject_bootstrap_ci(np.array(UNET_MEAN), SUBJECTS, n_boot=bs.N_BOOT, seed=bs.SEED)
    assert (lo, hi) != (lo4, hi4)  # the merge changes the interval: the test can tell them apart
    assert unet["n_subjects"] == 4  # the count of subjects is still the count of subjects
    images = [
        lb.oof_images(model_runs("unet", UNET)),
        lb.oof_images(_with_units(model_runs("unet", UNET), merge)),
    ]
    assert bs.subject_totals(images[1:])[0].shape == (1, 3) and bs.subject_totals(images[:1])[0].shape == (
        1,
        4,
    )


def test_a_board_with_a_run_without_units_resamples_subjects():
    runs = _with_units(model_runs("unet", UNET), {2: 1})
    del runs[0]["per_image"]["unit"]  # a summary written before units
    assert lb.oof_images(runs)["unit"].tolist() == SUBJECTS

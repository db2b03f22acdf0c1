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
from datamodules.io import read_tif, write_tif
from datamodules.synth import generate
from tests.benchmark.summaries import SUBJECTS, UNET, UNET_MEAN, empty_runs, model_runs


@pytest.fixture(scope="module")
def shared_frame(tmp_path_factory) -> Path:
    """6 synthetic subjects of 5 frames; subject 4's first image is subject 2's first re-encoded
    (noise, another contrast; its own mask)."""
    out = tmp_path_factory.mktemp("linked")
    generate(out, subjects=6, per_subject=5, n_test=0, seed=0)
    image = read_tif(out / "train" / "2_1.tif").astype(float)
    noise = np.random.default_rng(0).normal(0, 6, image.shape)
    write_tif(out / "train" / "4_1.tif", np.clip(0.9 * image + 12 + noise, 0, 255).astype(np.uint8))
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
            assert dm.links == [(2, 4, 1, 1)]
            assert dm.units.tolist() == [2 if s == 4 else int(s) for s in dm.subjects]
            assert _side(dm, 2) == _side(dm, 4) and len(_side(dm, 2)) == 1
            plain = _setup(shared_frame, fold=fold, n_folds=3, split_seed=seed, link_subjects=False)
            assert plain.links == [(2, 4, 1, 1)] and plain.units.tolist() == plain.subjects.tolist()
            apart += _side(plain, 2) != _side(plain, 4)
    assert apart > 0  # unlinked, the same patient's frames did land on both sides of some split


def test_the_summary_records_the_link(shared_frame):
    cfg = TrainConfig(n_folds=3)
    dm = _setup(shared_frame, n_folds=3)
    split = finalize.split_block(cfg, dm)
    assert split["link_subjects"] is True
    assert split["linked_subjects"] == [{"subjects": [2, 4], "matching_frames": [1, 1]}]
    doc = folds_document(cfg, shared_frame)
    assert doc["split"]["linked_subjects"] == [{"subjects": [2, 4], "matching_frames": [1, 1]}]
    unlinked = folds_document(TrainConfig(n_folds=3, link_subjects=False), shared_frame)["split"]
    assert (
        unlinked["link_subjects"] is False and unlinked["linked_subjects"] == doc["split"]["linked_subjects"]
    )


def test_data_check_names_linked_subjects(shared_frame, capsys):
    assert main(["data", "check", "--data-dir", str(shared_frame)]) == 0
    out = capsys.readouterr().out
    assert (
        "linked          subjects 2 and 4 share frames (1 of 2's and 1 of 4's match, identical or "
        "re-encoded): one unit in splits and CIs (link_subjects)" in out
    )


def _with_units(runs: list[dict], merge: dict[int, int]) -> list[dict]:
    for run in runs:
        run["per_image"]["unit"] = [merge.get(s, s) for s in run["per_image"]["subject"]]
    return runs


def test_the_board_resamples_units_not_subjects(monkeypatch):
    monkeypatch.setattr(bs, "MIN_CI_UNITS", 2)  # the toy set has 4 subjects: CIs from 2 units here
    merge = {4: 3}  # the toy set's subjects 3 and 4 are one patient: 3 units
    board = lb.build(_with_units(model_runs("unet", UNET), merge) + _with_units(empty_runs(), merge))
    unet = next(r for r in board["rows"] if r["model"] == "unet")
    units = [merge.get(s, s) for s in SUBJECTS]
    per_seed = np.array([UNET[0], UNET[1]])  # its two seeds are drawn with the units
    _, lo, hi = stats.subject_bootstrap_ci(
        np.array(UNET_MEAN), units, bs.N_BOOT, seed=bs.SEED, seeds=per_seed
    )
    assert (unet["metrics"]["kaggle_dice"]["lo"], unet["metrics"]["kaggle_dice"]["hi"]) == (
        pytest.approx(lo),
        pytest.approx(hi),
    )
    _, lo4, hi4 = stats.subject_bootstrap_ci(
        np.array(UNET_MEAN), SUBJECTS, bs.N_BOOT, seed=bs.SEED, seeds=per_seed
    )
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


def test_a_board_with_a_run_without_units_resamples_subjects_for_every_model():
    runs = _with_units(model_runs("unet", UNET), {2: 1})
    del runs[0]["per_image"]["unit"]  # a summary written before units
    assert lb.oof_images(runs)["unit"].tolist() == SUBJECTS
    # one model with units, one without: one choice for the board, so the paired tests line up
    mixed = _with_units(model_runs("sk_unet", UNET), {4: 3}) + model_runs("unet", UNET) + empty_runs()
    assert lb.has_units(mixed) is False
    board = lb.build(mixed)
    assert sorted(r["model"] for r in board["rows"]) == ["empty", "sk_unet", "unet"]


def test_the_split_cannot_differ_per_model():
    from benchmark.core.config import ConfigError
    from benchmark.core.per_model import check_model_train

    for field, value in (("link_subjects", False), ("split_seed", 3), ("n_folds", 3)):
        with pytest.raises(
            ConfigError, match=f"unet: {field} cannot differ per model: the board has one split"
        ):
            check_model_train("model_train", TrainConfig(), {"unet": {field: value}})


def test_the_legend_names_linked_subjects_only_when_the_board_linked_them():
    from benchmark.reporting.legend import protocol

    pairs = [[{"subjects": [17, 18], "matching_frames": [12, 9]}]]
    text = " ".join(protocol({"header": {"n_folds": 3, "link_subjects": [True], "linked_subjects": pairs}}))
    assert "one patient (`link_subjects`)" in text and "(here: 17 and 18)." in text
    for before in ([None], [False]):
        assert "link_subjects" not in " ".join(protocol({"header": {"n_folds": 3, "link_subjects": before}}))
    chain = [
        [{"subjects": [1, 5], "matching_frames": [1, 1]}, {"subjects": [5, 7], "matching_frames": [2, 1]}]
    ]
    apart = " ".join(protocol({"header": {"n_folds": 3, "link_subjects": [False], "linked_subjects": chain}}))
    assert (
        "Warning: subjects 1, 5 and 7 share frames, identical or re-encoded, but were split as separate"
        in apart
    )


def test_run_warns_when_the_data_has_linked_subjects_that_the_split_keeps_apart(
    shared_frame, tmp_path, monkeypatch, capsys
):
    from benchmark import ray_grid

    monkeypatch.setattr(ray_grid, "execute", lambda *a, **k: [])
    args = ["run", "--data-dir", str(shared_frame), "--results-dir", str(tmp_path), "--models", "empty"]
    main(
        [
            *args,
            "--folds",
            "0",
            "--seeds",
            "0",
            "--no-report",
            "--set",
            "n_folds=3",
            "--set",
            "link_subjects=false",
            "--set",
            "accelerator=cpu",  # default.yaml's GPU recipe, on purpose on this CPU
        ]
    )
    assert (
        "warning: subjects 2 and 4 share frames (1 of 2's and 1 of 4's match, identical or re-encoded), but "
        "link_subjects is false: the split may put them apart" in capsys.readouterr().out
    )


def test_cleaning_compares_frames_across_linked_subjects(tmp_path):
    """A labelled frame of subject 2 copied into subject 4 with an empty mask is a contradiction
    that only a comparison within the linked unit finds."""
    data = tmp_path / "data"
    generate(data, subjects=10, per_subject=3, n_test=0, seed=0)
    source = next(i for i in range(1, 4) if read_tif(data / "train" / f"2_{i}_mask.tif").any())
    shutil.copyfile(data / "train" / f"2_{source}.tif", data / "train" / "4_1.tif")
    write_tif(data / "train" / "4_1_mask.tif", np.zeros((420, 580), np.uint8))
    rows = (data / "train_masks.csv").read_text().splitlines()
    (data / "train_masks.csv").write_text(
        "\n".join("4,1," if r.startswith("4,1,") else r for r in rows) + "\n"
    )
    for fold in range(3):
        dm = _setup(data, fold=fold, n_folds=3, clean_contradictory=True)
        if _side(dm, 2) == {"fit"}:
            assert dm.dropped_stems == ["4_1"]
            return
    pytest.fail("subjects 2 and 4 were in the fit part of no fold")


def test_a_training_set_compares_its_frames_once_for_every_split(shared_frame, monkeypatch):
    """folds, import and every fold's DataModule ask the same set for its units: one all-pairs pass."""
    from datamodules import fingerprints
    from datamodules.kaggle import load_train

    calls = []
    real = fingerprints.linked_units
    monkeypatch.setattr(fingerprints, "linked_units", lambda *a: calls.append(1) or real(*a))
    train = load_train(shared_frame)
    linked, links = train.units()
    plain, same_links = train.units(link=False)
    assert len(calls) == 1 and links == same_links == [(2, 4, 1, 1)]
    assert plain.tolist() == train.subjects.tolist() and linked.tolist() != plain.tolist()

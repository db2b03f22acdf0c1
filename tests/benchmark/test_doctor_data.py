"""The doctor's data share and the box around the device: the fits take the first subjects of a
large layout, and a container's small /dev/shm is named before DataLoader workers die of it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from benchmark.doctor import data, device_checks, report
from datamodules.kaggle import load_train


def test_the_fits_take_the_first_subjects_of_a_large_layout(synthetic_dir, tmp_path):
    """So a doctor on the 5,635 Kaggle frames fits on no more whole subjects than it needs."""
    full = load_train(synthetic_dir)
    assert data.first_subjects(synthetic_dir, tmp_path / "all", 1000, 2) == (synthetic_dir, 6, 48)
    assert data.first_subjects(synthetic_dir, tmp_path / "four", 1, 4)[1:] == (4, 32)  # at least 4 subjects
    csv_only = tmp_path / "csv-only"  # masks from train_masks.csv alone: its rows go along
    shutil.copytree(synthetic_dir, csv_only)
    for mask in (csv_only / "train").glob("*_mask.tif"):
        mask.unlink()
    for source, layout in (("tif+csv", synthetic_dir), ("csv", csv_only)):
        out, subjects, frames = data.first_subjects(layout, tmp_path / f"cut-{source}", 20, 2)
        assert (subjects, frames) == (3, 24) and out == tmp_path / f"cut-{source}"
        cut = load_train(out)
        assert cut.stems == full.stems[:24] and cut.mask_source == source
        assert np.array_equal(cut.images, full.images[:24]) and np.array_equal(cut.masks, full.masks[:24])


def test_where_links_are_refused_the_frames_are_copied(synthetic_dir, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(Path, "symlink_to", refuse)  # Windows without the privilege
    monkeypatch.setattr(data.os, "link", refuse)
    out, _, frames = data.first_subjects(synthetic_dir, tmp_path / "cut", 20, 2)
    files = list((out / "train").iterdir())
    assert frames == 24 and len(files) == 48 and not any(f.is_symlink() for f in files)
    assert np.array_equal(load_train(out).masks, load_train(synthetic_dir).masks[:24])


def test_a_container_s_small_dev_shm_is_a_warning_with_the_remedy(monkeypatch):
    """Docker's default 64 MiB /dev/shm kills DataLoader workers with a bus error."""
    cpu = torch.device("cpu")
    assert device_checks.shm_need_gib(torch.device("cuda")) == 1.0 and device_checks.shm_need_gib(cpu) == 0
    assert device_checks.shm_problem(2.0, 1.0) is None and device_checks.shm_problem(None, 1.0) is None
    eight = device_checks.shm_problem(0.06, 1.0, gpus=8) or ""  # Docker's 64 MiB on an 8-GPU box
    assert "under the 1 GiB the DataLoader workers and NCCL between the 8 GPUs need here" in eight
    monkeypatch.setattr(device_checks, "_shm_gib", lambda: 0.06)
    info = device_checks.device_info(cpu)
    assert info.status != report.WARN and info.figures["shm_gib"] == 0.06  # loaders in the process
    monkeypatch.setattr(device_checks, "shm_need_gib", lambda dev: 1.0)  # as on a GPU
    info = device_checks.device_info(cpu)
    assert info.status == report.WARN and info.detail.endswith(
        "; /dev/shm holds 0.06 GiB, under the 1 GiB the DataLoader workers need here (a worker would die "
        "with a bus error): give the container more (docker run --shm-size=2g)"
    )

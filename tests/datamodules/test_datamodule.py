"""UltrasoundNerveDataModule on the synthetic dataset: nested splits, batch contract, modes, cleaning."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmark.core.config import TrainConfig
from datamodules.data_config import AugmentConfig, DataConfig, DataConfigError
from datamodules.datamodule import MEAN, STD, UltrasoundNerveDataModule
from datamodules.errors import DataError
from datamodules.io import read_tif
from datamodules.samplers import EvalSampler


def _dm(data: Path, **fields) -> UltrasoundNerveDataModule:
    return UltrasoundNerveDataModule(data, DataConfig(**fields))


@pytest.fixture(scope="module")
def dm(synthetic_dir: Path) -> UltrasoundNerveDataModule:
    module = _dm(synthetic_dir, fold=1, n_folds=3, image_size=64, batch_size=4, eval_batch_size=5)
    module.setup("fit")
    return module


def test_split_is_grouped_by_subject_and_covers_everything(dm: UltrasoundNerveDataModule) -> None:
    parts = (dm.fit_indices, dm.inner_indices, dm.outer_indices)
    fit_subj, inner_subj, outer_subj = (set(dm.subjects[p].tolist()) for p in parts)
    assert not fit_subj & inner_subj and not fit_subj & outer_subj and not inner_subj & outer_subj
    # 6 subjects, 3 folds: the outer fold holds 2; the inner set round(0.15 x 4) -> 1 of the other 4.
    assert (len(fit_subj), len(inner_subj), len(outer_subj)) == (3, 1, 2)
    assert [len(p) for p in parts] == [24, 8, 16]
    assert sorted(np.concatenate(parts).tolist()) == list(range(48))
    np.testing.assert_array_equal(dm.outer_indices, np.flatnonzero(dm.outer_folds == 1))
    assert dm.positive.tolist() == [bool(m.any()) for m in dm.train_set.masks]
    assert len(dm.stems) == len(dm.train_set) == 48 and dm.stems[0] == "1_1"
    assert dm.dropped_stems == [] and dm.cached_images.shape == (48, 64, 64)
    assert UltrasoundNerveDataModule(".").config.clean_contradictory is False  # cleaning is opt-in


def test_train_batch_contract(dm: UltrasoundNerveDataModule) -> None:
    batches = list(dm.train_dataloader())
    assert [len(b["index"]) for b in batches] == [4] * 6  # 24 fit images: 6 full global batches
    b = batches[0]
    assert set(b) == {"image", "mask", "presence", "bbox", "index"}
    assert b["image"].shape == (4, 1, 64, 64) and b["image"].dtype == torch.float32
    assert b["mask"].shape == (4, 1, 64, 64) and b["mask"].dtype == torch.float32
    assert set(b["mask"].unique().tolist()) <= {0.0, 1.0}
    assert b["presence"].shape == (4,) and b["bbox"].shape == (4, 4) and b["index"].dtype == torch.int64
    np.testing.assert_array_equal(b["presence"].numpy(), b["mask"].flatten(1).amax(1).numpy())
    assert set(np.concatenate([x["index"].numpy() for x in batches])) == set(dm.fit_indices.tolist())


def _trainer(world: int, rank: int, epoch: int = 0) -> SimpleNamespace:
    """What the DataModule reads of an attached Trainer: ranks, and the epoch a fit starts at."""
    progress = SimpleNamespace(current=SimpleNamespace(processed=epoch))
    fit_loop = SimpleNamespace(epoch_progress=progress)
    return SimpleNamespace(world_size=world, global_rank=rank, fit_loop=fit_loop)


def _epoch(loader, epoch: int) -> list[list[int]]:
    loader.sampler.set_epoch(epoch)  # what Lightning does before every epoch
    return [b["index"].tolist() for b in loader]


def test_train_order_is_a_function_of_seed_and_epoch(dm: UltrasoundNerveDataModule) -> None:
    first = _epoch(dm.train_dataloader(), 0)
    assert first == _epoch(dm.train_dataloader(), 0) and sorted(sum(first, [])) != sum(first, [])
    assert _epoch(dm.train_dataloader(), 1) != first  # a new permutation every epoch


def test_a_resumed_fit_starts_at_its_epoch_with_loader_workers(synthetic_dir: Path) -> None:
    """Lightning creates the loader's iterator before it sets the sampler's epoch (and not again on a
    resume): workers fetch indices as soon as the iterator exists, so the loader must start at the
    resumed epoch itself, here 3, not at 0."""
    fields = {"fold": 1, "n_folds": 3, "image_size": 64, "batch_size": 4}
    plain, workers = _dm(synthetic_dir, **fields), _dm(synthetic_dir, **fields, num_workers=1)
    workers.trainer = _trainer(1, 0, epoch=3)
    loader = workers.train_dataloader()
    batches = iter(loader)  # FitLoop.setup_data
    loader.sampler.set_epoch(3)  # FitLoop.on_advance_start, after it
    assert [b["index"].tolist() for b in batches] == _epoch(plain.train_dataloader(), 3)
    assert _epoch(plain.train_dataloader(), 3) != _epoch(plain.train_dataloader(), 0)


def test_val_batches_and_mask_orig_match_disk(dm: UltrasoundNerveDataModule, synthetic_dir: Path) -> None:
    batches = list(dm.val_dataloader())
    b = batches[0]
    assert set(b) == {"image", "mask", "presence", "bbox", "index", "mask_orig"}
    assert b["mask_orig"].shape == (5, 420, 580) and b["mask_orig"].dtype == torch.uint8
    np.testing.assert_array_equal(np.concatenate([x["index"].numpy() for x in batches]), dm.inner_indices)
    for i, g in enumerate(b["index"].tolist()):
        on_disk = read_tif(synthetic_dir / "train" / f"{dm.stems[g]}_mask.tif")
        np.testing.assert_array_equal(b["mask_orig"][i].numpy(), on_disk // 255)
        assert b["presence"][i].item() == float(on_disk.any())
        image = read_tif(synthetic_dir / "train" / f"{dm.stems[g]}.tif")
        # un-augmented input is the cached resize, normalised with the documented constants
        raw = b["image"][i, 0].numpy() * STD + MEAN
        assert abs(raw.mean() * 255 - image.mean()) < 3.0
    tested = np.concatenate([x["index"].numpy() for x in dm.outer_dataloader()])
    np.testing.assert_array_equal(tested, dm.outer_indices)  # the outer fold, not the selection set
    full = list(dm.subset_dataloader(np.arange(48)))
    assert np.concatenate([b["index"].numpy() for b in full]).tolist() == list(range(48))


def test_pad_mode_holdout_and_no_augment(synthetic_dir: Path) -> None:
    dm = _dm(
        synthetic_dir,
        holdout_fraction=0.34,
        resize_mode="pad",
        batch_size=2,
        eval_batch_size=2,
        augment=AugmentConfig(enabled=False),
    )
    dm.setup()
    assert dm.input_shape == (448, 608)
    # Hold-out mode: the hold-out (2 of 6 equal-sized subjects is closest to 34%) is the outer set;
    # the inner selection set (1 subject) comes from the other 4.
    assert len(set(dm.subjects[dm.outer_indices])) == 2 and len(set(dm.subjects[dm.inner_indices])) == 1
    assert len(dm.fit_indices) == 24 and np.array_equal(dm.outer_indices, np.flatnonzero(dm.outer_folds == 0))
    b = next(iter(dm.val_dataloader()))
    assert b["image"].shape == (2, 1, 448, 608) and b["mask"].shape == (2, 1, 448, 608)
    np.testing.assert_array_equal(b["mask"][:, 0, 14:434, 14:594].numpy(), b["mask_orig"].numpy())
    t = next(iter(dm.train_dataloader()))
    g = t["index"][0].item()  # without augmentation the training input is exactly the cache
    torch.testing.assert_close(
        t["image"][0, 0], (torch.from_numpy(dm.cached_images[g]).float() / 255 - MEAN) / STD
    )


def test_worker_processes_give_the_same_augmented_batches(synthetic_dir: Path) -> None:
    """Each sample's augmentation comes from its (seed, epoch, index) key, so loader workers (which
    hold copies of the pipeline) change nothing: the stream is the same with or without them."""
    fields = {"fold": 1, "n_folds": 3, "image_size": 64, "batch_size": 4}
    plain, workers = _dm(synthetic_dir, **fields), _dm(synthetic_dir, **fields, num_workers=2)
    a, b = plain.train_dataloader(), workers.train_dataloader()
    for epoch in (0, 3):
        a.sampler.set_epoch(epoch)
        b.sampler.set_epoch(epoch)
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x["index"], y["index"]) and torch.equal(x["image"], y["image"])
    unaugmented = plain.subset_dataloader(x["index"][:1].numpy()).dataset[0]["image"]
    assert not torch.equal(x["image"][0], unaugmented)  # augmentation was on: the check can fail


def test_loader_workers_are_capped_at_the_cpus_this_process_may_use(synthetic_dir: Path, monkeypatch) -> None:
    """default.yaml's 4 workers on a 2-CPU box: 2 (torch warns, and the extra two only contend)."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert [DataConfig(num_workers=n).loader_workers() for n in (0, 1, 2, 4, 64)] == [0, 1, 2, 2, 2]
    dm = _dm(synthetic_dir, fold=1, n_folds=3, image_size=64, batch_size=4, num_workers=4)
    assert dm.train_dataloader().num_workers == 2 and dm.inner_dataloader().num_workers == 2
    monkeypatch.delattr(os, "sched_getaffinity")  # macOS: the CPU count instead
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert DataConfig(num_workers=4).loader_workers() == 3


def test_cleaning_drops_training_contradictions(synthetic_dir: Path) -> None:
    dm = UltrasoundNerveDataModule(
        synthetic_dir, DataConfig(n_folds=3, image_size=64, clean_contradictory=True), clean_threshold=0.2
    )  # synthetic frames of a subject are all alike
    dm.setup()
    kept = len(dm.fit_indices) + len(dm.inner_indices) + len(dm.outer_indices)
    assert dm.dropped_stems and kept + len(dm.dropped_stems) == 48
    for keep, drop, _ in dm.contradictions:
        assert dm.train_set.masks[keep].any() and not dm.train_set.masks[drop].any()
        assert dm.subjects[keep] == dm.subjects[drop] and drop not in dm.fit_indices
    assert not set(dm.dropped_stems) & {
        dm.stems[i] for i in np.concatenate([dm.inner_indices, dm.outer_indices])
    }


def test_config_fields_and_errors(synthetic_dir: Path, tmp_path: Path) -> None:
    config = {"model": "unet", "lr": 0.1, "fold": 2, "image_size": 96, "aug_elastic": True, "augment": True}
    dm = UltrasoundNerveDataModule.from_config_dict(synthetic_dir, config)
    cfg = dm.config
    assert (cfg.fold, cfg.image_size, cfg.augment.elastic, cfg.clean_contradictory) == (2, 96, True, False)
    assert cfg.augment.active() == ("flip", "affine", "elastic", "brightness", "noise")
    off = DataConfig.from_mapping({"augment": False, "aug_flip": True})
    assert off.augment.active() == ()  # the master switch wins
    with pytest.raises(DataConfigError, match="resize_mode"):
        DataConfig(resize_mode="crop")
    with pytest.raises(DataConfigError, match="batch_size"):
        DataConfig(batch_size=1)
    with pytest.raises(DataError, match="cannot split"):
        _dm(synthetic_dir, n_folds=7).setup()
    with pytest.raises(DataError, match="not found"):
        UltrasoundNerveDataModule(tmp_path / "missing").setup()


def test_every_data_field_is_a_train_config_field() -> None:
    """One data config: each DataConfig field (and each augmentation switch as aug_<name>) is read
    from the TrainConfig field of the same name, so no setting can act on one path only."""
    train = TrainConfig().to_dict()
    names = {f.name for f in dataclasses.fields(DataConfig)} - {"augment"}
    assert names <= set(train)
    switches = {f"aug_{f.name}" for f in dataclasses.fields(AugmentConfig)} - {"aug_enabled", "aug_p"}
    assert switches == {k for k in train if k.startswith("aug_")}
    changed = {k: (not v if isinstance(v, bool) else v) for k, v in train.items() if k.startswith("aug_")}
    config = DataConfig.from_mapping({**train, **changed})
    assert {
        name: getattr(config.augment, name) for name in ("flip", "affine", "elastic", "brightness", "noise")
    } == {k[4:]: v for k, v in changed.items()}


def _sizes(dm: UltrasoundNerveDataModule, world: int) -> list[list[int]]:
    sizes = []
    for rank in range(world):
        dm.trainer = _trainer(world, rank)
        try:
            sizes.append([len(b["index"]) for b in dm.train_dataloader()])
        finally:
            dm.trainer = None
    return sizes


def test_global_batch_is_split_evenly_and_full(synthetic_dir: Path) -> None:
    dm = _dm(synthetic_dir, n_folds=6, image_size=64, batch_size=6, augment=AugmentConfig(enabled=False))
    dm.setup()
    assert len(dm.fit_indices) == 32  # 48 - 8 outer - 8 inner
    assert _sizes(dm, 1) == [[6] * 5]  # 5 full global batches, the 2 left over wait for the next epoch
    assert _sizes(dm, 2) == [[3] * 5, [3] * 5]  # the same 5 steps, half of each batch per rank
    with pytest.raises(DataConfigError, match="not divisible by the 4"):
        _sizes(dm, 4)
    small = _dm(synthetic_dir, n_folds=6, image_size=64, batch_size=40)
    with pytest.raises(DataError, match="fewer than one global batch"):
        small.train_dataloader()


def test_two_ranks_see_exactly_the_global_batches_of_one(synthetic_dir: Path) -> None:
    """Step s of rank 0 and rank 1 together is global batch s of a one-process run: same samples,
    same augmentation draws (the stream does not depend on the world size)."""
    one = _dm(synthetic_dir, n_folds=3, image_size=64, batch_size=4, seed=3)
    two = [_dm(synthetic_dir, n_folds=3, image_size=64, batch_size=4, seed=3) for _ in range(2)]
    single = list(one.train_dataloader())
    shards = []
    for rank, dm in enumerate(two):
        dm.trainer = _trainer(2, rank)
        shards.append(list(dm.train_dataloader()))
    for whole, a, b in zip(single, *shards, strict=True):
        assert torch.equal(whole["index"], torch.cat([a["index"], b["index"]]))
        assert torch.equal(whole["image"], torch.cat([a["image"], b["image"]]))


def _parts(synthetic_dir: Path, **kwargs) -> list[list[int]]:
    dm = _dm(synthetic_dir, n_folds=3, image_size=64, **kwargs)
    dm.setup()
    return [p.tolist() for p in (dm.fit_indices, dm.inner_indices, dm.outer_indices)]


def test_seed_does_not_move_the_split_and_split_seed_does(synthetic_dir: Path) -> None:
    base = _parts(synthetic_dir, fold=1)
    assert _parts(synthetic_dir, fold=1, seed=7) == base  # replicate seeds share one split
    assert _parts(synthetic_dir, fold=1, split_seed=1) != base


def test_outer_folds_partition_and_never_reach_fit_or_selection(synthetic_dir: Path) -> None:
    outer_seen: list[int] = []
    for fold in range(3):
        fit, inner, outer = _parts(synthetic_dir, fold=fold)
        assert not set(outer) & (set(fit) | set(inner)) and not set(fit) & set(inner)
        assert len(inner) == 8  # 1 whole subject of the 4 outside the outer fold
        outer_seen += outer
    assert sorted(outer_seen) == list(range(48))  # each image is in exactly one outer fold


def test_without_split_every_image_is_still_loadable(tmp_path: Path) -> None:
    from datamodules.synth import generate

    generate(tmp_path, subjects=1, per_subject=3, n_test=0, seed=0)  # too few subjects to split
    with pytest.raises(DataError, match="cannot split"):
        _dm(tmp_path, n_folds=2, image_size=64).setup()
    dm = UltrasoundNerveDataModule(tmp_path, DataConfig(image_size=64), split=False)
    dm.setup()
    assert len(dm.outer_indices) == len(dm.inner_indices) == len(dm.fit_indices) == 0
    assert np.concatenate([b["index"].numpy() for b in dm.subset_dataloader(np.arange(3))]).tolist() == [
        0,
        1,
        2,
    ]


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 40), world=st.integers(1, 9))
def test_eval_shares_cover_the_set_once_without_padding(n, world):
    """Each image on exactly one rank (Lightning's sampler repeats images to even out the ranks);
    only a rank that would hold none, with fewer images than ranks, gets one repeat."""
    shares = [list(EvalSampler(n, rank, world)) for rank in range(world)]
    assert all(len(s) == len(EvalSampler(n, r, world)) for r, s in enumerate(shares))
    if n >= world:
        assert sorted(i for s in shares for i in s) == list(range(n))
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
    elif n:
        assert all(len(s) == 1 for s in shares) and {s[0] for s in shares} == set(range(n))
    assert EvalSampler(7, 1, 2).own == [1, 3, 5] and EvalSampler(2, 3, 4).own == [1]

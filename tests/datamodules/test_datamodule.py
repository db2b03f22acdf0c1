"""UltrasoundNerveDataModule on the synthetic dataset: nested splits, batch contract, modes, cleaning."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from datamodules.datamodule import DATA_FIELDS, MEAN, STD, UltrasoundNerveDataModule, singleton_tail
from datamodules.errors import DataError
from datamodules.io import read_tif


@pytest.fixture(scope="module")
def dm(synthetic_dir: Path) -> UltrasoundNerveDataModule:
    module = UltrasoundNerveDataModule(
        synthetic_dir, fold=1, n_folds=3, image_size=64, batch_size=4, eval_batch_size=5
    )
    module.setup("fit")
    return module


def test_split_is_grouped_by_subject_and_covers_everything(dm: UltrasoundNerveDataModule) -> None:
    parts = (dm.train_indices, dm.val_indices, dm.test_indices)
    fit_subj, inner_subj, outer_subj = (set(dm.subjects[p].tolist()) for p in parts)
    assert not fit_subj & inner_subj and not fit_subj & outer_subj and not inner_subj & outer_subj
    # 6 subjects, 3 folds: the outer fold holds 2; the inner set round(0.15 x 4) -> 1 of the other 4.
    assert (len(fit_subj), len(inner_subj), len(outer_subj)) == (3, 1, 2)
    assert [len(p) for p in parts] == [24, 8, 16]
    assert sorted(np.concatenate(parts).tolist()) == list(range(48))
    np.testing.assert_array_equal(dm.test_indices, np.flatnonzero(dm.outer_folds == 1))
    assert dm.positive.tolist() == [bool(m.any()) for m in dm.train_set.masks]
    assert len(dm.stems) == len(dm.train_set) == 48 and dm.stems[0] == "1_1"
    assert dm.dropped_stems == [] and dm.cached_images.shape == (48, 64, 64)
    assert UltrasoundNerveDataModule(".").clean_contradictory is False  # cleaning is opt-in


def test_train_batch_contract(dm: UltrasoundNerveDataModule) -> None:
    batches = list(dm.train_dataloader())
    assert sum(len(b["index"]) for b in batches) == len(dm.train_indices)  # drop_last=False
    b = batches[0]
    assert set(b) == {"image", "mask", "presence", "bbox", "index"}
    assert b["image"].shape == (4, 1, 64, 64) and b["image"].dtype == torch.float32
    assert b["mask"].shape == (4, 1, 64, 64) and b["mask"].dtype == torch.float32
    assert set(b["mask"].unique().tolist()) <= {0.0, 1.0}
    assert b["presence"].shape == (4,) and b["bbox"].shape == (4, 4) and b["index"].dtype == torch.int64
    np.testing.assert_array_equal(b["presence"].numpy(), b["mask"].flatten(1).amax(1).numpy())
    assert set(np.concatenate([x["index"].numpy() for x in batches])) == set(dm.train_indices.tolist())


def test_train_order_is_seeded(dm: UltrasoundNerveDataModule) -> None:
    first = [b["index"].tolist() for b in dm.train_dataloader()]
    again = [b["index"].tolist() for b in dm.train_dataloader()]
    assert first == again and sorted(sum(first, [])) != sum(first, [])  # shuffled, reproducibly


def test_val_batches_and_mask_orig_match_disk(dm: UltrasoundNerveDataModule, synthetic_dir: Path) -> None:
    batches = list(dm.val_dataloader())
    b = batches[0]
    assert set(b) == {"image", "mask", "presence", "bbox", "index", "mask_orig"}
    assert b["mask_orig"].shape == (5, 420, 580) and b["mask_orig"].dtype == torch.uint8
    np.testing.assert_array_equal(np.concatenate([x["index"].numpy() for x in batches]), dm.val_indices)
    for i, g in enumerate(b["index"].tolist()):
        on_disk = read_tif(synthetic_dir / "train" / f"{dm.stems[g]}_mask.tif")
        np.testing.assert_array_equal(b["mask_orig"][i].numpy(), on_disk // 255)
        assert b["presence"][i].item() == float(on_disk.any())
        image = read_tif(synthetic_dir / "train" / f"{dm.stems[g]}.tif")
        # un-augmented input is the cached resize, normalised with the documented constants
        raw = b["image"][i, 0].numpy() * STD + MEAN
        assert abs(raw.mean() * 255 - image.mean()) < 3.0
    tested = np.concatenate([x["index"].numpy() for x in dm.test_dataloader()])
    np.testing.assert_array_equal(tested, dm.test_indices)  # the outer fold, not the selection set


def test_full_and_predict_loaders(dm: UltrasoundNerveDataModule) -> None:
    full = list(dm.full_dataloader())
    assert np.concatenate([b["index"].numpy() for b in full]).tolist() == list(range(48))
    dm.setup("predict")
    pred = list(dm.predict_dataloader())
    assert set(pred[0]) == {"image", "index", "id"} and pred[0]["image"].shape == (5, 1, 64, 64)
    assert pred[0]["id"].tolist() == [1, 2, 3, 4, 5] and pred[0]["index"].tolist() == [0, 1, 2, 3, 4]


def test_pad_mode_holdout_and_no_augment(synthetic_dir: Path) -> None:
    dm = UltrasoundNerveDataModule(
        synthetic_dir,
        holdout_fraction=0.34,
        resize_mode="pad",
        batch_size=2,
        eval_batch_size=2,
        augment=False,
    )
    dm.setup()
    assert dm.input_shape == (448, 608)
    # Hold-out mode: the hold-out (2 of 6 equal-sized subjects is closest to 34%) is the outer set;
    # the inner selection set (1 subject) comes from the other 4.
    assert len(set(dm.subjects[dm.test_indices])) == 2 and len(set(dm.subjects[dm.val_indices])) == 1
    assert len(dm.train_indices) == 24 and np.array_equal(
        dm.test_indices, np.flatnonzero(dm.outer_folds == 0)
    )
    b = next(iter(dm.val_dataloader()))
    assert b["image"].shape == (2, 1, 448, 608) and b["mask"].shape == (2, 1, 448, 608)
    np.testing.assert_array_equal(b["mask"][:, 0, 14:434, 14:594].numpy(), b["mask_orig"].numpy())
    t = next(iter(dm.train_dataloader()))
    g = t["index"][0].item()  # without augmentation the training input is exactly the cache
    torch.testing.assert_close(
        t["image"][0, 0], (torch.from_numpy(dm.cached_images[g]).float() / 255 - MEAN) / STD
    )


def test_worker_processes_give_the_same_batches(dm: UltrasoundNerveDataModule) -> None:
    dm.num_workers = 1
    try:
        b = next(iter(dm.val_dataloader()))
    finally:
        dm.num_workers = 0
    ref = next(iter(dm.val_dataloader()))
    torch.testing.assert_close(b["image"], ref["image"])


def test_cleaning_drops_training_contradictions(synthetic_dir: Path) -> None:
    dm = UltrasoundNerveDataModule(
        synthetic_dir, n_folds=3, image_size=64, clean_contradictory=True, clean_threshold=0.2
    )  # synthetic frames of a subject are all alike
    dm.setup()
    kept = len(dm.train_indices) + len(dm.val_indices) + len(dm.test_indices)
    assert dm.dropped_stems and kept + len(dm.dropped_stems) == 48
    for keep, drop, _ in dm.contradictions:
        assert dm.train_set.masks[keep].any() and not dm.train_set.masks[drop].any()
        assert dm.subjects[keep] == dm.subjects[drop] and drop not in dm.train_indices
    assert not set(dm.dropped_stems) & {
        dm.stems[i] for i in np.concatenate([dm.val_indices, dm.test_indices])
    }


def test_config_fields_and_errors(synthetic_dir: Path, tmp_path: Path) -> None:
    config = {"model": "unet", "lr": 0.1, "fold": 2, "image_size": 96, "aug_elastic": True}
    dm = UltrasoundNerveDataModule.from_config_dict(synthetic_dir, config)
    assert (dm.fold, dm.image_size, dm.aug_flags["elastic"], dm.clean_contradictory) == (2, 96, True, False)
    assert {"clean_contradictory", "split_seed", "inner_fraction"} <= set(DATA_FIELDS)
    assert "model" not in DATA_FIELDS
    with pytest.raises(TypeError):
        UltrasoundNerveDataModule(synthetic_dir, lr=0.1)  # unknown settings are never ignored
    with pytest.raises(ValueError, match="resize_mode"):
        UltrasoundNerveDataModule(synthetic_dir, resize_mode="crop")
    with pytest.raises(DataError, match="cannot split"):
        UltrasoundNerveDataModule(synthetic_dir, n_folds=7).setup()
    with pytest.raises(DataError, match="not found"):
        UltrasoundNerveDataModule(tmp_path / "missing").setup()


def test_singleton_tail_rule() -> None:
    assert singleton_tail(40, 3) and not singleton_tail(40, 4) and not singleton_tail(40, 1)
    # DDP: each rank gets ceil(N / world) samples: 40 / 2 = 20 = 19 + 1 (while 40 = 2 x 19 + 2),
    # and 41 / 2 pads to 21 = 2 x 10 + 1 (not 20, which would divide evenly)
    assert singleton_tail(40, 19, world_size=2) and not singleton_tail(40, 19)
    assert singleton_tail(41, 10, world_size=2) and not singleton_tail(41, 7, world_size=2)


def _per_rank_batch_sizes(loader: DataLoader, world: int) -> list[list[int]]:
    """Batch sizes on each rank, re-batched the way Lightning does under DDP (its DistributedSampler
    keeps drop_last=False and pads by repetition; the DataLoader keeps our drop_last)."""
    sizes = []
    for rank in range(world):
        sampler = DistributedSampler(loader.dataset, num_replicas=world, rank=rank, shuffle=True, seed=0)
        ranked = DataLoader(
            loader.dataset, batch_size=loader.batch_size, sampler=sampler, drop_last=loader.drop_last
        )
        sizes.append([len(b["index"]) for b in ranked])
    return sizes


def test_train_loader_never_ends_in_a_single_sample(synthetic_dir: Path) -> None:
    dm = UltrasoundNerveDataModule(synthetic_dir, n_folds=6, image_size=64, batch_size=31, augment=False)
    dm.setup()
    assert len(dm.train_indices) == 32  # 48 - 8 outer - 8 inner
    assert [len(b["index"]) for b in dm.train_dataloader()] == [31]  # not 31 + 1
    dm.batch_size = 4  # 32 = 8 x 4: nothing to drop, every sample is used
    assert sum(len(b["index"]) for b in dm.train_dataloader()) == 32
    dm.batch_size = 15  # one process: 15 + 15 + 2, kept
    assert _per_rank_batch_sizes(dm.train_dataloader(), 1) == [[15, 15, 2]]
    dm.trainer = SimpleNamespace(world_size=2)  # DDP: 16 per rank = 15 + 1 on each rank
    try:
        assert _per_rank_batch_sizes(dm.train_dataloader(), 2) == [[15], [15]]
    finally:
        dm.trainer = None


def _parts(synthetic_dir: Path, **kwargs) -> list[list[int]]:
    dm = UltrasoundNerveDataModule(synthetic_dir, n_folds=3, image_size=64, **kwargs)
    dm.setup()
    return [p.tolist() for p in (dm.train_indices, dm.val_indices, dm.test_indices)]


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
        UltrasoundNerveDataModule(tmp_path, n_folds=2, image_size=64).setup()
    dm = UltrasoundNerveDataModule(tmp_path, image_size=64, split=False)
    dm.setup()
    assert len(dm.test_indices) == len(dm.val_indices) == len(dm.train_indices) == 0
    assert np.concatenate([b["index"].numpy() for b in dm.full_dataloader()]).tolist() == [0, 1, 2]

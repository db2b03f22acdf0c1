"""UltrasoundNerveDataModule on the synthetic dataset: splits, batch contract, modes, cleaning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.datamodule import DATA_FIELDS, MEAN, STD, UltrasoundNerveDataModule
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
    train_subj, val_subj = set(dm.subjects[dm.train_indices]), set(dm.subjects[dm.val_indices])
    assert train_subj and val_subj and not train_subj & val_subj
    assert sorted(np.concatenate([dm.train_indices, dm.val_indices])) == list(range(48))
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
    assert [x["index"].tolist() for x in dm.test_dataloader()] == [x["index"].tolist() for x in batches]


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
    assert len(set(dm.subjects[dm.val_indices])) == 2  # 2 of 6 equal-sized subjects is closest to 34%
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
    assert dm.dropped_stems and len(dm.train_indices) + len(dm.dropped_stems) + len(dm.val_indices) == 48
    for keep, drop, _ in dm.contradictions:
        assert dm.train_set.masks[keep].any() and not dm.train_set.masks[drop].any()
        assert dm.subjects[keep] == dm.subjects[drop] and drop not in dm.train_indices
    assert not set(dm.dropped_stems) & {dm.stems[i] for i in dm.val_indices}


def test_config_fields_and_errors(synthetic_dir: Path, tmp_path: Path) -> None:
    config = {"model": "unet", "lr": 0.1, "fold": 2, "image_size": 96, "aug_elastic": True}
    dm = UltrasoundNerveDataModule.from_config_dict(synthetic_dir, config)
    assert (dm.fold, dm.image_size, dm.aug_flags["elastic"], dm.clean_contradictory) == (2, 96, True, False)
    assert "clean_contradictory" in DATA_FIELDS and "model" not in DATA_FIELDS
    with pytest.raises(TypeError):
        UltrasoundNerveDataModule(synthetic_dir, lr=0.1)  # unknown settings are never ignored
    with pytest.raises(ValueError, match="resize_mode"):
        UltrasoundNerveDataModule(synthetic_dir, resize_mode="crop")
    with pytest.raises(DataError, match="cannot split"):
        UltrasoundNerveDataModule(synthetic_dir, n_folds=7).setup()
    with pytest.raises(DataError, match="not found"):
        UltrasoundNerveDataModule(tmp_path / "missing").setup()

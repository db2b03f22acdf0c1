"""``UltrasoundNerveDataModule``: the Kaggle layout as subject-grouped Lightning dataloaders.

``setup`` reads the training set once (``datamodules.kaggle.load_train``; its DataErrors
propagate), maps every frame and mask to network size once into a uint8 cache (created before
workers fork, so workers share it copy-on-write) and splits by subject (``datamodules.splits``).
Batches follow the contract table in docs/architecture.md. Inputs are normalised as
``(x / 255 - MEAN) / STD`` with dataset-level constants, so every model sees the same scale.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import albumentations as A
import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from datamodules import geometry
from datamodules.augment import ResumableDataLoader, ResumableTrainLoader, build_train_transform
from datamodules.cleaning import DEFAULT_THRESHOLD, find_contradictions
from datamodules.errors import DataError
from datamodules.kaggle import TrainSet, load_train, scan_test
from datamodules.rle import KAGGLE_SHAPE
from datamodules.splits import fold_indices, holdout_by_subject, inner_split, kfold_by_subject
from datamodules.targets import bbox, presence
from datamodules.validate import read_image

log = logging.getLogger(__name__)

# Mean and std of x/255 over the 26 real Kaggle training frames in ../shared (0.368, 0.230);
# fixed constants rather than per-split statistics, so runs and folds normalise identically.
MEAN, STD = 0.37, 0.23

# TrainConfig fields this DataModule takes (same names), for ``from_config_dict``.
DATA_FIELDS = (
    "fold",
    "n_folds",
    "seed",
    "split_seed",
    "inner_fraction",
    "holdout_fraction",
    "image_size",
    "resize_mode",
    "batch_size",
    "eval_batch_size",
    "num_workers",
    "augment",
    "aug_flip",
    "aug_affine",
    "aug_elastic",
    "aug_brightness",
    "aug_noise",
    "clean_contradictory",
)


def normalise(images: np.ndarray) -> torch.Tensor:
    """uint8 array -> float32 tensor ``(x / 255 - MEAN) / STD``."""
    return (torch.from_numpy(np.ascontiguousarray(images)).float() / 255.0 - MEAN) / STD


class SegDataset(Dataset):
    """Training-set items from the network-size cache; ``index`` is the position in the full set.

    With a ``transform`` the targets come from the augmented mask; without one, ``presence`` and
    ``bbox`` come from the original-resolution truth (a tiny nerve may vanish when resized).
    """

    def __init__(
        self,
        images: np.ndarray,
        masks: np.ndarray,
        indices: np.ndarray,
        targets: tuple[np.ndarray, np.ndarray],
        masks_orig: np.ndarray | None = None,
        transform: A.Compose | None = None,
    ) -> None:
        self.images, self.masks, self.indices = images, masks, np.asarray(indices, np.int64)
        self.presence, self.bbox = targets
        self.masks_orig, self.transform = masks_orig, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        g = int(self.indices[i])
        image, mask = self.images[g], self.masks[g]
        if self.transform is not None:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
            pres, box = presence(mask), bbox(mask)
        else:
            pres, box = self.presence[g], self.bbox[g]
        item = {
            "image": normalise(image)[None],
            "mask": torch.from_numpy(mask[None].astype(np.float32)),
            "presence": torch.tensor(pres, dtype=torch.float32),
            "bbox": torch.from_numpy(np.asarray(box)),
            "index": torch.tensor(g, dtype=torch.int64),
        }
        if self.masks_orig is not None:
            item["mask_orig"] = torch.from_numpy(self.masks_orig[g])
        return item


class PredictDataset(Dataset):
    """Test images read lazily (the Kaggle test set is 5.5k frames; no need to hold it)."""

    def __init__(self, items: list[tuple[int, Path]], mode: str, size: int) -> None:
        self.items, self.mode, self.size = items, mode, size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        test_id, path = self.items[i]
        image = geometry.prepare(read_image(path, KAGGLE_SHAPE), self.mode, self.size)
        return {
            "image": normalise(image)[None],
            "index": torch.tensor(i, dtype=torch.int64),
            "id": torch.tensor(test_id, dtype=torch.int64),
        }


def singleton_tail(n_samples: int, batch_size: int, world_size: int = 1) -> bool:
    """True when each rank's last training batch would hold exactly one sample.

    Training drops that batch (and only that one): BatchNorm after global pooling, as in the
    SK-U-Net squeeze, cannot train on a batch of 1. Under DDP each rank gets ceil(N / world)
    samples (DistributedSampler pads by repetition), so the tail is the same on every rank.
    """
    per_rank = math.ceil(n_samples / max(world_size, 1))
    return batch_size > 1 and per_rank % batch_size == 1


def _seed_worker(worker_id: int) -> None:
    """Give each worker its own augmentation stream, derived from the loader's seeded generator."""
    info = get_worker_info()
    transform = getattr(info.dataset, "transform", None) if info else None
    if transform is not None:
        transform.set_random_seed(torch.initial_seed() % 2**32)


class UltrasoundNerveDataModule(ResumableTrainLoader, pl.LightningDataModule):
    """Nested, subject-grouped loaders over a Kaggle-layout directory.

    The split (all by subject, all drawn with ``split_seed``; ``seed`` only seeds augmentation
    and shuffling, so replicate seeds share one split):

    - ``test_indices``: the outer fold (``fold`` of ``n_folds``, stratified by positive fraction)
      or, with ``holdout_fraction``, one subject-grouped hold-out of about that share. Scored
      once by ``test_dataloader``; never used for any decision.
    - ``val_indices``: the inner selection set, about ``inner_fraction`` of the remaining
      subjects (at least one). ``val_dataloader``: epoch selection and post-processing tuning.
    - ``train_indices``: the rest, the images the weights are fitted on.

    Arguments are named like the ``TrainConfig`` fields (see ``DATA_FIELDS``); ``split=False``
    skips the split (scoring a whole directory). After ``setup``: ``train_set`` (kaggle.TrainSet),
    ``stems``, ``subjects``, ``positive`` (per-frame bool: the mask has a nerve), ``outer_folds``
    (outer fold id per frame; in hold-out mode 0 = hold-out, 1 = rest), the three index arrays,
    ``cached_images`` / ``cached_masks`` (uint8 (N, h, w) at network size, for the GPU cache),
    ``dropped_stems`` (fit frames removed by contradictory-label cleaning).
    """

    def __init__(
        self,
        data_dir: str | Path,
        fold: int = 0,
        n_folds: int = 5,
        seed: int = 0,
        split_seed: int = 0,
        inner_fraction: float = 0.15,
        holdout_fraction: float | None = None,
        image_size: int = 256,
        resize_mode: str = "resize",
        batch_size: int = 16,
        eval_batch_size: int = 64,
        num_workers: int = 0,
        augment: bool = True,
        aug_flip: bool = True,
        aug_affine: bool = True,
        aug_elastic: bool = False,
        aug_brightness: bool = True,
        aug_noise: bool = True,
        clean_contradictory: bool = False,
        clean_threshold: float = DEFAULT_THRESHOLD,
        split: bool = True,
        preloaded: TrainSet | None = None,
    ) -> None:
        super().__init__()
        if resize_mode not in geometry.MODES:
            raise ValueError(f"resize_mode={resize_mode!r} is not one of {', '.join(geometry.MODES)}")
        if image_size < 32 or batch_size < 1 or eval_batch_size < 1 or num_workers < 0:
            raise ValueError("need image_size >= 32, batch_size >= 1, eval_batch_size >= 1, num_workers >= 0")
        self.data_dir = Path(data_dir)
        self.fold, self.n_folds, self.seed, self.holdout_fraction = fold, n_folds, seed, holdout_fraction
        self.split_seed, self.inner_fraction, self.with_split = split_seed, inner_fraction, split
        self.image_size, self.resize_mode = image_size, resize_mode
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.augment = augment
        self.aug_flags = {
            "flip": aug_flip,
            "affine": aug_affine,
            "elastic": aug_elastic,
            "brightness": aug_brightness,
            "noise": aug_noise,
        }
        self.clean_contradictory, self.clean_threshold = clean_contradictory, clean_threshold
        self.train_set: TrainSet | None = None
        # An already-decoded training set used instead of reading data_dir (the Ray executor shares
        # one read-only copy per node through its object store); never written to.
        self.preloaded = preloaded
        self.stems: list[str] = []
        self.subjects = np.zeros(0, np.int64)
        self.positive = np.zeros(0, bool)
        self.outer_folds = np.zeros(0, np.int64)
        self.train_indices = self.val_indices = self.test_indices = np.zeros(0, np.int64)
        self.dropped_stems: list[str] = []
        self.contradictions: list[tuple[int, int, float]] = []

    @classmethod
    def from_config_dict(
        cls, data_dir: str | Path, config: Mapping[str, Any], **extra: Any
    ) -> UltrasoundNerveDataModule:
        """Build from ``TrainConfig.to_dict()``: takes the ``DATA_FIELDS`` keys (the rest are model/optim);
        ``extra`` are further constructor arguments (e.g. ``split=False``)."""
        return cls(data_dir, **{k: config[k] for k in DATA_FIELDS if k in config}, **extra)

    @property
    def input_shape(self) -> tuple[int, int]:
        return geometry.input_shape(self.resize_mode, self.image_size)

    def setup(self, stage: str | None = None) -> None:
        """Load, cache and split the training set once (a no-op for ``predict`` and on repeat calls)."""
        if stage == "predict" or self.train_set is not None:
            return
        ts = self.preloaded if self.preloaded is not None else load_train(self.data_dir)
        self.stems, self.subjects = ts.stems, ts.subjects
        self.positive = ts.masks.reshape(len(ts), -1).any(axis=1)
        if self.with_split:
            self.train_indices, self.val_indices, self.test_indices = self._split(
                self.subjects, self.positive
            )
        if self.clean_contradictory:
            self._clean(ts)
        mode, size = self.resize_mode, self.image_size
        self.cached_images = np.stack([geometry.prepare(im, mode, size) for im in ts.images])
        self.cached_masks = np.stack([geometry.prepare(m, mode, size, is_mask=True) for m in ts.masks])
        self._targets = (
            np.array([presence(m) for m in ts.masks], np.float32),
            np.stack([bbox(m) for m in ts.masks]),
        )
        self.train_set = ts

    def _split(self, subjects: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(fit, inner, outer) indices, each sorted; only ``split_seed`` draws them."""
        try:
            if self.holdout_fraction is not None:
                rest, outer = holdout_by_subject(subjects, self.holdout_fraction, self.split_seed)
                self.outer_folds = np.ones(len(subjects), np.int64)
                self.outer_folds[outer] = 0
            else:
                rest, outer = fold_indices(
                    subjects, self.fold, self.n_folds, self.split_seed, positive=positive
                )
                self.outer_folds = kfold_by_subject(
                    subjects, self.n_folds, self.split_seed, positive=positive
                )
            fit_pos, inner_pos = inner_split(
                subjects[rest], positive[rest], self.inner_fraction, self.split_seed
            )
        except ValueError as exc:  # e.g. more folds than subjects: a data problem for the user
            raise DataError(self.data_dir, f"cannot split by subject: {exc}") from None
        return np.sort(rest[fit_pos]), np.sort(rest[inner_pos]), np.sort(outer)

    def _clean(self, ts: TrainSet) -> None:
        """Drop the empty member of contradictory near-duplicate pairs from the fit part only.

        The selection and outer sets are never cleaned, so scores stay comparable between cleaned
        and raw runs.
        """
        idx = self.train_indices
        found = find_contradictions(ts.images[idx], ts.masks[idx], self.subjects[idx], self.clean_threshold)
        self.contradictions = [(int(idx[k]), int(idx[d]), dist) for k, d, dist in found]
        drop = {d for _, d, _ in self.contradictions}
        self.train_indices = np.array([i for i in idx if i not in drop], np.int64)
        self.dropped_stems = [ts.stems[d] for _, d, _ in self.contradictions]
        log.warning(
            "clean_contradictory: dropped %d empty-mask training frames that near-duplicate a "
            "labelled frame: %s",
            len(drop),
            ", ".join(self.dropped_stems) or "none",
        )

    def _require_setup(self) -> None:
        if self.train_set is None:
            self.setup()

    def _dataset(self, indices: np.ndarray, train: bool) -> SegDataset:
        transform = None
        if train and self.augment:
            transform = build_train_transform(**self.aug_flags, seed=self.seed)
        masks_orig = None if train else self.train_set.masks
        return SegDataset(
            self.cached_images, self.cached_masks, indices, self._targets, masks_orig, transform
        )

    def _loader(
        self, dataset: Dataset, batch_size: int, shuffle: bool, drop_last: bool = False
    ) -> DataLoader:
        workers = self.num_workers
        return ResumableDataLoader(  # checkpointable shuffle + augmentation streams (exact resume)
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
            worker_init_fn=_seed_worker,
            generator=torch.Generator().manual_seed(self.seed),
        )

    @property
    def world_size(self) -> int:
        """Processes sharing the training set: the attached Trainer's world size, else 1."""
        return self.trainer.world_size if self.trainer is not None else 1

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches; never ends in a batch of 1 (see :func:`singleton_tail`)."""
        self._require_setup()
        dataset = self._dataset(self.train_indices, train=True)
        drop = singleton_tail(len(dataset), self.batch_size, self.world_size)
        # resumable: a resumed run's loader continues the checkpointed shuffle/augmentation streams
        return self.resumable(self._loader(dataset, self.batch_size, shuffle=True, drop_last=drop))

    def val_dataloader(self) -> DataLoader:
        """The inner selection set: what epoch selection and post-processing tuning see."""
        self._require_setup()
        return self.subset_dataloader(self.val_indices)

    def test_dataloader(self) -> DataLoader:
        """The outer fold: scored once, for the reported numbers."""
        self._require_setup()
        return self.subset_dataloader(self.test_indices)

    def full_dataloader(self) -> DataLoader:
        """Every training frame (including any dropped by cleaning), un-augmented, with ``mask_orig``."""
        self._require_setup()
        return self.subset_dataloader(np.arange(len(self.train_set), dtype=np.int64))

    def subset_dataloader(self, indices: np.ndarray) -> DataLoader:
        """Un-augmented, in-order batches (with ``mask_orig``) of the given training-set indices."""
        self._require_setup()
        dataset = self._dataset(np.asarray(indices, np.int64), train=False)
        return self._loader(dataset, self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """test/ in numeric id order; batches hold ``image``, ``index`` and ``id``."""
        dataset = PredictDataset(scan_test(self.data_dir), self.resize_mode, self.image_size)
        return self._loader(dataset, self.eval_batch_size, shuffle=False)

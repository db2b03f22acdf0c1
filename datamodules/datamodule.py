"""``UltrasoundNerveDataModule``: the Kaggle layout as subject-grouped Lightning dataloaders.

``setup`` reads the training set once (``datamodules.kaggle.load_train``; its DataErrors
propagate), maps every frame and mask to network size once into a uint8 cache (created before
workers fork, so workers share it copy-on-write) and splits by subject (``datamodules.splits``).
Batches follow the contract table in docs/architecture.md. Inputs are normalised as
``(x / 255 - MEAN) / STD`` with dataset-level constants, so every model sees the same scale.

Training batches follow :mod:`datamodules.stream`: full global batches of ``batch_size`` samples,
each process loading its equal slice (:class:`datamodules.samplers.TrainSampler`), every sample
augmented from its own (seed, epoch, index) key, so the recipe is the same on any number of
devices and a resumed run needs only its epoch.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import albumentations as A
import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules import geometry, stream
from datamodules.augment import augment_sample, build_train_transform
from datamodules.cleaning import DEFAULT_THRESHOLD, find_contradictions
from datamodules.data_config import DataConfig
from datamodules.decoded_cache import load_train_shared
from datamodules.errors import DataError
from datamodules.fingerprints import counted_once, describe, unlinked
from datamodules.kaggle import TrainSet
from datamodules.samplers import EvalSampler, TrainSampler
from datamodules.splits import split_for
from datamodules.targets import bbox, presence

log = logging.getLogger(__name__)

# Mean and std of x/255 over the 26 real Kaggle training frames in ../shared (0.368, 0.230);
# fixed constants rather than per-split statistics, so runs and folds normalise identically.
MEAN, STD = 0.37, 0.23


def normalise(images: np.ndarray) -> torch.Tensor:
    """uint8 array -> float32 tensor ``(x / 255 - MEAN) / STD``."""
    return (torch.from_numpy(np.ascontiguousarray(images)).float() / 255.0 - MEAN) / STD


class SegDataset(Dataset):
    """Training-set items from the network-size cache; ``index`` is the position in the full set.

    Items are looked up by position into ``indices``; a training sampler passes ``(position,
    epoch)``, and with a ``transform`` the sample is augmented from its (seed, epoch, index) key,
    its targets recomputed from the augmented mask. Without one, ``presence`` and ``bbox`` come
    from the original-resolution truth (a tiny nerve may vanish when resized).
    """

    def __init__(
        self,
        images: np.ndarray,
        masks: np.ndarray,
        indices: np.ndarray,
        targets: tuple[np.ndarray, np.ndarray],
        masks_orig: np.ndarray | None = None,
        transform: A.Compose | None = None,
        seed: int = 0,
    ) -> None:
        self.images, self.masks, self.indices = images, masks, np.asarray(indices, np.int64)
        self.presence, self.bbox = targets
        self.masks_orig, self.transform, self.seed = masks_orig, transform, seed

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        pos, epoch = item if isinstance(item, tuple) else (item, 0)
        g = int(self.indices[pos])
        image, mask = self.images[g], self.masks[g]
        if self.transform is not None:
            key = int(stream.sample_keys(self.seed, epoch, np.asarray([g]))[0])
            image, mask = augment_sample(self.transform, image, mask, key)
            pres, box = presence(mask), bbox(mask)
        else:
            pres, box = self.presence[g], self.bbox[g]
        out = {
            "image": normalise(image)[None],
            "mask": torch.from_numpy(mask[None].astype(np.float32)),
            "presence": torch.tensor(pres, dtype=torch.float32),
            "bbox": torch.from_numpy(np.asarray(box)),
            "index": torch.tensor(g, dtype=torch.int64),
        }
        if self.masks_orig is not None:
            # A copy: the decoded cache is a read-only memory map shared by every process.
            out["mask_orig"] = torch.from_numpy(np.array(self.masks_orig[g]))
        return out


class UltrasoundNerveDataModule(pl.LightningDataModule):
    """Nested, subject-grouped loaders over a Kaggle-layout directory, configured by a :class:`DataConfig`.

    The split (all by subject, all drawn with ``split_seed``; ``seed`` only seeds augmentation
    and the order of training samples, so replicate seeds share one split):

    - ``outer_indices``: the outer fold (``fold`` of ``n_folds``, stratified by positive fraction)
      or, with ``holdout_fraction``, one subject-grouped hold-out of about that share. Scored
      once by ``outer_dataloader``; never used for any decision.
    - ``inner_indices``: the inner selection set, about ``inner_fraction`` of the remaining
      subjects (at least one). ``inner_dataloader`` (Lightning's validation loader): epoch
      selection and post-processing tuning.
    - ``fit_indices``: the rest, the images the weights are fitted on (``train_dataloader``).

    ``split=False`` skips the split (scoring a whole directory). After ``setup``: ``train_set``
    (kaggle.TrainSet), ``stems``, ``subjects``, ``units`` and ``links`` (subjects that share frames
    are one unit, ``link_subjects``), ``positive`` (per-frame bool: the mask has a nerve),
    ``outer_folds`` (outer fold id per frame; in hold-out mode 0 = hold-out, 1 = rest), the three
    index arrays, ``cached_images`` / ``cached_masks`` (uint8 (N, h, w) at network
    size, for the GPU cache), ``dropped_stems`` (fit frames removed by contradictory-label cleaning).
    """

    def __init__(
        self,
        data_dir: str | Path,
        config: DataConfig | None = None,
        split: bool = True,
        preloaded: TrainSet | None = None,
        clean_threshold: float = DEFAULT_THRESHOLD,
    ) -> None:
        super().__init__()
        self.data_dir = Path(data_dir)
        self.config = config or DataConfig()
        self.with_split, self.clean_threshold = split, clean_threshold
        self.train_set: TrainSet | None = None
        # An already-decoded training set used instead of reading data_dir (shared by the runner,
        # the Ray executor and DDP ranks, possibly read-only memory-mapped); never written to.
        self.preloaded = preloaded
        self.stems: list[str] = []
        self.subjects = np.zeros(0, np.int64)
        # Per frame, what the split keeps together and a CI resamples: the subject, or its linked
        # unit when subjects share frames (link_subjects); links: the data's linked subjects (a, b,
        # matching frames of a, of b), recorded whether or not the split links them.
        self.units = np.zeros(0, np.int64)
        self.links: list[tuple[int, int, int, int]] = []
        self.positive = np.zeros(0, bool)
        self.outer_folds = np.zeros(0, np.int64)
        self.fit_indices = self.inner_indices = self.outer_indices = np.zeros(0, np.int64)
        self.dropped_stems: list[str] = []
        self.contradictions: list[tuple[int, int, float]] = []

    @classmethod
    def from_config_dict(
        cls, data_dir: str | Path, config: Mapping[str, Any], **extra: Any
    ) -> UltrasoundNerveDataModule:
        """From ``TrainConfig.to_dict()`` (through :meth:`DataConfig.from_mapping`); ``extra`` are
        further constructor arguments (e.g. ``split=False``, ``preloaded=``)."""
        return cls(data_dir, DataConfig.from_mapping(config), **extra)

    @property
    def input_shape(self) -> tuple[int, int]:
        return geometry.input_shape(self.config.resize_mode, self.config.image_size)

    @property
    def decoded(self) -> TrainSet:
        """The decoded training set; only after ``setup``."""
        if self.train_set is None:
            raise RuntimeError("the DataModule is not set up: no decoded training set yet")
        return self.train_set

    def setup(self, stage: str | None = None) -> None:
        """Load, cache and split the training set once (a no-op on repeat calls)."""
        if self.train_set is not None:
            return
        # Decoded once per node and data version, memory-mapped by every run and DDP rank after that.
        ts = self.preloaded if self.preloaded is not None else load_train_shared(self.data_dir)
        self.stems, self.subjects = ts.stems, ts.subjects
        self.positive = ts.positive
        if self.with_split:
            self.units, self.links = ts.units(self.config.link_subjects)
            self._log_links()
            self.fit_indices, self.inner_indices, self.outer_indices = self._split(self.units, self.positive)
        if self.config.clean_contradictory:
            self._clean(ts)
        mode, size = self.config.resize_mode, self.config.image_size
        self.cached_images = np.stack([geometry.prepare(im, mode, size) for im in ts.images])
        self.cached_masks = np.stack([geometry.prepare(m, mode, size, is_mask=True) for m in ts.masks])
        self._targets = (
            np.array([presence(m) for m in ts.masks], np.float32),
            np.stack([bbox(m) for m in ts.masks]),
        )
        self.train_set = ts

    def _split(self, subjects: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(fit, inner, outer) indices, each sorted; only ``split_seed`` draws them."""
        cfg = self.config
        try:
            fit, inner, outer, self.outer_folds = split_for(cfg, subjects, positive)
        except ValueError as exc:  # e.g. more folds than subjects: a data problem for the user
            links = self.links if self.config.link_subjects else []
            raise DataError(self.data_dir, f"cannot split by subject: {exc}{counted_once(links)}") from None
        return fit, inner, outer

    def _log_links(self) -> None:
        for link in self.links:
            if self.config.link_subjects:
                log.info("link_subjects: %s: one unit in the split and the CIs", describe(link))
            else:
                log.warning("%s", unlinked(link))

    def _clean(self, ts: TrainSet) -> None:
        """Drop the empty member of contradictory near-duplicate pairs from the fit part only.

        The selection and outer sets are never cleaned, so scores stay comparable between cleaned
        and raw runs.
        """
        idx = self.fit_indices
        # Compared within a unit: a contradictory copy may sit under the other number of a linked pair.
        found = find_contradictions(ts.images[idx], ts.masks[idx], self.units[idx], self.clean_threshold)
        self.contradictions = [(int(idx[k]), int(idx[d]), dist) for k, d, dist in found]
        drop = {d for _, d, _ in self.contradictions}
        self.fit_indices = np.array([i for i in idx if i not in drop], np.int64)
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
        aug = self.config.augment
        transform = build_train_transform(aug) if train and aug.active() else None
        masks_orig = None if train else self.train_set.masks
        return SegDataset(
            self.cached_images,
            self.cached_masks,
            indices,
            self._targets,
            masks_orig,
            transform,
            self.config.seed,
        )

    def _rank_world(self) -> tuple[int, int]:
        """(global rank, world size) of the attached Trainer's processes, else (0, 1)."""
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_sampler(self) -> TrainSampler:
        """This process's share of the run's global batches (see :mod:`datamodules.stream`)."""
        self._require_setup()
        rank, world = self._rank_world()
        self.config.per_rank_batch(world)  # refuses a global batch the world size does not divide
        n, batch = len(self.fit_indices), self.config.batch_size
        if n < batch:
            raise DataError(
                self.data_dir,
                f"the fit part has {n} images, fewer than one global batch (batch_size={batch})",
            )
        sampler = TrainSampler(n, batch, self.config.seed, rank, world)
        sampler.set_epoch(self._fit_epoch())
        return sampler

    def _fit_epoch(self) -> int:
        """The epoch a fit starts at: 0, or the resumed one. Lightning creates the loader's iterator
        before it sets the sampler's epoch, and on a resume it does not create it again: loader
        workers would already hold epoch 0's order (``FitLoop.setup_data``, Lightning 2.6)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0
        return int(trainer.fit_loop.epoch_progress.current.processed)

    def train_dataloader(self) -> DataLoader:
        """Augmented training batches of ``batch_size / world_size`` samples (full global batches only)."""
        sampler = self.train_sampler()
        workers = self.config.loader_workers()
        return DataLoader(
            self._dataset(self.fit_indices, train=True),
            batch_size=sampler.per_rank,
            sampler=sampler,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
            generator=self._own_generator(),
        )

    def _own_generator(self) -> torch.Generator:
        """A loader's own generator for its workers' base seed. Without one, every iterator it made
        took a draw from torch's global CPU stream, which CPU dropout also draws from: a resumed run
        (its saved stream restored after Lightning made the epoch's iterator) and one with another
        ``num_workers`` (persistent workers make one iterator per run, not one per epoch) trained
        other weights (trans_cg_unet, max |dW| 0.0045 after 2 epochs). Order and augmentation are
        keyed by (seed, epoch, sample) and never read it."""
        return torch.Generator().manual_seed(self.config.seed)

    def val_dataloader(self) -> DataLoader:
        """Lightning's validation loader is the inner selection set (epoch selection, tuning);
        under DDP each process takes its unpadded share (:class:`datamodules.samplers.EvalSampler`)."""
        self._require_setup()
        rank, world = self._rank_world()
        if world == 1:
            return self.inner_dataloader()
        return self.subset_dataloader(self.inner_indices, EvalSampler(len(self.inner_indices), rank, world))

    def inner_dataloader(self) -> DataLoader:
        """The inner selection set: what epoch selection and post-processing tuning see."""
        self._require_setup()
        return self.subset_dataloader(self.inner_indices)

    def outer_dataloader(self) -> DataLoader:
        """The outer fold: scored once, for the reported numbers."""
        self._require_setup()
        return self.subset_dataloader(self.outer_indices)

    def subset_dataloader(self, indices: np.ndarray, sampler: EvalSampler | None = None) -> DataLoader:
        """Un-augmented, in-order batches (with ``mask_orig``) of the given training-set indices
        (``sampler``: this process's share of them)."""
        self._require_setup()
        dataset = self._dataset(np.asarray(indices, np.int64), train=False)
        workers = self.config.loader_workers()
        return DataLoader(
            dataset,
            batch_size=self.config.eval_batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
            generator=self._own_generator(),
        )

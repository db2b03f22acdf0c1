"""``TrainConfig.gpu_cache``: the DataModule with its training loader replaced by the GPU fast path.

The inner and outer loaders stay the DataModule's (they need the 420x580 truth); only training
batches come from :class:`datamodules.gpu_augment.GpuBatchIterator`, whose cache lives on the
Trainer's device and which takes the same global batches, the same per-sample augmentation draws
and the same per-rank slices as the CPU loader (:mod:`datamodules.stream`).
"""

from __future__ import annotations

from datamodules.datamodule import UltrasoundNerveDataModule
from datamodules.gpu_augment import GpuBatchIterator, GpuCache


class GpuCachedDataModule(UltrasoundNerveDataModule):
    """Same splits and evaluation loaders; training batches augmented on the device."""

    def train_dataloader(self) -> GpuBatchIterator:  # type: ignore[override]
        sampler = self.train_sampler()
        trainer = self.trainer
        device = trainer.strategy.root_device if trainer is not None else "cpu"
        idx = self.fit_indices
        cache = GpuCache(self.cached_images[idx], self.cached_masks[idx], device=device, indices=idx)
        return GpuBatchIterator(cache, sampler, self.config.augment, seed=self.config.seed)

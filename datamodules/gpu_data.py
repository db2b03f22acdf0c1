"""``TrainConfig.gpu_cache``: the DataModule with its training loader replaced by the GPU fast path.

Validation, test and full-set loaders stay the DataModule's (they need the 420x580 truth); only
training batches come from :class:`datamodules.gpu_augment.GpuBatchIterator`, whose cache lives
on the Trainer's device and which takes its own strided share of every epoch under DDP.
"""

from __future__ import annotations

from datamodules.datamodule import UltrasoundNerveDataModule
from datamodules.gpu_augment import GpuBatchIterator, GpuCache


class GpuCachedDataModule(UltrasoundNerveDataModule):
    """Same splits and evaluation loaders; training batches augmented on the device."""

    def train_dataloader(self) -> GpuBatchIterator:
        self._require_setup()
        trainer = self.trainer
        device = trainer.strategy.root_device if trainer is not None else "cpu"
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        idx = self.train_indices
        cache = GpuCache(self.cached_images[idx], self.cached_masks[idx], device=device, indices=idx)
        flags = self.aug_flags
        loader = GpuBatchIterator(
            cache, self.batch_size, seed=self.seed, augment=self.augment, flip=flags["flip"],
            affine=flags["affine"], intensity=flags["brightness"], noise=flags["noise"],
            rank=rank, world_size=world,
        )  # fmt: skip
        # A resumed run continues the stream from the checkpointed epoch (at this point of a resume
        # Lightning's current_epoch still reads the last finished epoch's number).
        return self.resumable(loader)

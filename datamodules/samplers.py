"""The training sampler: this process's share of :mod:`datamodules.stream`'s global batches.

A ``DistributedSampler`` subclass on purpose: Lightning wraps or replaces any other sampler under
DDP (its own DistributedSampler shuffles with a fixed seed and pads by repetition), while a
DistributedSampler is left alone; and Lightning calls ``set_epoch`` on it before every epoch,
including the first epoch of a resumed run, which is all the state the stream has.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import DistributedSampler

from datamodules import stream


class TrainSampler(DistributedSampler):
    """Yields ``(position, epoch)`` for ``rank``'s slice of every full global batch of the epoch.

    ``position`` indexes the fit part (a dataset's ``indices``); the dataset derives the sample's
    augmentation key from (seed, epoch, data-set index). Step ``s`` of all ranks together is exactly
    global batch ``s`` of a one-process run.
    """

    def __init__(self, n: int, global_batch: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        # DistributedSampler's own fields are set for Lightning's checks; the order is ours.
        super().__init__(
            range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.n, self.global_batch, self.stream_seed = int(n), int(global_batch), int(seed)
        self.per_rank = self.global_batch // world_size
        self.steps = stream.steps_per_epoch(self.n, self.global_batch)

    def __len__(self) -> int:
        return self.steps * self.per_rank

    def positions(self) -> np.ndarray:
        """This rank's positions of the current epoch (``steps * per_rank``, step after step)."""
        return stream.rank_positions(
            self.n, self.global_batch, self.stream_seed, self.epoch, self.rank, self.num_replicas
        )

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = int(self.epoch)
        return iter([(int(p), epoch) for p in self.positions()])


class EvalSampler(DistributedSampler):
    """This rank's strided share ``rank, rank + world, ...`` of an evaluation set, unpadded.

    Lightning's own DistributedSampler pads the ranks to equal length by repeating images: the
    scores drop repeats by index (``KaggleScores``), but a loss mean would count them, so the
    validation loss would depend on the number of processes. Ranks may therefore hold one image
    more than others. Only a rank that would hold none (fewer images than processes) gets one
    repeat: every rank must run a forward pass, the first of which broadcasts DDP's buffers.
    """

    def __init__(self, n: int, rank: int = 0, world_size: int = 1) -> None:
        super().__init__(range(n), num_replicas=world_size, rank=rank, shuffle=False, drop_last=False)
        own = list(range(rank, n, world_size))
        self.own = own if own or n == 0 else [rank % n]

    def __len__(self) -> int:
        return len(self.own)

    def __iter__(self) -> Iterator[int]:
        return iter(self.own)

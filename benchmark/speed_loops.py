"""The two bare training loops ``speed`` sets beside the suite's own: (b) ``plain``, a standard fp32
loop whose DataLoader decodes and augments every sample, and (c) ``ceiling``, device-resident
batches with no augmentation in the suite's precision and memory format.

Both are clocked by :func:`timed_loop`: the device is synchronised once after the warm-up steps and
once after the last timed step, never in between, as the suite's own timer does."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.training.device import autocast, synchronize

if TYPE_CHECKING:
    from benchmark.speed import SpeedSettings
    from datamodules.gpu_augment import GpuCache


def rate(images: int, seconds: float) -> float:
    return images / max(seconds, 1e-9)


def workers(s: SpeedSettings, dev: torch.device) -> int:
    return s.workers if s.workers is not None else (8 if dev.type == "cuda" else 0)


class TifDataset(torch.utils.data.Dataset):
    """The plain way: decode the tif pair, resize and augment (albumentations) on every access."""

    def __init__(self, data_dir: Path, size: int) -> None:
        from datamodules.augment import build_train_transform
        from datamodules.data_config import AugmentConfig
        from datamodules.kaggle import scan_train

        self.records, self.size = scan_train(data_dir), size
        self.transform = build_train_transform(AugmentConfig())  # called unseeded: the plain way

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        from datamodules import geometry, rle
        from datamodules.datamodule import normalise
        from datamodules.io import read_tif

        rec = self.records[i]
        mask = read_tif(rec.mask_path) if rec.mask_path is not None else rle.decode(rec.rle or "")
        image = geometry.prepare(read_tif(rec.image_path), "resize", self.size)
        mask = geometry.prepare((mask > 0).astype(np.uint8), "resize", self.size, is_mask=True)
        out = self.transform(image=image, mask=mask)
        x = normalise(out["image"][None])
        return x, torch.from_numpy(out["mask"]).float()[None]


# -- (b) plain loop and (c) ceiling ------------------------------------------------------------------
def _seg_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice on the mask logits: the standard recipe both bare loops use."""
    logits = logits["mask"] if isinstance(logits, dict) else logits
    logits = logits.float()
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum((1, 2, 3))
    dice = 1 - (2 * inter + 1) / (prob.sum((1, 2, 3)) + target.sum((1, 2, 3)) + 1)
    return F.binary_cross_entropy_with_logits(logits, target) + dice.mean()


def timed_loop(
    step: Callable[[Any], int], batches: Iterator[Any], warmup: int, steps: int, dev: torch.device
) -> float:
    """img/s over ``steps`` calls of ``step(batch)`` (returns the batch size) after ``warmup`` calls."""
    for batch in itertools.islice(batches, warmup):
        step(batch)
    synchronize(dev)
    start, images = time.perf_counter(), 0
    for batch in itertools.islice(batches, steps):
        images += step(batch)
    synchronize(dev)
    return rate(images, time.perf_counter() - start)


def _cycle(make_epoch: Callable[[int], Iterable]) -> Iterator:
    """Endless batches, one fresh epoch iterator after another."""
    for epoch in itertools.count():
        yield from make_epoch(epoch)


def _train_step(
    net: torch.nn.Module, opt: torch.optim.Optimizer, dev: torch.device, precision: str, channels_last: bool
) -> Callable[[tuple], int]:
    def step(batch: tuple) -> int:
        x, y = (t.to(dev, non_blocking=True) for t in batch)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(dev, precision):
            loss = _seg_loss(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return int(x.shape[0])

    return step


def fresh_model(
    name: str, dev: torch.device, channels_last: bool, kwargs: dict | None = None
) -> torch.nn.Module:
    from models import create

    torch.manual_seed(0)
    model = create(name, in_channels=1, **(kwargs or {})).to(dev).train()
    return model.to(memory_format=torch.channels_last) if channels_last else model


def plain_train_img_s(model: str, data_dir: Path, s: SpeedSettings, dev: torch.device) -> float:
    """(b) img/s of a plain fp32 loop whose DataLoader decodes and augments every sample."""
    dataset, n = TifDataset(data_dir, s.image_size), workers(s, dev)
    prefetch = 2 if n > 0 else None  # the DataLoader's default
    # The workers decode prefetch x n batches ahead from the start (16 on a GPU): a timed window
    # that began on those would count work done before the clock, so none is timed.
    warmup = max(s.warmup, (prefetch or 0) * n + 1)
    # One epoch holds every batch drawn: at a new epoch the workers get their indices only then and
    # each builds a whole batch before the first arrives, a stall no timed window may cross.
    sampler = torch.utils.data.RandomSampler(dataset, num_samples=(warmup + s.steps) * s.batch_size)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=s.batch_size,
        sampler=sampler,
        num_workers=n,
        prefetch_factor=prefetch,
        pin_memory=dev.type == "cuda",
        persistent_workers=n > 0,
    )
    net = fresh_model(model, dev, channels_last=False, kwargs=s.model_kwargs.get(model))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    step = _train_step(net, opt, dev, "32", channels_last=False)
    return timed_loop(step, _cycle(lambda _: loader), warmup, s.steps, dev)


def ceiling_train_img_s(model: str, cache: GpuCache, s: SpeedSettings, dev: torch.device) -> float:
    """(c) img/s on device-resident batches with no augmentation, in the suite's precision."""
    from benchmark.training.device import resolve_precision
    from datamodules.gpu_augment import normalise

    cuda = dev.type == "cuda"
    precision = resolve_precision("auto", "gpu" if cuda else "cpu")
    net = fresh_model(model, dev, channels_last=cuda, kwargs=s.model_kwargs.get(model))
    net = torch.compile(net) if s.compile else net
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    step = _train_step(net, opt, dev, precision, channels_last=cuda)

    def epoch(i: int) -> Iterator[tuple]:
        for pos in cache.batches(s.batch_size, cache.generator(i), drop_last=len(cache) >= s.batch_size):
            yield normalise(cache.images[pos].float()), cache.masks[pos].float()

    return timed_loop(step, _cycle(epoch), s.warmup, s.steps, dev)

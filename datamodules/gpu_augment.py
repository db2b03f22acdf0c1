"""GPU fast path: the training set cached as uint8 device tensors, augmented with plain torch ops.

Decoding tifs and running albumentations on CPU workers caps throughput long before a GPU is
busy (the Kaggle set is ~5.6k frames; at 256x256 it is ~370 MB as uint8, so it fits on any
training GPU). With ``TrainConfig.gpu_cache`` the suite keeps the network-size images and masks
on the device and augments whole batches there. Everything here is device-agnostic and runs
(slowly) on CPU, which is how it is tested.

API (``datamodules.gpu_data.GpuCachedDataModule`` wires it in for ``fit``)::

    cache = GpuCache(images, masks, device="cuda", indices=train_idx)  # uint8 (N,h,w), {0,1} masks
    loader = GpuBatchIterator(cache, batch_size=16, seed=cfg.seed, flip=cfg.aug_flip,
                              affine=cfg.aug_affine, intensity=cfg.aug_brightness,
                              noise=cfg.aug_noise, augment=cfg.augment,
                              rank=trainer.global_rank, world_size=trainer.world_size)
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=dm.val_dataloader())

``GpuBatchIterator`` is a plain re-iterable with ``__len__`` (Lightning 2 accepts any such
iterable as a train loader). Each ``iter()`` is one epoch; its shuffle and augmentation come from
a ``torch.Generator`` seeded with ``seed + epoch`` on the cache's device, so runs are
reproducible. Batches are the DataModule's training dicts: ``image`` (B,1,h,w) float32 normalised
like the DataModule, ``mask`` (B,1,h,w) float32 {0,1}, ``presence`` (B,), ``bbox`` (B,4) and
``index`` (B,) int64, all on the device (recomputed from the augmented mask). Under DDP every
rank draws the same permutation, padded by wrapping to a multiple of the world size (as
DistributedSampler does) so every rank gets ceil(N / world) rows and the same number of batches
(an uneven count would leave one rank waiting in an all-reduce), and takes its own strided share.
With ``drop_last=False`` a final batch of one sample is still dropped: BatchNorm after global
pooling (the SK-U-Net squeeze) cannot train on it.

Augmentations mirror ``datamodules.augment`` (same magnitudes and probabilities, not bit for
bit: reflection here mirrors about pixel edges, OpenCV's REFLECT_101 about centres): horizontal
flip, a random similarity transform (rotation/scale/translation) sampled with ``F.affine_grid`` +
``F.grid_sample`` using ONE grid for image (bilinear) and mask (nearest) so they stay aligned
(Jaderberg et al., "Spatial Transformer Networks", NeurIPS 2015), brightness/contrast and
additive Gaussian noise.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from datamodules.datamodule import MEAN, STD, singleton_tail  # one rule set for both paths
from datamodules.errors import DataError

# Same magnitudes and probabilities as datamodules.augment (the albumentations CPU pipeline).
P_AUG = 0.5
MAX_ROTATE_DEG = 10.0
MAX_SCALE = 0.1  # scale in [1 - s, 1 + s]
MAX_SHIFT = 0.06  # fraction of the image size
MAX_BRIGHTNESS = 0.15  # fraction of 255, additive
MAX_CONTRAST = 0.15  # multiplicative factor in [1 - c, 1 + c]
NOISE_STD = (0.02, 0.06)  # fraction of 255
PADDING = "reflection"  # like the CPU pipeline's reflect border, for image and mask alike


def _uniform(n: int, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g, device=g.device)


def _coin(n: int, p: float, g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=g, device=g.device) < p


def affine_theta(
    angle: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, hw: tuple[int, int]
) -> torch.Tensor:
    """(B,2,3) sampling matrices for ``F.affine_grid``: rotation (rad), zoom ``scale``, shift (x, y).

    The grid maps output to input coordinates, so zooming in by ``scale`` samples at ``1/scale``.
    Off-diagonals are rescaled by the aspect ratio so rotations are rigid on non-square images.
    """
    h, w = hw
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    row0 = torch.stack([cos, -sin * h / w, shift[:, 0]], dim=1)
    row1 = torch.stack([sin * w / h, cos, shift[:, 1]], dim=1)
    return torch.stack([row0, row1], dim=1)


def _random_theta(b: int, hw: tuple[int, int], g: torch.Generator) -> torch.Tensor:
    on = _coin(b, P_AUG, g)
    angle = _uniform(b, -1.0, 1.0, g) * math.radians(MAX_ROTATE_DEG) * on
    scale = 1.0 + _uniform(b, -MAX_SCALE, MAX_SCALE, g) * on
    shift = torch.stack([_uniform(b, -1, 1, g), _uniform(b, -1, 1, g)], 1) * 2 * MAX_SHIFT * on[:, None]
    return affine_theta(angle, scale, shift, hw)


def warp(images: torch.Tensor, masks: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample float images (bilinear) and masks (nearest) through the same affine grid."""
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode=PADDING, align_corners=False)
    masks = F.grid_sample(masks, grid, mode="nearest", padding_mode=PADDING, align_corners=False)
    return images, masks


def _intensity(x: torch.Tensor, g: torch.Generator, contrast: bool, noise: bool) -> torch.Tensor:
    """Brightness/contrast and Gaussian noise on 0..255 float images, clipped back to 0..255."""
    b = x.shape[0]
    if contrast:
        on = _coin(b, P_AUG, g).to(x.dtype)
        alpha = 1.0 + _uniform(b, -MAX_CONTRAST, MAX_CONTRAST, g) * on
        beta = _uniform(b, -MAX_BRIGHTNESS, MAX_BRIGHTNESS, g) * 255.0 * on
        x = x * alpha.view(b, 1, 1, 1) + beta.view(b, 1, 1, 1)
    if noise:
        std = _uniform(b, *NOISE_STD, g) * 255.0 * _coin(b, P_AUG, g)
        x = x + torch.randn(x.shape, generator=g, device=g.device, dtype=x.dtype) * std.view(b, 1, 1, 1)
    return x.clamp(0.0, 255.0)


def normalise(images_0_255: torch.Tensor) -> torch.Tensor:
    """0..255 float -> the DataModule's normalised input ``(x / 255 - MEAN) / STD``."""
    return (images_0_255 / 255.0 - MEAN) / STD


def gpu_augment(
    images: torch.Tensor,
    masks: torch.Tensor,
    generator: torch.Generator,
    flip: bool = True,
    affine: bool = True,
    intensity: bool = True,
    noise: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a uint8 batch (B,1,H,W) and its {0,1} masks; return (normalised float32, float32 masks).

    Random draws come from ``generator``, which must live on the tensors' device.
    """
    if images.shape != masks.shape or images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(
            f"expected images and masks of equal shape (B,1,H,W), got {images.shape}, {masks.shape}"
        )
    x, m = images.float(), masks.float()
    b, _, h, w = x.shape
    if flip:
        on = _coin(b, P_AUG, generator).view(b, 1, 1, 1)
        x, m = torch.where(on, x.flip(-1), x), torch.where(on, m.flip(-1), m)
    if affine:
        x, m = warp(x, m, _random_theta(b, (h, w), generator))
    if intensity or noise:
        x = _intensity(x, generator, intensity, noise)
    return normalise(x), m


def presence_and_bbox(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Presence (B,) and normalised (cx, cy, w, h) boxes (B,4) of (B,1,H,W) masks; zeros when empty.

    Same convention as ``datamodules.targets``: extents in pixels from the first to one past the
    last foreground row/column, divided by the image size.
    """
    b, _, h, w = masks.shape
    fg = masks[:, 0] > 0.5
    cols, rows = fg.any(1), fg.any(2)  # (B,W), (B,H)
    present = cols.any(1)

    def extent(hit: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.arange(size, device=hit.device)
        first = torch.where(hit, pos, size).amin(1)
        last = torch.where(hit, pos, -1).amax(1) + 1
        return first.float() / size, last.float() / size

    x0, x1 = extent(cols, w)
    y0, y1 = extent(rows, h)
    box = torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], 1)
    return present.float(), torch.where(present[:, None], box, torch.zeros_like(box))


def _as_tensor(array: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Tensors stay where they are (possibly on a GPU already); arrays become CPU tensors."""
    return array if isinstance(array, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(array))


class GpuCache:
    """uint8 images and {0,1} masks at network size, held as (N,1,h,w) tensors on ``device``."""

    def __init__(
        self,
        images: np.ndarray | torch.Tensor,
        masks: np.ndarray | torch.Tensor,
        device: str | torch.device = "cpu",
        indices: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        images, masks = _as_tensor(images), _as_tensor(masks)
        if images.dtype != torch.uint8 or images.ndim != 3 or images.shape != masks.shape:
            raise DataError(
                "gpu cache",
                f"expected uint8 images (N,h,w) and masks of the same shape, got "
                f"{tuple(images.shape)} {images.dtype} and {tuple(masks.shape)}",
            )
        self.device = torch.device(device)
        self.images = images.unsqueeze(1).contiguous().to(self.device)
        self.masks = (masks > 0).to(torch.uint8).unsqueeze(1).to(self.device)
        idx = np.arange(len(images)) if indices is None else np.asarray(indices, dtype=np.int64)
        if len(idx) != len(images):
            raise DataError("gpu cache", f"{len(idx)} indices for {len(images)} images")
        self.indices = torch.as_tensor(idx, dtype=torch.int64, device=self.device)

    def __len__(self) -> int:
        return self.images.shape[0]

    def generator(self, seed: int) -> torch.Generator:
        """A seeded generator on the cache's device (CUDA ops need a CUDA generator)."""
        g = torch.Generator(device=self.device)
        g.manual_seed(int(seed))
        return g

    def batches(
        self,
        batch_size: int,
        generator: torch.Generator,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> Iterator[torch.Tensor]:
        """Shuffled row positions, ``batch_size`` at a time (this rank's strided share).

        With ``world_size > 1`` the permutation wraps round to a multiple of ``world_size``, so
        every rank gets ``ceil(N / world_size)`` rows.
        """
        order = torch.randperm(len(self), generator=generator, device=self.device)
        total = math.ceil(len(order) / world_size) * world_size
        if total > len(order):
            order = order.repeat(math.ceil(total / len(order)))[:total]
        order = order[rank::world_size]
        stop = len(order) - len(order) % batch_size if drop_last else len(order)
        for start in range(0, stop, batch_size):
            yield order[start : start + batch_size]


class GpuBatchIterator:
    """A re-iterable training loader over a :class:`GpuCache` (one ``iter()`` = one epoch)."""

    def __init__(
        self,
        cache: GpuCache,
        batch_size: int,
        seed: int = 0,
        augment: bool = True,
        flip: bool = True,
        affine: bool = True,
        intensity: bool = True,
        noise: bool = True,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.cache, self.batch_size, self.seed = cache, batch_size, seed
        self.flags = {"flip": flip, "affine": affine, "intensity": intensity, "noise": noise}
        self.augment, self.drop_last, self.rank, self.world_size = augment, drop_last, rank, world_size
        self.epoch = 0

    def _drop_last(self) -> bool:
        """``drop_last``, or forced on when the last batch would hold a single sample."""
        return self.drop_last or singleton_tail(len(self.cache), self.batch_size, self.world_size)

    def __len__(self) -> int:
        per_rank = math.ceil(len(self.cache) / self.world_size)
        return per_rank // self.batch_size if self._drop_last() else math.ceil(per_rank / self.batch_size)

    def stream_state(self) -> dict[str, int]:
        """Where the stream stands, for ``datamodules.augment.ResumableTrainLoader``: the next epoch."""
        return {"epoch": int(self.epoch)}

    def load_stream_state(self, state: dict[str, int]) -> None:
        """Continue the stream of a resumed run: every epoch's draws come from ``seed + epoch``."""
        self.epoch = int(state.get("epoch", self.epoch))

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        g = self.cache.generator(self.seed + self.epoch)
        self.epoch += 1
        for pos in self.cache.batches(self.batch_size, g, self._drop_last(), self.rank, self.world_size):
            yield self.make_batch(pos, g)

    def make_batch(self, pos: torch.Tensor, g: torch.Generator) -> dict[str, torch.Tensor]:
        images, masks = self.cache.images[pos], self.cache.masks[pos]
        if self.augment:
            image, mask = gpu_augment(images, masks, g, **self.flags)
        else:
            image, mask = normalise(images.float()), masks.float()
        presence, bbox = presence_and_bbox(mask)
        return {
            "image": image,
            "mask": mask,
            "presence": presence,
            "bbox": bbox,
            "index": self.cache.indices[pos],
        }

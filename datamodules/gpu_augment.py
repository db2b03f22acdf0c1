"""GPU fast path: the training set cached as uint8 device tensors, augmented with plain torch ops.

Decoding tifs and running albumentations on CPU workers caps throughput long before a GPU is
busy (the Kaggle set is ~5.6k frames; at 256x256 its images and masks are ~740 MB as uint8, so
they fit on any training GPU). With ``TrainConfig.gpu_cache`` the suite keeps the network-size
images and masks on the device and augments whole batches there. Everything here is
device-agnostic and runs (slowly) on CPU, which is how it is tested.

API (``datamodules.gpu_data.GpuCachedDataModule`` wires it in for ``fit``)::

    cache = GpuCache(images, masks, device="cuda", indices=fit_idx)  # uint8 (N,h,w), {0,1} masks
    loader = GpuBatchIterator(cache, dm.train_sampler(), data_config.augment, seed=cfg.seed)

``GpuBatchIterator`` is a plain re-iterable with ``__len__`` and a ``sampler`` (Lightning 2 accepts
any such iterable as a train loader, and calls ``sampler.set_epoch`` before every epoch). The
order is the :class:`datamodules.samplers.TrainSampler`'s (full global batches, this rank's
slice), and every random number of a sample's augmentation comes from its (seed, epoch, index)
key through :func:`datamodules.stream.uniform`: the same uniform draws on 1 GPU or 8, on CPU or
CUDA (what is computed from them, through log, cos and the blur, agrees to rounding, not bit for bit).
Batches are the DataModule's training dicts: ``image`` (B,1,h,w) float32 normalised like the
DataModule, ``mask`` (B,1,h,w) float32 {0,1}, ``presence`` (B,), ``bbox`` (B,4) and ``index``
(B,) int64, all on the device (targets recomputed from the augmented mask).

Every switch of :class:`datamodules.data_config.AugmentConfig` acts here as in
``datamodules.augment`` (same magnitudes and probabilities, not bit for bit: reflection here mirrors
about pixel edges, OpenCV's REFLECT_101 about centres): horizontal flip; a random similarity
transform (rotation/scale/translation) and an elastic displacement (Simard et al., ICDAR 2003:
Gaussian noise scaled to [-1, 1], smoothed by a Gaussian of ``ELASTIC_SIGMA`` px, times
``ELASTIC_ALPHA`` px, as albumentations draws it), both
sampled through ONE grid for image (bilinear) and mask (nearest) so they stay aligned (Jaderberg
et al., "Spatial Transformer Networks", NeurIPS 2015); brightness/contrast; additive Gaussian noise.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from datamodules import stream
from datamodules.data_config import AugmentConfig
from datamodules.datamodule import MEAN, STD  # one normalisation for both paths
from datamodules.errors import DataError
from datamodules.samplers import TrainSampler

# Same magnitudes as datamodules.augment (the albumentations CPU pipeline); probability: AugmentConfig.p.
MAX_ROTATE_DEG = 10.0
MAX_SCALE = 0.1  # scale in [1 - s, 1 + s]
MAX_SHIFT = 0.06  # fraction of the image size
ELASTIC_ALPHA, ELASTIC_SIGMA = 40.0, 6.0  # pixels, as A.ElasticTransform(alpha=40, sigma=6)
MAX_BRIGHTNESS = 0.15  # fraction of 255, additive
MAX_CONTRAST = 0.15  # multiplicative factor in [1 - c, 1 + c]
NOISE_STD = (0.02, 0.06)  # fraction of 255
PADDING = "reflection"  # like the CPU pipeline's reflect border, for image and mask alike
# One independent draw stream per random quantity of a sample (datamodules.stream.uniform).
(FLIP, AFFINE, ANGLE, SCALE, SHIFT_X, SHIFT_Y, ELASTIC, ELASTIC_X, ELASTIC_Y, CONTRAST, ALPHA, BETA,
 NOISE, NOISE_STD_DRAW, NOISE_U1, NOISE_U2, ELASTIC_X2, ELASTIC_Y2) = range(18)  # fmt: skip


class Draws:
    """The random numbers of one batch: functions of each sample's key, never of the batch."""

    def __init__(self, keys: torch.Tensor, p: float) -> None:
        self.keys, self.p = keys, p

    def uniform(self, stream_id: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
        return low + (high - low) * stream.uniform(self.keys, stream_id)

    def coin(self, stream_id: int) -> torch.Tensor:
        return stream.uniform(self.keys, stream_id) < self.p

    def field(self, stream_id: int, shape: tuple[int, int]) -> torch.Tensor:
        """(B, h, w) uniforms in (0, 1), one per pixel."""
        return stream.uniform(self.keys, stream_id, shape[0] * shape[1]).view(-1, *shape)

    def normal_field(
        self, shape: tuple[int, int], streams: tuple[int, int] = (NOISE_U1, NOISE_U2)
    ) -> torch.Tensor:
        """(B, h, w) standard normals (Box-Muller on two per-pixel uniform fields)."""
        u1, u2 = self.field(streams[0], shape), self.field(streams[1], shape)
        return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)


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


def _random_theta(d: Draws, hw: tuple[int, int]) -> torch.Tensor:
    on = d.coin(AFFINE).float()
    angle = d.uniform(ANGLE, -1.0, 1.0) * math.radians(MAX_ROTATE_DEG) * on
    scale = 1.0 + d.uniform(SCALE, -MAX_SCALE, MAX_SCALE) * on
    shift = torch.stack([d.uniform(SHIFT_X, -1.0, 1.0), d.uniform(SHIFT_Y, -1.0, 1.0)], 1)
    return affine_theta(angle, scale, shift * 2 * MAX_SHIFT * on[:, None], hw)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, 1, h, w), edge-replicated, radius 4 sigma: OpenCV's
    ``GaussianBlur`` with an automatic kernel on float input, as albumentations' elastic field has it.
    Its convolutions run in IEEE fp32 (cuDNN's TF32 off), so the field is the same on CPU and GPU
    up to rounding."""
    radius = max(1, int(4 * sigma))
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    saved = torch.backends.cudnn.allow_tf32  # the only cuDNN flag touched (flags() would reset all)
    torch.backends.cudnn.allow_tf32 = False
    try:
        x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
        return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    finally:
        torch.backends.cudnn.allow_tf32 = saved


def elastic_offsets(d: Draws, hw: tuple[int, int]) -> torch.Tensor:
    """(B, h, w, 2) grid offsets in normalised coordinates; zero where the coin says no.

    As albumentations 2 draws them (``ElasticTransform``'s default ``noise_distribution="gaussian"``):
    standard normal noise for x and y, divided by its largest absolute value over both fields of
    the sample, blurred by a Gaussian of ``ELASTIC_SIGMA`` px and times ``ELASTIC_ALPHA`` px."""
    h, w = hw
    on = d.coin(ELASTIC).float().view(-1, 1, 1)
    noise = torch.stack(
        [d.normal_field(hw, (ELASTIC_X, ELASTIC_X2)), d.normal_field(hw, (ELASTIC_Y, ELASTIC_Y2))], 1
    )  # (B, 2, h, w)
    noise = noise / noise.abs().amax(dim=(1, 2, 3), keepdim=True).clamp(min=1e-6)  # no host sync
    fields = []
    for axis, size in ((0, w), (1, h)):
        pixels = _gaussian_blur(noise[:, axis : axis + 1], ELASTIC_SIGMA)[:, 0] * ELASTIC_ALPHA
        fields.append(pixels * (2.0 / size) * on)  # pixels -> the grid's [-1, 1] units
    return torch.stack(fields, dim=-1)


def warp(images: torch.Tensor, masks: torch.Tensor, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample float images (bilinear) and masks (nearest) through the same sampling grid."""
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode=PADDING, align_corners=False)
    masks = F.grid_sample(masks, grid, mode="nearest", padding_mode=PADDING, align_corners=False)
    return images, masks


def _intensity(x: torch.Tensor, d: Draws, contrast: bool, noise: bool) -> torch.Tensor:
    """Brightness/contrast and Gaussian noise on 0..255 float images, clipped back to 0..255."""
    b = x.shape[0]
    if contrast:
        on = d.coin(CONTRAST).to(x.dtype)
        alpha = 1.0 + d.uniform(ALPHA, -MAX_CONTRAST, MAX_CONTRAST) * on
        beta = d.uniform(BETA, -MAX_BRIGHTNESS, MAX_BRIGHTNESS) * 255.0 * on
        x = x * alpha.view(b, 1, 1, 1) + beta.view(b, 1, 1, 1)
    if noise:
        std = d.uniform(NOISE_STD_DRAW, *NOISE_STD) * 255.0 * d.coin(NOISE).to(x.dtype)
        x = x + d.normal_field(tuple(x.shape[-2:])).unsqueeze(1).to(x.dtype) * std.view(b, 1, 1, 1)
    return x.clamp(0.0, 255.0)


def normalise(images_0_255: torch.Tensor) -> torch.Tensor:
    """0..255 float -> the DataModule's normalised input ``(x / 255 - MEAN) / STD``."""
    return (images_0_255 / 255.0 - MEAN) / STD


def gpu_augment(
    images: torch.Tensor, masks: torch.Tensor, keys: torch.Tensor, aug: AugmentConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a uint8 batch (B,1,H,W) and its {0,1} masks; return (normalised float32, float32 masks).

    ``keys`` (B,) int64 are the samples' :func:`datamodules.stream.sample_keys`, on the tensors' device.
    """
    if (
        images.shape != masks.shape
        or images.ndim != 4
        or images.shape[1] != 1
        or keys.shape != images.shape[:1]
    ):
        raise ValueError(
            f"expected images and masks of equal shape (B,1,H,W) and keys (B,), got "
            f"{tuple(images.shape)}, {tuple(masks.shape)}, {tuple(keys.shape)}"
        )
    x, m = images.float(), masks.float()
    b, _, h, w = x.shape
    on, d = set(aug.active()), Draws(keys, aug.p)
    if "flip" in on:
        flip = d.coin(FLIP).view(b, 1, 1, 1)
        x, m = torch.where(flip, x.flip(-1), x), torch.where(flip, m.flip(-1), m)
    if "affine" in on or "elastic" in on:
        theta = (
            _random_theta(d, (h, w))
            if "affine" in on
            else affine_theta(
                torch.zeros(b, device=x.device),
                torch.ones(b, device=x.device),
                torch.zeros(b, 2, device=x.device),
                (h, w),
            )
        )
        grid = F.affine_grid(theta.to(x.dtype), [b, 1, h, w], align_corners=False)
        if "elastic" in on:
            grid = grid + elastic_offsets(d, (h, w)).to(grid.dtype)
        x, m = warp(x, m, grid)
    if "brightness" in on or "noise" in on:
        x = _intensity(x, d, "brightness" in on, "noise" in on)
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
        self, batch_size: int, generator: torch.Generator, drop_last: bool = True
    ) -> Iterator[torch.Tensor]:
        """Shuffled row positions, ``batch_size`` at a time, for bare loops (``speed``'s ceiling).

        Training does not use this: its order is :mod:`datamodules.stream`'s, the same on any box.
        """
        order = torch.randperm(len(self), generator=generator, device=self.device)
        stop = len(order) - len(order) % batch_size if drop_last else len(order)
        for start in range(0, stop, batch_size):
            yield order[start : start + batch_size]


class GpuBatchIterator:
    """A re-iterable training loader over a :class:`GpuCache` (one ``iter()`` = one epoch).

    ``sampler`` decides the positions (and holds the epoch Lightning sets); ``seed`` and ``aug``
    decide each sample's augmentation.
    """

    def __init__(self, cache: GpuCache, sampler: TrainSampler, aug: AugmentConfig, seed: int = 0) -> None:
        if sampler.n != len(cache):
            raise DataError("gpu cache", f"sampler over {sampler.n} samples for a cache of {len(cache)}")
        self.cache, self.sampler, self.aug, self.seed = cache, sampler, aug, int(seed)

    def __len__(self) -> int:
        return self.sampler.steps

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        epoch = int(self.sampler.epoch)
        positions = torch.from_numpy(self.sampler.positions()).to(self.cache.device, non_blocking=True)
        for pos in positions.split(self.sampler.per_rank):
            yield self.make_batch(pos, epoch)

    def make_batch(self, pos: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        images, masks, index = self.cache.images[pos], self.cache.masks[pos], self.cache.indices[pos]
        if self.aug.active():
            keys = stream.sample_keys(self.seed, epoch, index)
            image, mask = gpu_augment(images, masks, keys, self.aug)
        else:
            image, mask = normalise(images.float()), masks.float()
        presence, bbox = presence_and_bbox(mask)
        return {"image": image, "mask": mask, "presence": presence, "bbox": bbox, "index": index}

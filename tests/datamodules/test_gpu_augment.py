"""GPU-side augmentation on CPU: image/mask alignment, exact flips, determinism, batch dicts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from datamodules import gpu_augment as ga
from datamodules.errors import DataError


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _blobs(b: int = 8, h: int = 40, w: int = 56) -> torch.Tensor:
    """{0,1} uint8 masks with an off-centre rectangle per sample (asymmetric, so flips show)."""
    m = torch.zeros(b, 1, h, w, dtype=torch.uint8)
    for i in range(b):
        m[i, 0, 5 + i : 20 + i, 3 + 2 * i : 15 + 3 * i] = 1
    return m


def _unnormalise(x: torch.Tensor) -> torch.Tensor:
    return (x * ga.STD + ga.MEAN) * 255.0


def test_geometry_keeps_image_and_mask_aligned():
    masks = _blobs()
    images = masks * 255
    x, m = ga.gpu_augment(images, masks, _gen(3), flip=True, affine=True, intensity=False, noise=False)
    assert not torch.equal(m, masks.float())  # something moved
    disagree = (_unnormalise(x) > 127.5) != (m > 0.5)
    # Bilinear vs nearest may differ only on the 1-pixel band along the warped mask's boundary.
    band = F.max_pool2d(m, 3, 1, 1) != -F.max_pool2d(-m, 3, 1, 1)
    assert not (disagree & ~band).any()
    assert disagree.sum() < 0.2 * band.sum()
    assert set(torch.unique(m).tolist()) <= {0.0, 1.0}


def test_flip_only_is_exact():
    masks = _blobs()
    images = (masks * 200 + 20).to(torch.uint8)
    x, m = ga.gpu_augment(images, masks, _gen(1), flip=True, affine=False, intensity=False, noise=False)
    flipped = torch.tensor([torch.equal(m[i], masks[i].flip(-1).float()) for i in range(len(m))])
    kept = torch.tensor([torch.equal(m[i], masks[i].float()) for i in range(len(m))])
    assert (flipped | kept).all() and flipped.any() and kept.any()
    assert torch.allclose(_unnormalise(x), torch.where(m > 0, 220.0, 20.0), atol=1e-3)


def test_no_augmentation_is_plain_normalisation():
    masks = _blobs(2)
    images = masks * 255
    x, m = ga.gpu_augment(images, masks, _gen(), flip=False, affine=False, intensity=False, noise=False)
    assert torch.equal(m, masks.float())
    expected = (masks.float() - ga.MEAN) / ga.STD
    assert x.dtype == torch.float32 and torch.allclose(x, expected)


def test_deterministic_given_seed_and_range():
    masks = _blobs()
    images = (masks * 150 + 50).to(torch.uint8)
    a = ga.gpu_augment(images, masks, _gen(7))
    b = ga.gpu_augment(images, masks, _gen(7))
    c = ga.gpu_augment(images, masks, _gen(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    raw = _unnormalise(a[0])
    assert raw.min() >= -1e-3 and raw.max() <= 255 + 1e-3


def test_affine_theta_identity_and_rotation():
    zero = torch.zeros(1)
    theta = ga.affine_theta(zero, torch.ones(1), torch.zeros(1, 2), (20, 40))
    assert torch.equal(theta, torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]]))
    theta = ga.affine_theta(torch.tensor([math.pi / 2]), torch.tensor([2.0]), torch.zeros(1, 2), (20, 40))
    # cos=0, sin/scale=0.5; off-diagonals scaled by aspect h/w=0.5 and w/h=2
    assert torch.allclose(theta, torch.tensor([[[0.0, -0.25, 0], [1.0, 0.0, 0]]]), atol=1e-6)


def test_presence_and_bbox_hand_values():
    m = torch.zeros(2, 1, 10, 20)
    m[0, 0, 2:6, 4:14] = 1  # rows 2..5, cols 4..13
    presence, bbox = ga.presence_and_bbox(m)
    assert presence.tolist() == [1.0, 0.0]
    assert torch.allclose(bbox[0], torch.tensor([9 / 20, 4 / 10, 10 / 20, 4 / 10]))
    assert bbox[1].tolist() == [0.0, 0.0, 0.0, 0.0]


def test_batch_iterator_epochs_and_shards():
    masks = _blobs(10).squeeze(1).numpy()
    cache = ga.GpuCache(masks * 255, masks, indices=np.arange(100, 110))
    loader = ga.GpuBatchIterator(cache, batch_size=3, seed=0)
    assert len(loader) == 3
    epoch0 = list(loader)
    epoch1 = list(loader)
    assert [b["image"].shape for b in epoch0] == [(3, 1, 40, 56)] * 3
    assert set(epoch0[0]) == {"image", "mask", "presence", "bbox", "index"}
    idx0 = torch.cat([b["index"] for b in epoch0])
    assert len(set(idx0.tolist())) == 9 and idx0.min() >= 100
    assert not torch.equal(idx0, torch.cat([b["index"] for b in epoch1]))  # reshuffled per epoch
    again = list(ga.GpuBatchIterator(cache, batch_size=3, seed=0))
    assert torch.equal(again[0]["image"], epoch0[0]["image"])
    shards = [ga.GpuBatchIterator(cache, 5, seed=0, rank=r, world_size=2, augment=False) for r in (0, 1)]
    seen = [torch.cat([b["index"] for b in s]).tolist() for s in shards]
    assert sorted(seen[0] + seen[1]) == list(range(100, 110))


def _epoch_sizes(loader: ga.GpuBatchIterator) -> list[int]:
    return [len(b["index"]) for b in loader]


def test_batch_iterator_never_ends_in_a_single_sample():
    masks = _blobs(7).squeeze(1).numpy()
    cache = ga.GpuCache(masks * 255, masks)
    loader = ga.GpuBatchIterator(cache, batch_size=3, drop_last=False, augment=False)
    assert len(loader) == 2 and _epoch_sizes(loader) == [3, 3]  # 7 = 3 + 3 + 1: the 1 is dropped
    loader = ga.GpuBatchIterator(cache, batch_size=5, drop_last=False, augment=False)
    assert len(loader) == 2 and _epoch_sizes(loader) == [5, 2]  # a tail of 2 is kept
    # DDP: 9 rows -> 5 per rank (one wrapped round) = 4 + 1 on every rank
    cache = ga.GpuCache(_blobs(9).squeeze(1).numpy(), _blobs(9).squeeze(1).numpy())
    for rank in (0, 1):
        shard = ga.GpuBatchIterator(cache, 4, drop_last=False, rank=rank, world_size=2, augment=False)
        assert len(shard) == 1 and _epoch_sizes(shard) == [4]


def test_ddp_ranks_get_equal_shares():
    """An uneven split would give ranks different batch counts and hang DDP's all-reduce."""
    masks = _blobs(5).squeeze(1).numpy()
    cache = ga.GpuCache(masks * 255, masks, indices=np.arange(5))
    shards = [ga.GpuBatchIterator(cache, 3, seed=0, rank=r, world_size=2, augment=False) for r in (0, 1)]
    assert [len(s) for s in shards] == [1, 1]
    seen = [torch.cat([b["index"] for b in s]).tolist() for s in shards]
    assert [len(x) for x in seen] == [3, 3]  # 5 rows padded to 6 by wrapping round
    assert set(seen[0] + seen[1]) == set(range(5))


def test_cache_rejects_bad_input():
    with pytest.raises(DataError, match="uint8"):
        ga.GpuCache(np.zeros((2, 8, 8), np.float32), np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="equal shape"):
        ga.gpu_augment(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.zeros(2, 1, 8, 9), _gen())

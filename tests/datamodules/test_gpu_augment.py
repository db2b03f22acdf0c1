"""GPU-side augmentation on CPU: image/mask alignment, exact flips, per-sample keys, every switch,
and the GPU iterator taking exactly the CPU loader's global batches."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmark.core.config import TrainConfig
from datamodules import gpu_augment as ga
from datamodules.data_config import SWITCHES, AugmentConfig
from datamodules.datamodule import UltrasoundNerveDataModule
from datamodules.errors import DataError
from datamodules.gpu_data import GpuCachedDataModule
from datamodules.samplers import TrainSampler
from datamodules.stream import epoch_order, sample_keys

ALL = AugmentConfig()
GEOMETRY = AugmentConfig.only("flip", "affine", "elastic")


def _keys(b: int, epoch: int = 0, seed: int = 0) -> torch.Tensor:
    return sample_keys(seed, epoch, torch.arange(b))


def _blobs(b: int = 8, h: int = 40, w: int = 56) -> torch.Tensor:
    """{0,1} uint8 masks with an off-centre rectangle per sample (asymmetric, so flips show)."""
    m = torch.zeros(b, 1, h, w, dtype=torch.uint8)
    for i in range(b):
        m[i, 0, 5 + i : 20 + i, 3 + 2 * i : 15 + 3 * i] = 1
    return m


def _unnormalise(x: torch.Tensor) -> torch.Tensor:
    return (x * ga.STD + ga.MEAN) * 255.0


@pytest.mark.parametrize("aug", [AugmentConfig.only("flip", "affine"), GEOMETRY])
def test_geometry_keeps_image_and_mask_aligned(aug: AugmentConfig):
    masks = _blobs()
    images = masks * 255
    x, m = ga.gpu_augment(images, masks, _keys(8, epoch=3), aug)
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
    x, m = ga.gpu_augment(images, masks, _keys(8, epoch=1), AugmentConfig.only("flip"))
    flipped = torch.tensor([torch.equal(m[i], masks[i].flip(-1).float()) for i in range(len(m))])
    kept = torch.tensor([torch.equal(m[i], masks[i].float()) for i in range(len(m))])
    assert (flipped | kept).all() and flipped.any() and kept.any()
    assert torch.allclose(_unnormalise(x), torch.where(m > 0, 220.0, 20.0), atol=1e-3)


def test_no_augmentation_is_plain_normalisation():
    masks = _blobs(2)
    images = masks * 255
    x, m = ga.gpu_augment(images, masks, _keys(2), AugmentConfig.only())
    assert torch.equal(m, masks.float())
    expected = (masks.float() - ga.MEAN) / ga.STD
    assert x.dtype == torch.float32 and torch.allclose(x, expected)


@pytest.mark.parametrize("switch", SWITCHES)
def test_every_switch_acts_on_the_gpu_path(switch: str):
    masks = _blobs()
    images = (masks * 150 + 50).to(torch.uint8)
    x, m = ga.gpu_augment(images, masks, _keys(8), AugmentConfig.only(switch, p=1.0))
    plain = ga.normalise(images.float())
    changed = [not torch.allclose(x[i], plain[i], atol=1e-4) for i in range(8)]
    assert all(changed), switch


def test_a_sample_is_augmented_by_its_key_not_by_its_batch():
    """Batch [a, b] and batch [b] alone give b the same augmentation (within float tolerance: the
    elastic blur is a convolution whose kernels may change with the batch size)."""
    masks = _blobs(4)
    images = (masks * 150 + 50).to(torch.uint8)
    keys = _keys(4, epoch=2)
    x, m = ga.gpu_augment(images, masks, keys, ALL)
    x1, m1 = ga.gpu_augment(images[2:3], masks[2:3], keys[2:3], ALL)
    torch.testing.assert_close(x1, x[2:3], rtol=0, atol=1e-4)
    assert torch.equal(m1, m[2:3])
    raw = _unnormalise(x)
    assert raw.min() >= -1e-3 and raw.max() <= 255 + 1e-3
    other = ga.gpu_augment(images, masks, _keys(4, epoch=3), ALL)[0]
    assert not torch.allclose(other, x)  # another epoch, other draws


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
    sampler = TrainSampler(10, 3, seed=0)
    loader = ga.GpuBatchIterator(cache, sampler, ALL, seed=0)
    assert len(loader) == 3
    epoch0 = list(loader)
    sampler.set_epoch(1)
    epoch1 = list(loader)
    assert [b["image"].shape for b in epoch0] == [(3, 1, 40, 56)] * 3
    assert set(epoch0[0]) == {"image", "mask", "presence", "bbox", "index"}
    idx0 = torch.cat([b["index"] for b in epoch0])
    assert len(set(idx0.tolist())) == 9 and idx0.min() >= 100
    assert not torch.equal(idx0, torch.cat([b["index"] for b in epoch1]))  # reshuffled per epoch
    again = list(ga.GpuBatchIterator(cache, TrainSampler(10, 3, seed=0), ALL, seed=0))
    assert torch.equal(again[0]["image"], epoch0[0]["image"])
    shards = [ga.GpuBatchIterator(cache, TrainSampler(10, 4, 0, r, 2), ALL, seed=0) for r in (0, 1)]
    assert [len(s) for s in shards] == [2, 2]
    seen = [torch.cat([b["index"] for b in s]) for s in shards]
    assert len(set(seen[0].tolist() + seen[1].tolist())) == 8  # 2 global batches of 4, no repeats


def test_train_sampler_tags_each_position_with_the_current_epoch():
    """After set_epoch(3) every yielded (position, epoch) says 3: the dataset keys the sample's
    augmentation by it, so a sampler stuck at epoch 0 would repeat epoch 0's augmentations forever.
    10 samples, global batch 2: 5 full steps, the whole epoch-3 permutation in order."""
    sampler = TrainSampler(10, 2, seed=0)
    sampler.set_epoch(3)
    assert list(sampler) == [(int(p), 3) for p in epoch_order(10, 0, 3)]


@pytest.fixture(scope="module")
def train_set(synthetic_dir: Path):
    from datamodules.kaggle import load_train

    return load_train(synthetic_dir)  # decoded once for the module's many DataModules


def _cpu_and_gpu_batches(
    data: Path, train_set, aug: dict, world: int = 1, rank: int = 0
) -> tuple[list, list]:
    cfg = TrainConfig(image_size=64, n_folds=3, batch_size=4, seed=5, **aug).to_dict()
    out = []
    for cls in (UltrasoundNerveDataModule, GpuCachedDataModule):
        dm = cls.from_config_dict(data, cfg, preloaded=train_set)
        fit_loop = SimpleNamespace(epoch_progress=SimpleNamespace(current=SimpleNamespace(processed=0)))
        device = SimpleNamespace(root_device="cpu")
        dm.trainer = SimpleNamespace(world_size=world, global_rank=rank, strategy=device, fit_loop=fit_loop)
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(2)
        out.append(list(loader))
    return out[0], out[1]


def test_gpu_iterator_takes_the_cpu_loaders_global_batches(synthetic_dir: Path, train_set):
    for world, rank in ((1, 0), (2, 1)):
        cpu, gpu = _cpu_and_gpu_batches(synthetic_dir, train_set, {"augment": False}, world, rank)
        assert [b["index"].tolist() for b in cpu] == [b["index"].tolist() for b in gpu]
        for a, b in zip(cpu, gpu, strict=True):  # un-augmented: the same normalised cache
            torch.testing.assert_close(a["image"], b["image"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("switch", SWITCHES)
def test_every_aug_switch_acts_on_both_paths(synthetic_dir: Path, train_set, switch: str):
    """One data config: aug_<switch> alone changes the training batches of the CPU loader AND of the
    GPU iterator (aug_elastic used to change the run hash but not the GPU-cache training)."""
    only = {f"aug_{s}": s == switch for s in SWITCHES}
    plain_cpu, plain_gpu = _cpu_and_gpu_batches(synthetic_dir, train_set, {"augment": False})
    cpu, gpu = _cpu_and_gpu_batches(synthetic_dir, train_set, only)
    for augmented, plain in ((cpu, plain_cpu), (gpu, plain_gpu)):
        assert any(not torch.allclose(a["image"], p["image"], atol=1e-4) for a, p in zip(augmented, plain))


def test_cache_and_iterator_reject_bad_input():
    with pytest.raises(DataError, match="uint8"):
        ga.GpuCache(np.zeros((2, 8, 8), np.float32), np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="equal shape"):
        ga.gpu_augment(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.zeros(2, 1, 8, 9), _keys(2), ALL)
    cache = ga.GpuCache(np.zeros((4, 8, 8), np.uint8), np.zeros((4, 8, 8), np.uint8))
    with pytest.raises(DataError, match="sampler over 5"):
        ga.GpuBatchIterator(cache, TrainSampler(5, 2, 0), ALL)


def test_the_elastic_field_is_as_strong_as_albumentations_draws_it() -> None:
    """ElasticTransform(alpha=40, sigma=6) in albumentations 2: Gaussian noise scaled by its largest
    absolute value, blurred, times alpha. Uniform noise in [-1, 1] (the GPU path before) gave a
    displacement about 2.4 times as large. Same size, many samples: the spreads agree to 10%."""
    from albumentations.augmentations.geometric import functional as fg

    hw = (128, 128)
    d = ga.Draws(sample_keys(0, 0, torch.arange(16)), p=1.0)
    gpu = ga.elastic_offsets(d, hw)[..., 0] * hw[1] / 2  # grid units -> pixels
    cpu = [
        fg.generate_displacement_fields(hw, ga.ELASTIC_ALPHA, ga.ELASTIC_SIGMA, False, (0, 0),
                                        np.random.default_rng(k), "gaussian")[0]
        for k in range(16)
    ]  # fmt: skip
    ratio = float(gpu.std()) / float(np.std(np.stack(cpu)))
    assert abs(ratio - 1.0) < 0.1, ratio

"""CPU augmentation: each switch toggles its transform, image and mask move together, every sample
is augmented from its own key, and the transforms draw independently of one another."""

from __future__ import annotations

import numpy as np
import pytest

from datamodules.augment import augment_sample, build_train_transform
from datamodules.data_config import AugmentConfig, DataConfigError

NAMES = {
    "flip": "HorizontalFlip",
    "affine": "Affine",
    "elastic": "ElasticTransform",
    "brightness": "RandomBrightnessContrast",
    "noise": "GaussNoise",
}


def _pair(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size]
    mask = ((((xx - 20) / 12.0) ** 2 + ((yy - 30) / 8.0) ** 2) <= 1).astype(np.uint8)
    return mask * 255, mask


@pytest.mark.parametrize("flag", list(NAMES))
def test_each_switch_toggles_its_transform(flag: str) -> None:
    compose = build_train_transform(AugmentConfig.only(flag, p=1.0))
    assert [type(t).__name__ for t in compose.transforms] == [NAMES[flag]]
    rng = np.random.default_rng(1)
    image = rng.integers(60, 200, (64, 64), dtype=np.uint8)
    out, _ = augment_sample(compose, image, np.zeros((64, 64), np.uint8), key=0)
    assert out.dtype == np.uint8 and out.shape == (64, 64)
    assert not np.array_equal(out, image)


def test_all_switches_off_is_identity_and_defaults() -> None:
    image, mask = _pair()
    for off in (AugmentConfig.only(), AugmentConfig(enabled=False)):
        out = augment_sample(build_train_transform(off), image, mask, key=3)
        np.testing.assert_array_equal(out[0], image)
        np.testing.assert_array_equal(out[1], mask)
    default = [type(t).__name__ for t in build_train_transform(AugmentConfig()).transforms]
    assert default == ["HorizontalFlip", "Affine", "RandomBrightnessContrast", "GaussNoise"]


def test_flip_moves_image_and_mask_together_exactly() -> None:
    image, mask = _pair()
    out = augment_sample(build_train_transform(AugmentConfig.only("flip", p=1.0)), image, mask, key=0)
    np.testing.assert_array_equal(out[1], mask[:, ::-1])
    np.testing.assert_array_equal(out[0], image[:, ::-1])


@pytest.mark.parametrize("key", range(4))
def test_geometric_transforms_keep_image_and_mask_aligned(key: int) -> None:
    image, mask = _pair()
    compose = build_train_transform(AugmentConfig.only("flip", "affine", "elastic", p=1.0))
    out_image, out_mask = augment_sample(compose, image, mask, key)
    assert set(np.unique(out_mask)) <= {0, 1} and out_mask.dtype == np.uint8
    assert not np.array_equal(out_mask, mask)  # something moved
    disagree = ((out_image > 127) != (out_mask > 0)).sum()
    assert disagree <= 0.1 * out_mask.sum()  # only boundary pixels may differ (linear vs nearest)


def test_a_key_fixes_the_draws_and_p_is_checked() -> None:
    image, mask = _pair()
    compose = build_train_transform(AugmentConfig.only("elastic", "noise", p=1.0))
    a, b = augment_sample(compose, image, mask, 5), augment_sample(compose, image, mask, 5)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], augment_sample(compose, image, mask, 6)[0])
    with pytest.raises(DataConfigError, match="probability"):
        AugmentConfig(p=1.5)


def test_transforms_draw_independently() -> None:
    """With p = 0.5, flip and brightness each fire on about half of the samples and together on about
    a quarter. (``Compose.set_random_seed`` seeds every transform alike: their coins were equal, so
    all transforms fired together or not at all.)"""
    image, mask = _pair()
    compose = build_train_transform(AugmentConfig.only("flip", "brightness"))
    flips, brights = [], []
    for key in range(200):
        out_image, out_mask = augment_sample(compose, image, mask, key)
        flipped = np.array_equal(out_mask, mask[:, ::-1])
        flips.append(flipped)
        brights.append(not np.array_equal(out_image, image[:, ::-1] if flipped else image))
    flips, brights = np.array(flips), np.array(brights)
    assert 0.35 < flips.mean() < 0.65 and 0.35 < brights.mean() < 0.65
    assert 0.13 < (flips & brights).mean() < 0.37  # independent: ~0.25; all-or-nothing: ~0.5


def test_the_affine_scales_both_axes_alike_as_the_gpu_path_does() -> None:
    """A random similarity (one scale): a disc stays a disc, its second moments isotropic whatever
    the rotation. Independent x and y scales in [0.9, 1.1] would make ellipses of axis ratio up to
    1.22 (moment ratio 1.49)."""
    size = 96
    yy, xx = np.mgrid[0:size, 0:size]
    disc = ((xx - 47.5) ** 2 + (yy - 47.5) ** 2 <= 20**2).astype(np.uint8)
    transform = build_train_transform(AugmentConfig.only("affine", p=1.0))
    ratios = []
    for key in range(8):
        _, mask = augment_sample(transform, disc * 255, disc, key)
        y, x = np.nonzero(mask)
        eig = np.linalg.eigvalsh(np.cov(np.stack([x, y]).astype(float)))
        ratios.append(eig[1] / eig[0])
    assert max(ratios) < 1.04, ratios

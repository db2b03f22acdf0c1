"""Augmentation flags toggle their transforms, and image and mask move together."""

from __future__ import annotations

import numpy as np
import pytest

from datamodules.augment import build_train_transform

NAMES = {
    "flip": "HorizontalFlip",
    "affine": "Affine",
    "elastic": "ElasticTransform",
    "brightness": "RandomBrightnessContrast",
    "noise": "GaussNoise",
}
OFF = dict.fromkeys(NAMES, False)


def _pair(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size]
    mask = ((((xx - 20) / 12.0) ** 2 + ((yy - 30) / 8.0) ** 2) <= 1).astype(np.uint8)
    return mask * 255, mask


@pytest.mark.parametrize("flag", list(NAMES))
def test_each_flag_toggles_its_transform(flag: str) -> None:
    compose = build_train_transform(**{**OFF, flag: True}, p=1.0, seed=0)
    assert [type(t).__name__ for t in compose.transforms] == [NAMES[flag]]
    rng = np.random.default_rng(1)
    image = rng.integers(60, 200, (64, 64), dtype=np.uint8)
    out = compose(image=image, mask=np.zeros((64, 64), np.uint8))
    assert out["image"].dtype == np.uint8 and out["image"].shape == (64, 64)
    assert not np.array_equal(out["image"], image)


def test_all_flags_off_is_identity_and_defaults() -> None:
    image, mask = _pair()
    out = build_train_transform(**OFF)(image=image, mask=mask)
    np.testing.assert_array_equal(out["image"], image)
    np.testing.assert_array_equal(out["mask"], mask)
    default = [type(t).__name__ for t in build_train_transform().transforms]
    assert default == ["HorizontalFlip", "Affine", "RandomBrightnessContrast", "GaussNoise"]


def test_flip_moves_image_and_mask_together_exactly() -> None:
    image, mask = _pair()
    out = build_train_transform(**{**OFF, "flip": True}, p=1.0)(image=image, mask=mask)
    np.testing.assert_array_equal(out["mask"], mask[:, ::-1])
    np.testing.assert_array_equal(out["image"], image[:, ::-1])


@pytest.mark.parametrize("seed", range(4))
def test_geometric_transforms_keep_image_and_mask_aligned(seed: int) -> None:
    image, mask = _pair()
    compose = build_train_transform(
        **{**OFF, "flip": True, "affine": True, "elastic": True}, p=1.0, seed=seed
    )
    out = compose(image=image, mask=mask)
    assert set(np.unique(out["mask"])) <= {0, 1} and out["mask"].dtype == np.uint8
    assert not np.array_equal(out["mask"], mask)  # something moved
    disagree = ((out["image"] > 127) != (out["mask"] > 0)).sum()
    assert disagree <= 0.1 * out["mask"].sum()  # only boundary pixels may differ (linear vs nearest)


def test_seeded_compose_is_reproducible_and_p_is_checked() -> None:
    image, mask = _pair()
    a = build_train_transform(elastic=True, p=1.0, seed=5)(image=image, mask=mask)
    b = build_train_transform(elastic=True, p=1.0, seed=5)(image=image, mask=mask)
    np.testing.assert_array_equal(a["image"], b["image"])
    with pytest.raises(ValueError, match="probability"):
        build_train_transform(p=1.5)

"""Training-time augmentation on the CPU path (albumentations 2.x), applied to image and mask together.

Runs on uint8 arrays already at network size (cheaper than at 420x580). Geometric transforms
use linear interpolation for images and nearest for masks, with the same reflect border for
both so an image and its mask stay aligned. The magnitudes are deliberately small: the probe
view in the Kaggle data changes little between patients (Buslaev et al. 2020, albumentations).
:mod:`datamodules.gpu_augment` implements the same switches and magnitudes in torch.

Every sample is augmented from its own key (:func:`datamodules.stream.sample_keys`, a function of
seed, epoch and data-set index): :func:`augment_sample` re-seeds the pipeline with ONE numpy and
one python generator shared by all its transforms. (``Compose.set_random_seed`` would give every
transform its own generator with the same seed, so their "apply?" coin flips would be equal and
flip, affine, brightness and noise would always fire together.)
"""

from __future__ import annotations

import random

import albumentations as A
import cv2
import numpy as np

from datamodules.data_config import AugmentConfig


def build_train_transform(aug: AugmentConfig) -> A.Compose:
    """A Compose of the enabled transforms, each applied with probability ``aug.p``.

    Call it through :func:`augment_sample`; with every switch off it is the identity.
    """
    border, p, on = cv2.BORDER_REFLECT_101, aug.p, set(aug.active())
    steps: list[A.BasicTransform] = []
    if "flip" in on:  # left/right is the only anatomically plausible flip (depth has a direction)
        steps.append(A.HorizontalFlip(p=p))
    if "affine" in on:
        steps.append(
            A.Affine(
                scale=(0.9, 1.1),
                keep_ratio=True,  # one scale for both axes: a similarity, as the GPU path draws it
                rotate=(-10, 10),
                translate_percent=(-0.06, 0.06),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=border,
                p=p,
            )
        )
    if "elastic" in on:
        steps.append(
            A.ElasticTransform(
                alpha=40,
                sigma=6,
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=border,
                p=p,
            )
        )
    if "brightness" in on:
        steps.append(A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=p))
    if "noise" in on:  # std_range is a fraction of 255 for uint8 input
        steps.append(A.GaussNoise(std_range=(0.02, 0.06), p=p))
    return A.Compose(steps)


def augment_sample(
    transform: A.Compose, image: np.ndarray, mask: np.ndarray, key: int
) -> tuple[np.ndarray, np.ndarray]:
    """``transform`` applied to one uint8 image/mask pair, every random draw seeded by ``key``."""
    transform.set_random_state(np.random.default_rng(int(key)), random.Random(int(key)))
    out = transform(image=image, mask=mask)
    return out["image"], out["mask"]

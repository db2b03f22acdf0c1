"""Training-time augmentation (albumentations 2.x), applied to image and mask together.

Runs on uint8 arrays already at network size (cheaper than at 420x580). Geometric transforms
use linear interpolation for images and nearest for masks, with the same reflect border for
both so an image and its mask stay aligned. The magnitudes are deliberately small: the probe
view in the Kaggle data changes little between patients (Buslaev et al. 2020, albumentations).
"""

from __future__ import annotations

import albumentations as A
import cv2

AUG_FLAGS = ("flip", "affine", "elastic", "brightness", "noise")


def build_train_transform(
    flip: bool = True,
    affine: bool = True,
    elastic: bool = False,
    brightness: bool = True,
    noise: bool = True,
    p: float = 0.5,
    seed: int | None = None,
) -> A.Compose:
    """A Compose of the enabled transforms, each applied with probability ``p``.

    Call ``compose(image=img, mask=mask)`` with uint8 (H, W) arrays; returns the same dtypes.
    With every flag off it is the identity.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"augmentation probability p={p} is outside [0, 1]")
    border = cv2.BORDER_REFLECT_101
    steps: list[A.BasicTransform] = []
    if flip:  # left/right is the only anatomically plausible flip (depth has a direction)
        steps.append(A.HorizontalFlip(p=p))
    if affine:
        steps.append(
            A.Affine(
                scale=(0.9, 1.1),
                rotate=(-10, 10),
                translate_percent=(-0.06, 0.06),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=border,
                p=p,
            )
        )
    if elastic:
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
    if brightness:
        steps.append(A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=p))
    if noise:  # std_range is a fraction of 255 for uint8 input
        steps.append(A.GaussNoise(std_range=(0.02, 0.06), p=p))
    return A.Compose(steps, seed=seed)

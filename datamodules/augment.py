"""Training-time augmentation (albumentations 2.x), applied to image and mask together.

Runs on uint8 arrays already at network size (cheaper than at 420x580). Geometric transforms
use linear interpolation for images and nearest for masks, with the same reflect border for
both so an image and its mask stay aligned. The magnitudes are deliberately small: the probe
view in the Kaggle data changes little between patients (Buslaev et al. 2020, albumentations).

Resuming a run exactly needs the position of every random stream: :func:`transform_rng_state` /
:func:`set_transform_rng_state` read and restore a Compose's generators as plain data (what a
``torch.load(weights_only=True)`` accepts), and :class:`ResumableDataLoader` hands them, with its
shuffle generator, to the datamodule's checkpoint state (:class:`ResumableTrainLoader`). Streams
that live in worker processes (``num_workers > 0`` with persistent workers) cannot be captured
from the main process.
"""

from __future__ import annotations

import random
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader

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


def python_random_state(rng: random.Random | None = None) -> dict[str, Any]:
    """``random.Random.getstate()`` (of ``rng``, else the global stream) as plain lists and numbers."""
    version, internal, gauss_next = (rng or random).getstate()
    return {"version": version, "internal": list(internal), "gauss_next": gauss_next}


def set_python_random_state(state: dict[str, Any], rng: random.Random | None = None) -> None:
    (rng or random).setstate((state["version"], tuple(state["internal"]), state["gauss_next"]))


def _stream_holders(transform: A.BaseCompose | A.BasicTransform) -> list[Any]:
    """The Compose and every transform below it, in a fixed order: each holds its own generators
    (``set_random_seed`` gives every transform a fresh pair seeded alike)."""
    holders = [transform]
    for child in getattr(transform, "transforms", []):
        holders += _stream_holders(child)
    return holders


def transform_rng_state(transform: A.Compose | None) -> list[dict[str, Any]] | None:
    """The augmentation stream's position: every transform's numpy bit generator and python ``Random``,
    as plain data (dicts of str and ints, lists)."""
    if transform is None:
        return None
    return [
        {"numpy": h.random_generator.bit_generator.state, "python": python_random_state(h.py_random)}
        for h in _stream_holders(transform)
    ]


def set_transform_rng_state(transform: A.Compose | None, state: list[dict[str, Any]] | None) -> None:
    """Restore :func:`transform_rng_state` in place (generators shared between transforms stay shared)."""
    if transform is None or state is None:
        return
    holders = _stream_holders(transform)
    if len(holders) != len(state):
        raise ValueError(f"augmentation state for {len(state)} transforms, this pipeline has {len(holders)}")
    for holder, saved in zip(holders, state):
        holder.random_generator.bit_generator.state = saved["numpy"]
        set_python_random_state(saved["python"], holder.py_random)


def _rank_world() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_per_rank(state: Any) -> list[Any]:
    """Every process's ``state``, indexed by rank (a collective under DDP: call it on every rank)."""
    rank, world = _rank_world()
    if world == 1:
        return [state]
    out: list[Any] = [None] * world
    torch.distributed.all_gather_object(out, state)  # peers of one job; what is saved stays plain
    return out


def own_rank(states: list[Any]) -> Any:
    """This process's entry of :func:`gather_per_rank` (modulo, should the world size have changed)."""
    return states[_rank_world()[0] % len(states)] if states else None


class ResumableDataLoader(DataLoader):
    """A DataLoader whose shuffle generator and (main-process) augmentation stream can be saved and
    restored: the same permutation, worker seeds and augmentations as an uninterrupted run.

    The state is per rank and plain (tensors, lists, numbers, strings); ``stream_state`` is a
    collective under DDP (every rank calls it while a checkpoint is written).
    """

    # Not named state_dict: Lightning would then also checkpoint it in its loop state, a second copy.
    def stream_state(self) -> dict[str, Any]:
        generator = self.generator.get_state() if self.generator is not None else None
        transform = getattr(self.dataset, "transform", None)
        own = {"generator": generator, "augment": transform_rng_state(transform)}
        return {"per_rank": gather_per_rank(own)}

    def load_stream_state(self, state: dict[str, Any]) -> None:
        own = own_rank(state.get("per_rank", []))
        if own is None:
            return
        if own["generator"] is not None and self.generator is not None:
            self.generator.set_state(own["generator"])
        set_transform_rng_state(getattr(self.dataset, "transform", None), own["augment"])


class ResumableTrainLoader:
    """LightningDataModule mixin: its training loader's random streams travel with every checkpoint.

    Lightning saves a datamodule's ``state_dict()`` in each checkpoint and, when a run resumes, calls
    ``load_state_dict`` before any loader exists; :meth:`resumable` applies that state to the new
    training loader before its first iterator is made, so the resumed epoch shuffles and augments
    exactly as in an uninterrupted run. (Lightning's own loader-state restore is skipped when a run
    resumes at an epoch boundary, which is where ``last.ckpt`` is written.)
    """

    def state_dict(self) -> dict[str, Any]:
        loader = getattr(self, "_train_loader", None)
        return {"train_loader": loader.stream_state()} if hasattr(loader, "stream_state") else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending_train_state = state_dict.get("train_loader")

    def resumable(self, loader: Any) -> Any:
        """Register ``loader`` as the training loader, restoring a resumed run's state into it."""
        pending = getattr(self, "_pending_train_state", None)
        if pending is not None and hasattr(loader, "load_stream_state"):
            loader.load_stream_state(pending)
            self._pending_train_state = None
        self._train_loader = loader
        return loader


def numpy_global_state() -> dict[str, Any]:
    """``np.random``'s legacy global MT19937 state as plain data."""
    state = np.random.get_state(legacy=False)
    return {**state, "state": {"key": state["state"]["key"].tolist(), "pos": int(state["state"]["pos"])}}


def set_numpy_global_state(state: dict[str, Any]) -> None:
    key = np.asarray(state["state"]["key"], dtype=np.uint32)
    np.random.set_state({**state, "state": {"key": key, "pos": state["state"]["pos"]}})

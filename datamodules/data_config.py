"""The data side of a run, written once: :class:`DataConfig` and its :class:`AugmentConfig`.

The DataModule, the GPU batch iterator and the CPU augmenter all take these objects, so a setting
cannot act on one path and be ignored by another (an ``aug_elastic`` that changed the run hash but
not the GPU-cache training was exactly that bug). They are built from a ``TrainConfig`` dict by
:meth:`DataConfig.from_mapping`: every field here is named like its ``TrainConfig`` field, and the
augmentation switches are its ``augment`` and ``aug_*`` fields.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from datamodules.errors import NerveBenchError

RESIZE_MODES = ("resize", "pad")


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity (a Slurm or container limit), else the count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this platform (macOS)
        return os.cpu_count() or 1


class DataConfigError(NerveBenchError, ValueError):
    """A data setting out of range (one line naming it)."""


@dataclass(frozen=True)
class AugmentConfig:
    """Which training augmentations run; each is applied to a sample with probability ``p``."""

    enabled: bool = True
    flip: bool = True
    affine: bool = True
    elastic: bool = False
    brightness: bool = True
    noise: bool = True
    p: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise DataConfigError(f"augmentation probability p={self.p} is outside [0, 1]")

    def active(self) -> tuple[str, ...]:
        """The switches that act (none when augmentation is off)."""
        if not self.enabled:
            return ()
        return tuple(name for name in SWITCHES if getattr(self, name))

    @classmethod
    def only(cls, *names: str, p: float = 0.5) -> AugmentConfig:
        """Exactly the named switches on (tests and tools)."""
        unknown = sorted(set(names) - set(SWITCHES))
        if unknown:
            raise DataConfigError(f"unknown augmentation(s) {unknown}; known: {', '.join(SWITCHES)}")
        return cls(True, p=p, **{name: name in names for name in SWITCHES})


SWITCHES = ("flip", "affine", "elastic", "brightness", "noise")  # TrainConfig: aug_<switch>


@dataclass(frozen=True)
class DataConfig:
    """Splitting, sizes, batching and augmentation of one run (names as in ``TrainConfig``).

    ``batch_size`` is the GLOBAL training batch: each of the run's processes loads
    ``batch_size / world_size`` samples of every step, so the recipe is the same on 1 device or 8.
    """

    fold: int = 0
    n_folds: int = 5
    holdout_fraction: float | None = None
    split_seed: int = 0
    inner_fraction: float = 0.15
    link_subjects: bool = True  # subjects sharing a frame are one unit (datamodules.fingerprints)
    seed: int = 0
    image_size: int = 256
    resize_mode: str = "resize"
    batch_size: int = 16
    eval_batch_size: int = 64
    num_workers: int = 0
    clean_contradictory: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise DataConfigError(f"resize_mode={self.resize_mode!r} is not one of {', '.join(RESIZE_MODES)}")
        checks = (
            ("image_size", self.image_size >= 32, ">= 32"),
            ("batch_size", self.batch_size >= 2, ">= 2 (BatchNorm needs two samples)"),
            ("eval_batch_size", self.eval_batch_size >= 1, ">= 1"),
            ("num_workers", self.num_workers >= 0, ">= 0"),
        )
        for name, ok, requirement in checks:
            if not ok:
                raise DataConfigError(f"{name}={getattr(self, name)!r} must be {requirement}")

    def loader_workers(self) -> int:
        """``num_workers`` capped at the CPUs this process may use (its affinity, as torch's own
        warning counts them): more workers than CPUs only contend. The stream is a pure function of
        (seed, epoch, sample), so the cap changes no batch, only who decodes it."""
        return min(self.num_workers, usable_cpus())

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> DataConfig:
        """From ``TrainConfig.to_dict()`` (or any mapping with those names; absent keys keep defaults)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"augment"}
        values = {k: config[k] for k in names if k in config}
        aug_defaults = AugmentConfig()
        switches = {s: bool(config.get(f"aug_{s}", getattr(aug_defaults, s))) for s in SWITCHES}
        augment = AugmentConfig(enabled=bool(config.get("augment", True)), **switches)
        return cls(**values, augment=augment)

    def per_rank_batch(self, world_size: int) -> int:
        """Training samples per process and step; the global batch must split evenly."""
        world = max(int(world_size), 1)
        if self.batch_size % world:
            raise DataConfigError(
                f"batch_size={self.batch_size} (the global batch) is not divisible by the {world} "
                "training processes (devices x num_nodes); choose a multiple of the world size"
            )
        return self.batch_size // world

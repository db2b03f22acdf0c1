"""Our folds, computed by our own split code, for methods trained outside nerve-bench.

Every fold comes from ``UltrasoundNerveDataModule`` built from the benchmark's TrainConfig, so the
three parts are exactly those a nerve-bench run of that fold uses: ``train`` (the images its
weights are fitted on, after any ``clean_contradictory`` drop), ``inner`` (the selection set its
epoch and post-processing are chosen on) and ``outer`` (the fold it is scored on, once).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.core.config import ConfigError, TrainConfig, every_fold
from datamodules.datamodule import UltrasoundNerveDataModule
from datamodules.fingerprints import link_records
from datamodules.kaggle import TrainSet, content_hash, load_train

FOLDS_FORMAT = "nerve-bench folds 1"


@dataclass
class Fold:
    cfg: TrainConfig  # the benchmark config with this fold set
    dm: UltrasoundNerveDataModule  # set up: train_set, train/val/test indices

    def stems(self, indices: np.ndarray) -> list[str]:
        return [self.dm.train_set.stems[i] for i in indices]

    @property
    def train(self) -> list[str]:
        return self.stems(self.dm.fit_indices)

    @property
    def inner(self) -> list[str]:
        return self.stems(self.dm.inner_indices)

    @property
    def outer(self) -> list[str]:
        return self.stems(self.dm.outer_indices)


def fold_ids(cfg: TrainConfig) -> list[int]:
    """The outer folds of the config's split (hold-out mode has one: fold 0)."""
    return list(every_fold(cfg))


def check_fold(cfg: TrainConfig, fold: int) -> None:
    ids = fold_ids(cfg)
    if fold not in ids:
        raise ConfigError(f"fold {fold} does not exist: the split has folds {ids[0]}..{ids[-1]}")


def split_fold(cfg: TrainConfig, data_dir: Path, fold: int, train_set: TrainSet | None = None) -> Fold:
    """One outer fold of ``data_dir`` split by our DataModule exactly as a run of ``cfg`` splits it."""
    check_fold(cfg, fold)
    cfg = dataclasses.replace(cfg, fold=fold)
    dm = UltrasoundNerveDataModule.from_config_dict(data_dir, cfg.to_dict(), preloaded=train_set)
    dm.setup("fit")
    return Fold(cfg, dm)


def _subjects(fold: Fold, indices: np.ndarray) -> list[int]:
    return np.unique(fold.dm.subjects[indices]).tolist()


def fold_entry(fold: Fold) -> dict[str, Any]:
    dm = fold.dm
    return {
        "fold": fold.cfg.fold,
        "train": fold.train,
        "inner": fold.inner,
        "outer": fold.outer,
        "train_subjects": _subjects(fold, dm.fit_indices),
        "inner_subjects": _subjects(fold, dm.inner_indices),
        "outer_subjects": _subjects(fold, dm.outer_indices),
    }


def folds_document(cfg: TrainConfig, data_dir: Path, train_set: TrainSet | None = None) -> dict[str, Any]:
    """Every outer fold's train / inner / outer stems, with the split seed and the data's content hash;
    ``train_set``: ``data_dir``'s, already read."""
    train_set = load_train(data_dir) if train_set is None else train_set
    folds = [split_fold(cfg, data_dir, k, train_set) for k in fold_ids(cfg)]
    return {
        "format": FOLDS_FORMAT,
        "split_seed": cfg.split_seed,
        "content_hash": content_hash(train_set),
        "data": {
            "name": data_dir.resolve().name,
            "n_images": len(train_set),
            "n_subjects": int(np.unique(train_set.subjects).size),
        },
        "split": {
            "mode": "holdout" if cfg.holdout_fraction is not None else "kfold",
            "n_folds": len(folds),
            "inner_fraction": cfg.inner_fraction,
            "holdout_fraction": cfg.holdout_fraction,
            "clean_contradictory": cfg.clean_contradictory,
            "link_subjects": cfg.link_subjects,
            "linked_subjects": link_records(train_set.units()[1]),  # the data's, linked or not
        },
        "parts": "train: the images a nerve-bench run fits its weights on; inner: the selection set it "
        "chooses its epoch and post-processing on; outer: the fold it is scored on once, never used "
        "for a decision. Stems name train/<stem>.tif of the data directory.",
        "folds": [fold_entry(f) for f in folds],
    }

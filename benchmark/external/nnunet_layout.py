"""nnU-Net's folders under the results directory: the raw 2D dataset, our splits, the environment.

``RESULTS/nnunet/`` holds ``nnUNet_raw/Dataset501_NerveBench`` (``imagesTr/<stem>_0000.png`` one
grey channel, ``labelsTr/<stem>.png`` 0/1, ``dataset.json``), ``nnUNet_preprocessed`` (with our
``splits_final.json``: nnU-Net's fold k trains on our fold-k ``train`` part and validates on its
``inner`` set, so nothing nnU-Net selects on sees the outer fold), ``nnUNet_results/seed_<S>``,
``predictions/`` and ``logs/``. ``source.json`` records the data's content hash and the split it
was made for; a working folder made for other data or another split is refused, never mixed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.core.summary import dumps, write_json_atomic
from benchmark.external.folds import Fold
from datamodules.errors import DataError
from datamodules.kaggle import TrainSet

DATASET_ID, DATASET = 501, "Dataset501_NerveBench"
CONFIGURATION = "2d"
PLANNERS = {  # --planner -> (nnU-Net planner class, plans identifier, board row)
    "default": ("ExperimentPlanner", "nnUNetPlans", "nnunet_2d"),
    "resenc-m": ("nnUNetPlannerResEncM", "nnUNetResEncUNetMPlans", "nnunet_resenc_m_2d"),
}
# nnU-Net reads these at use; set for every nnU-Net call so it starts no worker pools it need not
# start (the export and evaluation pools get one process) and logs nowhere but its folders. On CPU
# its augmentation also runs in the training process (nnUNet_n_proc_DA=0) and nothing is compiled;
# on a GPU nnU-Net keeps its own augmentation workers and its torch.compile default.
QUIET_ENV = {
    "nnUNet_def_n_proc": "1",
    "nnUNet_wandb_enabled": "0",
    "WANDB_MODE": "offline",
    "HF_HUB_OFFLINE": "1",
    "NO_ALBUMENTATIONS_UPDATE": "1",
}


@dataclass(frozen=True)
class Layout:
    work: Path  # RESULTS/nnunet

    @property
    def raw(self) -> Path:
        return self.work / "nnUNet_raw" / DATASET

    @property
    def preprocessed(self) -> Path:
        return self.work / "nnUNet_preprocessed" / DATASET

    def results(self, seed: int) -> Path:
        return self.work / "nnUNet_results" / f"seed_{seed}"

    def fold_dir(self, plans: str, seed: int, fold: int) -> Path:
        return self.results(seed) / DATASET / f"nnUNetTrainer__{plans}__{CONFIGURATION}" / f"fold_{fold}"

    def predictions(self, plans: str, seed: int, fold: int) -> Path:
        return self.work / "predictions" / plans / f"seed_{seed}" / f"fold_{fold}"

    def log(self, name: str) -> Path:
        return self.work / "logs" / f"{name}.log"

    def image(self, stem: str) -> Path:
        return self.raw / "imagesTr" / f"{stem}_0000.png"

    def env(self, seed: int, device: str) -> dict[str, str]:
        """The environment of an nnU-Net call for ``seed``: its three folders and :data:`QUIET_ENV`."""
        cpu = {"nnUNet_n_proc_DA": "0", "nnUNet_compile": "f"} if device == "cpu" else {}
        return {
            **os.environ,
            **QUIET_ENV,
            **cpu,
            "nnUNet_raw": str(self.work / "nnUNet_raw"),
            "nnUNet_preprocessed": str(self.work / "nnUNet_preprocessed"),
            "nnUNet_results": str(self.results(seed)),
        }


def splits_final(folds: list[Fold]) -> list[dict[str, list[str]]]:
    """nnU-Net's splits_final.json: fold k = our fold k's train part (train) and inner set (val)."""
    return [{"train": f.train, "val": f.inner} for f in folds]


def dataset_json(n_images: int) -> dict[str, Any]:
    return {
        "channel_names": {"0": "ultrasound"},
        "labels": {"background": 0, "nerve": 1},
        "numTraining": n_images,
        "file_ending": ".png",
        "name": "nerve-bench: Kaggle ultrasound nerve segmentation (2D, 420x580)",
    }


def _png(path: Path, array: np.ndarray) -> None:
    """A plain write: ``source.json``, written last and atomically, is what marks the conversion done."""
    import cv2

    ok, data = cv2.imencode(".png", np.ascontiguousarray(array, dtype=np.uint8))
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    path.write_bytes(data.tobytes())


def source_stamp(content_hash: str, folds: list[Fold]) -> dict[str, Any]:
    splits = hashlib.sha256(dumps({"splits": splits_final(folds)}).encode()).hexdigest()[:16]
    return {"content_hash": content_hash, "split_seed": folds[0].cfg.split_seed, "splits_sha": splits}


def check_source(layout: Layout, stamp: dict[str, Any]) -> bool:
    """True when the working folder was made for this data and split; DataError when for other ones."""
    path = layout.work / "source.json"
    if not path.is_file():
        return False
    try:
        saved = json.loads(path.read_text())
    except ValueError:
        return False  # a damaged stamp: the conversion is redone
    if saved != stamp:
        raise DataError(
            path, f"this nnU-Net working folder was made for {saved}, not {stamp}; use another --results-dir"
        )
    return True


def convert(layout: Layout, train_set: TrainSet, folds: list[Fold], stamp: dict[str, Any]) -> None:
    """Write the raw dataset and splits_final.json (skipped when ``source.json`` says they are there)."""
    if check_source(layout, stamp):
        return
    for sub in ("imagesTr", "labelsTr"):
        (layout.raw / sub).mkdir(parents=True, exist_ok=True)
    for i, stem in enumerate(train_set.stems):
        _png(layout.image(stem), train_set.images[i])
        _png(layout.raw / "labelsTr" / f"{stem}.png", train_set.masks[i])
    write_json_atomic(layout.raw / "dataset.json", dataset_json(len(train_set)))
    write_json_atomic(layout.preprocessed / "splits_final.json", splits_final(folds))  # type: ignore[arg-type]
    write_json_atomic(layout.work / "source.json", stamp)

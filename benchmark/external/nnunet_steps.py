"""nnU-Net's own code, in one child process: ``python -m benchmark.external.nnunet_steps '<json>'``.

Run by :mod:`benchmark.external.nnunet` in a child process whose environment names nnU-Net's three
folders (``nnUNet_raw``, ``nnUNet_preprocessed``, ``nnUNet_results``) and turns off what it need not
start (``nnunet_layout.QUIET_ENV``), with its output going to a log file. Nothing of nnU-Net is
re-implemented here: planning and preprocessing are ``plan_and_preprocess_api``; training is
``nnUNetTrainer`` resumed by ``run_training.maybe_load_checkpoint`` with ``continue_training=True``,
which is what ``nnUNetv2_train --c`` does; prediction is ``nnUNetPredictor`` with the final checkpoint.

The json holds ``plan`` (or null: fingerprint, plan, preprocess the 2d configuration) and ``folds``:
per fold, train it unless it is finished, run nnU-Net's validation on its inner set when asked,
write ``nerve_bench_facts.json`` beside the checkpoint and predict the outer fold's images into a
folder. One process for all of it: nnU-Net and torch are imported once, not once per fold.
"""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path
from typing import Any

from benchmark.core.environ import environ
from benchmark.core.files import atomic_write

FACTS = "nerve_bench_facts.json"


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = (
            _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def plan(job: dict[str, Any]) -> None:
    # nnU-Net's planner sets torch's thread count to nnUNet_n_proc_DA, and refuses 0
    one = {"nnUNet_n_proc_DA": "1"} if os.environ.get("nnUNet_n_proc_DA") == "0" else {}
    with environ(one):
        _plan_and_preprocess(job)


def _plan_and_preprocess(job: dict[str, Any]) -> None:
    from batchgenerators.utilities.file_and_folder_operations import load_json, save_json
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )

    n = int(job["num_processes"])
    # The raw dataset was written from validated data, so nnU-Net's integrity check (a pool) is skipped.
    extract_fingerprints([job["dataset_id"]], num_processes=n, check_dataset_integrity=False, clean=False)
    plans = plan_experiments([job["dataset_id"]], experiment_planner_class_name=job["planner"])
    if job.get("plans_2d"):  # budgeted or test runs only: nnU-Net's documented way is editing the plans
        path = Path(job["preprocessed"]) / f"{plans}.json"
        data = load_json(str(path))
        data["configurations"]["2d"] = _merge(data["configurations"]["2d"], job["plans_2d"])
        save_json(data, str(path), sort_keys=False)
    preprocess([job["dataset_id"]], plans_identifier=plans, configurations=("2d",), num_processes=(n,))


def _seed(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _trainer(job: dict[str, Any], device: Any) -> Any:
    from batchgenerators.utilities.file_and_folder_operations import join, load_json
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    plans = load_json(join(job["preprocessed"], job["plans"] + ".json"))
    plans["continue_training"] = True  # what nnUNetv2_train --c passes
    dataset = load_json(join(job["preprocessed"], "dataset.json"))
    trainer = nnUNetTrainer(
        plans=plans, configuration="2d", fold=job["fold"], dataset_json=dataset, device=device
    )
    trainer.num_epochs = int(job["epochs"])
    for key, attr in (
        ("iterations_per_epoch", "num_iterations_per_epoch"),
        ("val_iterations", "num_val_iterations_per_epoch"),
    ):
        if job.get(key) is not None:
            setattr(trainer, attr, int(job[key]))
    return trainer


def _facts(trainer: Any) -> dict[str, Any]:
    log = trainer.logger.get_checkpoint()
    seconds = float(sum(e - s for s, e in zip(log["epoch_start_timestamps"], log["epoch_end_timestamps"])))
    epochs = len(log["epoch_end_timestamps"])
    patches = epochs * trainer.num_iterations_per_epoch * trainer.batch_size
    cm = trainer.configuration_manager
    return {
        "params": int(sum(p.numel() for p in trainer.network.parameters())),
        "train_time_s": seconds,
        "epochs_run": epochs,
        "train_img_s": patches / seconds if seconds > 0 else None,
        "batch_size": int(trainer.batch_size),
        "patch_size": [int(p) for p in cm.patch_size],
        "iterations_per_epoch": int(trainer.num_iterations_per_epoch),
        "trainer": type(trainer).__name__,
        "network": cm.network_arch_class_name.rsplit(".", 1)[-1],
        "ema_pseudo_dice_inner": float(log["ema_fg_dice"][-1]) if log["ema_fg_dice"] else None,
    }


def train(job: dict[str, Any], device: Any) -> None:
    from nnunetv2.run.run_training import maybe_load_checkpoint

    _seed(int(job["seed"]))
    trainer = _trainer(job, device)
    final = Path(trainer.output_folder) / "checkpoint_final.pth"
    if final.is_file():
        trainer.load_checkpoint(str(final))  # finished earlier: only the facts (and validation) are wanted
    else:
        maybe_load_checkpoint(trainer, continue_training=True, validation_only=False)  # nnUNetv2_train --c
        trainer.run_training()
    if job.get("validate") and not (Path(trainer.output_folder) / "validation" / "summary.json").is_file():
        trainer.perform_actual_validation(False)  # nnU-Net's own validation, on our inner set
    facts = _facts(trainer)
    # atomic: the parent reads "facts written" as "this fold trained"
    atomic_write(Path(trainer.output_folder) / FACTS, json.dumps(facts, indent=2, sort_keys=True) + "\n")


def _drop_unreadable(out: Path) -> None:
    """Remove masks a killed run left half-written: nnU-Net skips files that exist (overwrite=False)."""
    import cv2
    import numpy as np

    for path in out.glob("*.png"):
        if cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED) is None:
            path.unlink()


def predict(job: dict[str, Any], device: Any) -> None:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(
        tile_step_size=float(job["tile_step_size"]),
        use_gaussian=True,
        use_mirroring=bool(job["mirroring"]),
        perform_everything_on_device=device.type == "cuda",
        device=device,
        verbose=False,
        allow_tqdm=False,
    )
    predictor.initialize_from_trained_model_folder(
        job["model_dir"], use_folds=(job["fold"],), checkpoint_name="checkpoint_final.pth"
    )
    out = Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)
    _drop_unreadable(out)
    predictor.predict_from_files_sequential(
        [[p] for p in job["images"]],
        [str(out / s) for s in job["stems"]],
        save_probabilities=False,
        overwrite=False,
    )


def main(argv: list[str]) -> int:
    job = json.loads(argv[0])
    if job.get("plan"):
        plan(job["plan"])
    import torch

    from benchmark.training.device import release_run_memory

    for fold in job["folds"]:
        device = torch.device(fold["device"])
        if device.type == "cuda":  # as nnUNetv2_train does on a GPU (nnunetv2/run/run_training.py)
            torch.set_num_threads(1)
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = False, True
        train(fold, device)
        predict(fold, device)
        release_run_memory(compiled=True)  # nnU-Net compiles its network: a clean cache per fold
        print(f"nerve-bench: fold {fold['fold']} seed {fold['seed']} trained and predicted", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Training one run: its DataModule, its Lightning Trainer, and ``train`` (resumable from ``last.ckpt``).

Scoring and the summary come after, in :mod:`benchmark.evaluation.finalize`; :mod:`benchmark.pipeline`
chains the two.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from benchmark.core.config import TrainConfig
from benchmark.training.callbacks import EpochHistory, ResumeRandomState
from benchmark.training.checkpoint import (
    BEST,
    LAST,
    SafeCheckpointIO,
    resume_checkpoint,
    save_plain_checkpoint,
)
from benchmark.training.device import resolve_precision
from benchmark.training.module import SegModule, has_trainable_params

# Lightning notices that repeat for every run of a 45-run grid and say nothing about the run.
for _pattern in (".*treespec.*", ".*smaller than the logging interval.*", ".*litlogger.*"):
    warnings.filterwarnings("ignore", message=_pattern)
# Lightning's per-Trainer notices ("GPU available", "TPU available", its litlogger tip, the
# limit_train_batches echo) print four lines for every one of a grid's runs and say nothing about the
# run; its warnings and errors still show.
logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)


def make_datamodule(cfg: TrainConfig, data_dir: str | Path, preloaded: Any = None) -> Any:
    """The run's DataModule; with ``gpu_cache`` its training loader is the GPU-resident fast path.

    ``preloaded``: an already-decoded ``kaggle.TrainSet`` of ``data_dir`` (shared by the Ray executor).
    """
    from datamodules.datamodule import UltrasoundNerveDataModule

    if not cfg.gpu_cache:
        return UltrasoundNerveDataModule.from_config_dict(data_dir, cfg.to_dict(), preloaded=preloaded)
    from datamodules.gpu_data import GpuCachedDataModule

    return GpuCachedDataModule.from_config_dict(data_dir, cfg.to_dict(), preloaded=preloaded)


def _logger(cfg: TrainConfig, out_dir: Path) -> Any:
    from benchmark.training.logger import lightning_logger

    return lightning_logger(cfg, cfg.run_name(), out_dir) or False


def build_trainer(cfg: TrainConfig, out_dir: Path, callbacks: list | None = None, **overrides: Any) -> Any:
    """The Trainer of a run: best/last checkpoints, seeded and deterministic.

    ``best.ckpt`` is the selected epoch: the highest val/kaggle_dice on the inner selection set
    (``select="best"``) or simply the latest epoch (``select="last"``); the outer fold is never seen.
    Checkpoints are written atomically and read weights-only (``SafeCheckpointIO``) and carry the
    epoch history and every random stream (``EpochHistory``, ``ResumeRandomState``), so a resumed run
    continues exactly where the killed one stopped.
    """
    from lightning import Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint

    ckpt_dir = str(out_dir / "checkpoints")
    # Two callbacks: Lightning >= 2.5 writes save_last copies only when a top-k file is written,
    # but resuming needs last.ckpt after every epoch. "last" selection monitors the epoch number
    # (max = latest); a second monitor=None callback would share last.ckpt's callback state key.
    select = "val/kaggle_dice" if cfg.select == "best" else "epoch"
    checkpoint = [
        ModelCheckpoint(dirpath=ckpt_dir, filename=Path(BEST).stem, monitor=select, mode="max",
                        save_top_k=1, auto_insert_metric_name=False, enable_version_counter=False),
        ModelCheckpoint(dirpath=ckpt_dir, filename=Path(LAST).stem, monitor=None, save_top_k=1,
                        auto_insert_metric_name=False, enable_version_counter=False),
    ] if overrides.get("enable_checkpointing", True) else []  # fmt: skip
    gpu = cfg.accelerator in ("gpu", "cuda") or (cfg.accelerator == "auto" and torch.cuda.is_available())
    deterministic: bool | str = cfg.deterministic and ("warn" if gpu else True)
    kwargs = dict(
        max_epochs=cfg.epochs, accelerator=cfg.accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes,
        precision=resolve_precision(cfg.precision, cfg.accelerator), deterministic=deterministic,
        limit_train_batches=cfg.limit_train_batches or 1.0, num_sanity_val_steps=0,
        callbacks=[*checkpoint, EpochHistory(), ResumeRandomState(), *(callbacks or [])],
        plugins=[SafeCheckpointIO()], logger=_logger(cfg, out_dir), log_every_n_steps=10,
        enable_progress_bar=cfg.progress_bar, enable_model_summary=cfg.progress_bar,
        default_root_dir=str(out_dir),
    )  # fmt: skip
    kwargs.update(overrides)
    return Trainer(**kwargs)


def train(cfg: TrainConfig, module: SegModule, dm: Any, out_dir: Path, callbacks: list | None = None) -> Any:
    """Fit ``module`` (resuming from ``last.ckpt`` of the same config); returns the Trainer."""
    ckpt_dir = out_dir / "checkpoints"
    trainer = build_trainer(cfg, out_dir, callbacks)
    if not has_trainable_params(module.model):
        # Nothing to optimise (the `empty` baseline): its only checkpoint is the untrained model.
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        save_plain_checkpoint(module, ckpt_dir / BEST)
        save_plain_checkpoint(module, ckpt_dir / LAST)
        return trainer
    # weights_only: a resumed checkpoint is data, never code (SafeCheckpointIO enforces it as well).
    resume = resume_checkpoint(ckpt_dir, cfg)
    if resume is not None and cfg.num_workers > 0 and not cfg.gpu_cache:
        # Persistent loader workers hold augmentation state that the main process cannot save.
        note = "the augmentation stream restarts, so the run is not bit-identical to an uninterrupted one"
        print(f"warning: {resume}: resuming with num_workers={cfg.num_workers}: {note}", file=sys.stderr)
    trainer.fit(module, datamodule=dm, ckpt_path=resume, weights_only=True)
    if trainer.interrupted:
        raise KeyboardInterrupt
    return trainer

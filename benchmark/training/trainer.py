"""Training one run: its DataModule, its Lightning Trainer, and ``train`` (resumable from ``last.ckpt``).

Scoring and the summary come after, in :mod:`benchmark.evaluation.finalize`; :mod:`benchmark.pipeline`
chains the two.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from benchmark.core.config import TrainConfig
from benchmark.training.callbacks import (
    CloseProcessGroup,
    ConvPrecision,
    EpochHistory,
    RelocatableCheckpoint,
    ResumeCheckpoint,
    ResumeRandomState,
    StopRequested,
)
from benchmark.training.checkpoint import (
    BEST,
    LAST,
    SafeCheckpointIO,
    resume_checkpoint,
    save_plain_checkpoint,
)
from benchmark.training.device import resolve_precision, set_conv_precision
from benchmark.training.module import SegModule
from models.info import has_trainable_params

if TYPE_CHECKING:
    from lightning import Trainer

    from datamodules.datamodule import UltrasoundNerveDataModule


def make_datamodule(
    cfg: TrainConfig, data_dir: str | Path, preloaded: Any = None
) -> UltrasoundNerveDataModule:
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

    checkpoint = _checkpoints(cfg, out_dir) if overrides.get("enable_checkpointing", True) else []
    own = [*checkpoint, EpochHistory(), ResumeRandomState(cfg.seed), CloseProcessGroup(), StopRequested()]
    gpu = uses_gpu(cfg)
    precision = resolve_precision(cfg.precision, cfg.accelerator)
    if gpu:
        set_conv_precision(precision)  # training and then scoring, in this process
        own.append(ConvPrecision(precision))  # and in the ranks ddp_spawn starts
    kwargs = dict(
        max_epochs=cfg.epochs,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        precision=precision,
        deterministic=determinism(cfg, gpu),
        # cuDNN's autotuner picks kernels by timing, so it is on only when determinism is off.
        benchmark=gpu and not cfg.deterministic,
        # One BatchNorm over the whole global batch on every device count: the recipe of 8 GPUs is
        # the recipe of 1 (CPU/gloo has no SyncBatchNorm; there each process normalises its slice).
        sync_batchnorm=gpu and cfg.world_size() > 1,
        limit_train_batches=cfg.limit_train_batches or 1.0,
        num_sanity_val_steps=0,
        callbacks=[*own, *(callbacks or [])],
        plugins=[SafeCheckpointIO()],
        # Built only when not overridden: a W&B logger reads its environment and makes its directory.
        logger=overrides["logger"] if "logger" in overrides else _logger(cfg, out_dir),
        log_every_n_steps=10,
        enable_progress_bar=cfg.progress_bar,
        enable_model_summary=cfg.progress_bar,
        default_root_dir=str(out_dir),
    )
    kwargs.update(overrides)
    if cfg.compile and kwargs["sync_batchnorm"]:
        rank_zero_warn(COMPILE_SYNC_BN)
    return Trainer(**kwargs)


def _checkpoints(cfg: TrainConfig, out_dir: Path) -> list:
    """best.ckpt (the selected epoch, weights only) and last.ckpt (everything a resume needs)."""
    ckpt_dir = str(out_dir / "checkpoints")
    # Two callbacks: Lightning >= 2.5 writes save_last copies only when a top-k file is written,
    # but resuming needs last.ckpt after every epoch (or every checkpoint_every_s). "last" selection
    # monitors the epoch number (max = latest); a second monitor=None callback would share
    # last.ckpt's callback state key.
    select = "val/kaggle_dice" if cfg.select == "best" else "epoch"
    return [
        RelocatableCheckpoint(
            dirpath=ckpt_dir,
            filename=Path(BEST).stem,
            monitor=select,
            mode="max",
            save_top_k=1,
            save_weights_only=True,  # scored, never resumed from: no optimiser moments (2/3 of it)
            auto_insert_metric_name=False,
            enable_version_counter=False,
        ),
        ResumeCheckpoint(
            cfg.checkpoint_every_s,
            dirpath=ckpt_dir,
            filename=Path(LAST).stem,
            auto_insert_metric_name=False,
            enable_version_counter=False,
        ),
    ]


# Not measured here (no GPU has run it): read from pytorch/pytorch#161302 (open, 2025-08).
COMPILE_SYNC_BN = (
    "compile: true with DDP on several GPUs: torch.compile graph-breaks at every SyncBatchNorm "
    "(pytorch/pytorch#161302), so the compiled model runs in pieces and may be no faster than eager "
    "(`speed` times one process: compare epoch times beside compile: false), or set compile: false"
)


def uses_gpu(cfg: TrainConfig) -> bool:
    """Whether the run trains on CUDA devices."""
    return cfg.trains_on_gpu()


def determinism(cfg: TrainConfig, gpu: bool) -> bool | str:
    """Lightning's ``deterministic``: strict on CPU; on GPU "warn" (torch warns, once per op, where an op
    has no deterministic CUDA kernel, instead of stopping the run). Our own models avoid every such op
    they can (``models.blocks.upsample2x``, the math attention kernel, mean pooling); ``benchmark
    doctor`` lists per model whether a rerun is bit-identical on the box and which ops warned."""
    if not cfg.deterministic:
        return False
    return "warn" if gpu else True


def train(
    cfg: TrainConfig,
    module: SegModule,
    dm: UltrasoundNerveDataModule,
    out_dir: Path,
    callbacks: list | None = None,
) -> Trainer:
    """Fit ``module`` (resuming from ``last.ckpt`` of the same config); returns the Trainer."""
    ckpt_dir = out_dir / "checkpoints"
    trainer = build_trainer(cfg, out_dir, callbacks)
    if not has_trainable_params(module.model):
        # Nothing to optimise (the `empty` baseline): its only checkpoint is the untrained model,
        # written by global rank 0 alone (under DDP every rank runs this).
        if trainer.is_global_zero:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            save_plain_checkpoint(module, ckpt_dir / BEST)
            save_plain_checkpoint(module, ckpt_dir / LAST)
        return trainer
    # weights_only: a resumed checkpoint is data, never code (SafeCheckpointIO enforces it as well).
    resume = resume_checkpoint(ckpt_dir, cfg)
    trainer.fit(module, datamodule=dm, ckpt_path=resume, weights_only=True)
    if trainer.interrupted:
        raise KeyboardInterrupt
    return trainer

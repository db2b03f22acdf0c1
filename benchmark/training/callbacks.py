"""Lightning callbacks of every training run: the per-epoch history and the random state for exact resume.

``EpochHistory`` records, after each validated epoch, the train and validation losses (the module's
``torchmetrics.MeanMetric`` means: one device-to-host transfer per epoch, none per step), the
validation Kaggle Dice, wall-clock times and the number of training images, and writes the history
into every checkpoint as ``nerve_bench_history`` (finalize reads the full one from ``last.ckpt``).

``ResumeRandomState`` puts every global random stream (torch CPU and CUDA, numpy, python ``random``)
of every rank into each checkpoint as plain data, and restores it when a run resumes, just before
training starts. The training data stream (order and augmentation) needs no state: it is a pure
function of (seed, epoch, sample) (:mod:`datamodules.stream`), and Lightning restores the epoch.
Together they make kill-and-resume at an epoch boundary bit-identical to an uninterrupted run on
the same machine, with or without loader workers.

``ResumeCheckpoint`` writes ``last.ckpt`` after an epoch once ``every_s`` seconds have passed since
its previous write, and always after the final epoch. On the CPU benchmark an epoch takes seconds
and a full checkpoint (weights and AdamW moments: 290 MB for the ResNet-34 U-Net) about one, so one
write per epoch was a third of a run's time; a kill then costs at most ``every_s`` of training.

``ConvPrecision`` sets cuDNN's TF32 switch for the recipe in every rank (spawned ones included).

``CloseProcessGroup`` destroys a DDP process group when its process exits. Lightning does so only
for NCCL; a gloo group left to interpreter shutdown kills the process with SIGABRT ("terminate
called without an active exception") in about 1 exit in 10 (measured: 4 of 40 two-process gloo runs
without it, 0 of 80 with it), which turned finished CPU DDP runs into failed exit codes.
"""

from __future__ import annotations

import atexit
import logging
import math
import re
import time
import warnings
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from benchmark.core import stop
from benchmark.training.device import set_conv_precision, synchronize
from benchmark.training.random_state import (
    gather_per_rank,
    global_rng_state,
    own_rank,
    rank_seed,
    set_global_rng_state,
)

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from benchmark.training.module import SegModule

HISTORY_KEYS = (
    "epoch",
    "train_loss",
    "val_loss",
    "val_kaggle_dice",
    "epoch_time_s",
    "train_s",
    "train_images",
)
HISTORY_CKPT_KEY = "nerve_bench_history"


def empty_history() -> dict[str, list]:
    return {k: [] for k in HISTORY_KEYS}


def checkpoint_history(ckpt: Mapping[str, Any]) -> dict[str, list]:
    """The history stored in a checkpoint dict (empty lists where it has none)."""
    saved = ckpt.get(HISTORY_CKPT_KEY) or {}
    return {k: list(saved.get(k, [])) for k in HISTORY_KEYS}


# At import: every process that runs one of our Trainers imports this module, the ranks that
# ddp_spawn starts included (they unpickle these callbacks before Lightning sets up the group).
# Lightning notices that repeat for every run of a 45-run grid and say nothing about the run; on a
# resume, that the run's own checkpoint directory is not empty (it holds what is resumed); and under
# DDP, that an epoch value is logged without sync_dist: ours are reduced over the ranks already (a
# MeanMetric, the scores' Metric).
_NOTICES = (
    ".*treespec.*",
    ".*smaller than the logging interval.*",
    ".*litlogger.*",
    "Checkpoint directory .* exists and is not empty",
    r"It is recommended to use `self\.log\(.*sync_dist=True\)`",
)
for _pattern in _NOTICES:
    warnings.filterwarnings("ignore", message=_pattern)
# Lightning's per-Trainer notices ("GPU available", "TPU available", its litlogger tip, the
# limit_train_batches echo, a DDP group's banner) print lines for every one of a grid's runs and say
# nothing about the run; its warnings and errors still show.
for _logger in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.distributed"):
    logging.getLogger(_logger).setLevel(logging.WARNING)


class EpochHistory(Callback):
    """One history row per training epoch, recorded before that epoch's checkpoints are written."""

    def __init__(self) -> None:
        self.history = empty_history()
        self._t0 = self._t_train = 0.0
        self._images = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0, self._t_train, self._images = time.perf_counter(), 0.0, 0

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._images += int(batch["image"].shape[0])  # a shape, not a value: no device sync

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            # The last steps' kernels may still be queued on a GPU: they are training time, not
            # validation's (one wait per epoch; none on CPU).
            synchronize(pl_module.device)
            self._t_train = time.perf_counter() - self._t0

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: SegModule) -> None:  # type: ignore[override]
        # Non-checkpoint callbacks run before ModelCheckpoint's hook, so this epoch is in its files.
        elapsed = time.perf_counter() - self._t0
        scored = pl_module.last_eval
        row = {
            "epoch": int(trainer.current_epoch),
            "train_loss": pl_module.epoch_loss("train"),
            "val_loss": pl_module.epoch_loss("val"),
            "val_kaggle_dice": float(scored["metrics"]["kaggle_dice"]) if scored else math.nan,
            "epoch_time_s": elapsed,
            "train_s": self._t_train or elapsed,
            "train_images": self._images * trainer.world_size,
        }
        for key in HISTORY_KEYS:
            self.history[key].append(row[key])

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[HISTORY_CKPT_KEY] = {k: list(v) for k, v in self.history.items()}

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self.history = checkpoint_history(checkpoint)


class ResumeRandomState(Callback):
    """Checkpoints every rank's global random state; restores it when training (re)starts from one.

    Lightning seeds every DDP rank alike, so in-model randomness (trans_cg_unet's dropout) would
    draw one mask for sample j of every rank's share of the batch, where one device draws a mask
    per sample: rank r > 0 continues from a seed of its own (:func:`rank_seed`)."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._pending: Mapping[str, Any] | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and trainer.global_rank > 0:  # before a resume restores the saved state
            torch.manual_seed(rank_seed(self.seed, trainer.global_rank))

    def state_dict(self) -> dict[str, Any]:
        return {"per_rank": gather_per_rank(global_rng_state())}  # collective: every rank saves

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = own_rank(state_dict.get("per_rank", []))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Restored here, not at load time: set-up between loading and training must not shift it.
        if self._pending is not None:
            set_global_rng_state(self._pending)
            self._pending = None


_PATH_KEYS = ("best_model_path", "kth_best_model_path", "last_model_path")


def _moved(path: str, old: str, new: str) -> str:
    """``path`` of the old checkpoint directory, in the new one (a path outside it, or of another
    platform's separators: its file name, in the new one)."""
    if not path:
        return path
    try:
        return str(Path(new) / PurePath(path).relative_to(old))
    except ValueError:
        return str(Path(new) / re.split(r"[\\/]", path)[-1])


class RelocatableCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint whose selection state survives a results directory that moved (or is
    mounted elsewhere on another node). Lightning drops ``best_model_score`` and ``best_k_models``
    when the saved ``dirpath`` differs, so the first epoch after such a resume replaced best.ckpt
    whatever its score: epoch selection then depended on where the files live. Here the saved paths
    are re-rooted in the new directory and the state is kept.

    Its state is saved under ModelCheckpoint's key, as before the class existed, so a resume
    checkpoint written then still restores its best epoch."""

    state_name = "ModelCheckpoint"  # the class name in the state key (Lightning uses the class's own)

    @property
    def state_key(self) -> str:
        return self.state_name + super().state_key[len(type(self).__qualname__) :]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old, new = state_dict.get("dirpath"), str(self.dirpath or "")
        if old and new and str(old) != new:
            old = str(old)
            state_dict = {
                **state_dict,
                "dirpath": new,
                **{k: _moved(state_dict.get(k) or "", old, new) for k in _PATH_KEYS if k in state_dict},
                "best_k_models": {
                    _moved(path, old, new): score
                    for path, score in (state_dict.get("best_k_models") or {}).items()
                },
            }
        super().load_state_dict(state_dict)


class ResumeCheckpoint(RelocatableCheckpoint):
    """``last.ckpt`` (monitor-less top-1) at most every ``every_s`` seconds, and after the final epoch."""

    state_name = "ResumeCheckpoint"

    def __init__(self, every_s: float, **kwargs: Any) -> None:
        super().__init__(monitor=None, save_top_k=1, **kwargs)
        self.every_s = every_s
        self._written = time.monotonic()

    def _due(self, trainer: pl.Trainer) -> bool:
        if self.every_s <= 0:
            return True
        final = trainer.current_epoch + 1 >= (trainer.max_epochs or 0) or trainer.should_stop
        due = final or time.monotonic() - self._written >= self.every_s
        return bool(trainer.strategy.broadcast(due))  # rank 0's clock decides: every rank saves or none

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._should_save_on_train_epoch_end(trainer) and self._due(trainer):
            super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._should_save_on_train_epoch_end(trainer) and self._due(trainer):
            super().on_validation_end(trainer, pl_module)

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        self._written = time.monotonic()


def destroy_process_group() -> None:
    """Destroys the default process group if one is up (idempotent)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class CloseProcessGroup(Callback):
    """Registers, once per process, the process group's destruction at exit (any backend).

    At exit, not at teardown: the same process may run further fits or evaluations on the group,
    and Lightning's spawn launcher still gathers results after ``teardown``."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if dist.is_available() and dist.is_initialized():
            atexit.unregister(destroy_process_group)  # one registration, however many runs
            atexit.register(destroy_process_group)


class StopRequested(Callback):
    """A stop signal whose exception a finalizer dropped (:mod:`benchmark.core.stop`) is raised at the
    next batch, where the handler's own would have stopped the run: it keeps its last checkpoint."""

    def on_train_batch_end(self, *args: Any) -> None:
        stop.raise_pending()

    def on_validation_batch_end(self, *args: Any) -> None:
        stop.raise_pending()


class ConvPrecision(Callback):
    """cuDNN's TF32 switch for float32 convolutions (:func:`set_conv_precision`) set for the run's
    precision in every process that trains it: ``build_trainer`` sets it in its own process, but the
    ranks that ``ddp_spawn`` starts get only Lightning's snapshot of the determinism flags, so a "32"
    recipe would train its ranks in TF32."""

    def __init__(self, precision: str) -> None:
        self.precision = precision

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        set_conv_precision(self.precision)

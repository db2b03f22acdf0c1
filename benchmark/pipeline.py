"""One (model, fold, seed) run end to end: train, then select, tune, score and write summary.json.

Nested protocol: the DataModule splits the data into the outer fold (scored once, for the reported
numbers), the inner selection set (picks the epoch and tunes post-processing) and the fit part
(the weights' training data); see :class:`datamodules.datamodule.UltrasoundNerveDataModule`.

A finished run directory holds ``checkpoints/best.ckpt``, ``summary.json`` and ``overlays.npz``.
``fit`` is idempotent and resumable: a complete summary with the same config hash is returned as
is, and an interrupted run of the same config continues from ``checkpoints/last.ckpt``, which
gives way to ``checkpoints/trained.json`` once the summary is written
(:mod:`benchmark.training.finished`): a finished run whose summary is removed is tuned and scored
again from ``best.ckpt``, not trained again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmark.core.config import ConfigError, TrainConfig
from benchmark.core.ranks import global_rank
from benchmark.core.summary import SUMMARY_NAME, is_complete, read_summary
from benchmark.evaluation import finalize
from benchmark.training import finished
from benchmark.training.module import SegModule
from benchmark.training.trainer import build_trainer, make_datamodule, train
from models.info import has_trainable_params


def fit(
    cfg: TrainConfig,
    data_dir: str | Path,
    out_dir: str | Path,
    callbacks: list | None = None,
    preloaded: Any = None,
) -> dict:
    """Train ``cfg`` on its fold of ``data_dir`` into ``out_dir`` and return the summary dict.

    ``callbacks`` are extra Lightning callbacks (tests use one to simulate an interruption).
    ``preloaded`` is ``data_dir``'s already-decoded ``kaggle.TrainSet`` (the Ray executor shares one).
    On ranks other than 0 of a multi-device run this returns an empty dict.
    """
    from lightning import seed_everything

    out_dir, data_dir = Path(out_dir), Path(data_dir)
    if is_complete(out_dir / SUMMARY_NAME, cfg.hash()):
        return read_summary(out_dir / SUMMARY_NAME)
    refuse_another_run(out_dir / SUMMARY_NAME, cfg.hash())
    seed_everything(cfg.seed, workers=True, verbose=False)
    dm = make_datamodule(cfg, data_dir, preloaded)
    trained = finished.trained_record(out_dir, cfg.hash())
    if trained is not None:
        return _score_again(cfg, dm, data_dir, out_dir, trained)
    if global_rank() == 0:
        finished.forget(out_dir)  # from here on best.ckpt is this training's
    module = SegModule(cfg.to_dict())
    trainer = train(cfg, module, dm, out_dir, callbacks)
    if not trainer.is_global_zero:
        return {}
    # the floor fits nothing, so no DDP process was started: one process, whatever devices says
    world_size = trainer.world_size if has_trainable_params(module.model) else 1
    device = trainer.strategy.root_device
    summary = finalize.finalize_run(cfg, dm, data_dir, out_dir, device, world_size=world_size)
    finished.drop_resume_state(out_dir, cfg.hash(), finalize.training_facts(summary))  # summary on disk
    return summary


def refuse_another_run(summary_path: Path, config_hash: str) -> None:
    """ConfigError when ``summary_path`` is the finished run of another config (an imported run,
    another model, an older recipe): training here would overwrite it, as a ``trained.json`` or
    ``last.ckpt`` of another config is refused. A summary that cannot be read is not a finished run."""
    try:
        saved = json.loads(summary_path.read_text())
        other = saved.get("status") == "complete" and str(saved.get("config_hash")) != config_hash
    except (OSError, ValueError, AttributeError):
        return
    if other:
        raise ConfigError(
            f"{summary_path}: the finished run {saved.get('run')!r} of another config (hash "
            f"{saved.get('config_hash')} != {config_hash}); use another output directory or delete it"
        )


def _score_again(cfg: TrainConfig, dm: Any, data_dir: Path, out_dir: Path, trained: dict) -> dict:
    """A run that finished training but has no summary: tuned and scored from ``best.ckpt`` by global
    rank 0 (under DDP the other ranks have nothing to do), on its training data only. Rank 0's
    Trainer is built, not fitted: scoring runs on its device and under its global flags, as after a fit."""
    if global_rank() != 0:
        return {}
    one: dict[str, Any] = {"devices": 1, "num_nodes": 1, "strategy": "auto", "sync_batchnorm": False}
    trainer = build_trainer(cfg, out_dir, None, logger=False, enable_checkpointing=False, **one)
    return finalize.finalize_run(cfg, dm, data_dir, out_dir, trainer.strategy.root_device, trained=trained)

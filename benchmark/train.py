"""``fit``: train one (model, fold, seed) run and write its summary.json; ``evaluate``: score a checkpoint.

A run directory holds ``checkpoints/{best,last}.ckpt``, ``summary.json`` and ``overlays.npz``.
``fit`` is idempotent and resumable: a complete summary with the same config hash is returned as
is, and an interrupted run of the same config continues from ``last.ckpt``. Post-processing is
tuned on the validation fold only and stored inside ``best.ckpt`` (key ``nerve_bench``), so
``evaluate`` and ``predict`` apply exactly what was tuned.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import torch

from benchmark import evaluation, finalize
from benchmark.config import ConfigError, TrainConfig
from benchmark.module import SegModule, config_from_dict, has_trainable_params, resolve_precision
from benchmark.summary import SUMMARY_NAME, is_complete, read_summary, to_jsonable, write_json_atomic

BEST, LAST = "best.ckpt", "last.ckpt"
# Lightning notices that repeat for every run of a 45-run grid and say nothing about the run.
for _pattern in (".*treespec.*", ".*smaller than the logging interval.*", ".*litlogger.*"):
    warnings.filterwarnings("ignore", message=_pattern)


def make_datamodule(cfg: TrainConfig, data_dir: str | Path) -> Any:
    """The run's DataModule; with ``gpu_cache`` its training loader is the GPU-resident fast path."""
    from datamodules.datamodule import UltrasoundNerveDataModule

    if not cfg.gpu_cache:
        return UltrasoundNerveDataModule.from_config_dict(data_dir, cfg.to_dict())
    from benchmark.gpu_data import GpuCachedDataModule

    return GpuCachedDataModule.from_config_dict(data_dir, cfg.to_dict())


def _logger(cfg: TrainConfig, out_dir: Path) -> Any:
    try:
        from benchmark.tracking import lightning_logger
    except ImportError:
        lightning_logger = None
    if lightning_logger is not None:
        return lightning_logger(cfg, cfg.run_name(), out_dir) or False
    from lightning.pytorch.loggers import CSVLogger

    return CSVLogger(save_dir=str(out_dir), name="", version="csv")


def build_trainer(cfg: TrainConfig, out_dir: Path, callbacks: list | None = None, **overrides: Any) -> Any:
    """The Trainer of a run: best/last checkpoints by val/kaggle_dice, seeded and deterministic."""
    from lightning import Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint

    ckpt_dir = str(out_dir / "checkpoints")
    # Two callbacks: Lightning >= 2.5 writes save_last copies only when a top-k file is written,
    # but resuming needs last.ckpt after every epoch.
    checkpoint = [
        ModelCheckpoint(dirpath=ckpt_dir, filename=Path(BEST).stem, monitor="val/kaggle_dice", mode="max",
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
        callbacks=[*checkpoint, *(callbacks or [])], logger=_logger(cfg, out_dir), log_every_n_steps=10,
        enable_progress_bar=cfg.progress_bar, enable_model_summary=cfg.progress_bar,
        default_root_dir=str(out_dir),
    )  # fmt: skip
    kwargs.update(overrides)
    return Trainer(**kwargs)


def resume_checkpoint(ckpt_dir: Path, cfg: TrainConfig) -> Path | None:
    """``last.ckpt`` when it belongs to this config; ConfigError when it belongs to another one."""
    last = ckpt_dir / LAST
    if not last.is_file():
        return None
    try:
        saved = torch.load(last, map_location="cpu", weights_only=False)["hyper_parameters"]["config"]
    except Exception as exc:  # a truncated file from a killed run: start again, loudly
        raise ConfigError(f"{last}: unreadable checkpoint ({exc}); delete it to restart the run") from None
    saved_hash = config_from_dict(saved).hash()
    if saved_hash != cfg.hash():
        raise ConfigError(
            f"{last}: checkpoint of a different config (hash {saved_hash} != {cfg.hash()});"
            " use another output directory or delete it"
        )
    return last


def _train(cfg: TrainConfig, module: SegModule, dm: Any, out_dir: Path, callbacks: list | None) -> Any:
    ckpt_dir = out_dir / "checkpoints"
    trainer = build_trainer(cfg, out_dir, callbacks)
    if not has_trainable_params(module.model):
        # Nothing to optimise (the `empty` baseline): its only checkpoint is the untrained model.
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        finalize.save_plain_checkpoint(module, ckpt_dir / BEST)
        finalize.save_plain_checkpoint(module, ckpt_dir / LAST)
        return trainer
    trainer.fit(module, datamodule=dm, ckpt_path=resume_checkpoint(ckpt_dir, cfg))
    if trainer.interrupted:
        raise KeyboardInterrupt
    return trainer


def fit(cfg: TrainConfig, data_dir: str | Path, out_dir: str | Path, callbacks: list | None = None) -> dict:
    """Train ``cfg`` on its fold of ``data_dir`` into ``out_dir`` and return the summary dict.

    ``callbacks`` are extra Lightning callbacks (tests use one to simulate an interruption).
    On ranks other than 0 of a multi-device run this returns an empty dict.
    """
    from lightning import seed_everything

    out_dir, data_dir = Path(out_dir), Path(data_dir)
    if is_complete(out_dir / SUMMARY_NAME, cfg.hash()):
        return read_summary(out_dir / SUMMARY_NAME)
    seed_everything(cfg.seed, workers=True, verbose=False)
    dm = make_datamodule(cfg, data_dir)
    module = SegModule(cfg.to_dict())
    trainer = _train(cfg, module, dm, out_dir, callbacks)
    if not trainer.is_global_zero:
        return {}
    return finalize.finalize_run(cfg, dm, data_dir, out_dir, trainer.strategy.root_device)


def _eval_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def evaluate(checkpoint: str | Path, data_dir: str | Path, out: str | Path | None = None) -> dict:
    """Score ``checkpoint`` on every training image of ``data_dir`` with its stored post-processing.

    Returns (and writes to ``out`` as JSON) per-image rows and the mean metrics, raw and post-processed.
    """
    path = Path(checkpoint)
    module, ckpt = finalize.load_checkpoint_module(path)
    pp = finalize.postprocess_of(path, ckpt)
    cfg = module.cfg
    # Only the full-set loader is used: no cleaning, no GPU cache; any valid split will do.
    data_cfg = dataclasses.replace(cfg, clean_contradictory=False, gpu_cache=False, fold=0, n_folds=2)
    dm = make_datamodule(data_cfg, data_dir)
    device = _eval_device()
    precision = resolve_precision(cfg.precision, device.type) if device.type == "cuda" else "32"
    rows = evaluation.predict_loader(module, dm.full_dataloader(), device, precision, pp=pp)
    raw, post = evaluation.per_image_scores(rows["counts"]), evaluation.per_image_scores(rows["post_counts"])
    ts, idx = dm.train_set, rows["index"]
    result = {
        "checkpoint": str(path), "data_dir": str(data_dir), "model": cfg.model, "config_hash": cfg.hash(),
        "n_images": len(idx), "postprocess": pp.to_dict(),
        "metrics": {"raw": evaluation.score_counts(rows["counts"], rows["presence_prob"]),
                    "post": evaluation.score_counts(rows["post_counts"], None)},
        "per_image": {"index": idx, "stem": [ts.stems[i] for i in idx], "subject": ts.subjects[idx],
                      "true_empty": raw["true_empty"], "dice_raw": raw["dice"], "dice": post["dice"],
                      "iou": post["iou"], "presence_prob": rows["presence_prob"]},
    }  # fmt: skip
    if out is not None:
        write_json_atomic(out, result)
    return to_jsonable(result)


def format_metrics(metrics: dict[str, dict[str, float]]) -> str:
    """A small aligned table: one row per metric, raw and post-processed columns."""
    names = list(metrics["post"])
    width = max(len(n) for n in names)
    lines = [f"{'metric':<{width}}  {'raw':>8}  {'post':>8}"]
    for name in names:
        raw, post = metrics["raw"].get(name), metrics["post"].get(name)
        cells = [f"{v:8.4f}" if isinstance(v, float) else f"{'-':>8}" for v in (raw, post)]
        lines.append(f"{name:<{width}}  {cells[0]}  {cells[1]}")
    return "\n".join(lines)

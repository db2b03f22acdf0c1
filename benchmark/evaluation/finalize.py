"""After training: tune post-processing on the inner selection set, score the selected checkpoint
once on the outer fold, store the tuning in the checkpoint, and write summary.json and overlays.npz.

Nested protocol: the epoch (``best.ckpt``, chosen during training) and the post-processing are
chosen on the inner set only; the outer fold (``dm.outer_dataloader``) is scored exactly once with
those choices and is never used for a decision, so its numbers ("metrics", "per_image") estimate
performance on unseen subjects. The inner numbers are kept apart under "selection": they are
optimistic by construction (they were maximised).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.core.config import SCHEMA_VERSION, ConfigError, TrainConfig
from benchmark.core.files import atomic_path
from benchmark.core.summary import environment, model_source, to_jsonable, write_summary
from benchmark.evaluation import costs, inference
from benchmark.scoring import counts
from benchmark.scoring.post_counts import postprocess_counts
from benchmark.training.callbacks import checkpoint_history
from benchmark.training.checkpoint import BEST, LAST, load_checkpoint_module, load_plain, store_in_checkpoint
from benchmark.training.device import run_scoring_precision
from benchmark.training.module import SegModule
from datamodules.fingerprints import link_records

if TYPE_CHECKING:
    from benchmark.scoring.postprocess import PostProcess
    from datamodules.datamodule import UltrasoundNerveDataModule

OVERLAY_NAME = "overlays.npz"
OVERLAY_SHAPE = (128, 177)  # 420x580 scaled by 128/420
OVERLAY_POS, OVERLAY_NEG = 4, 2


def _downsample(stack: np.ndarray, binary: bool) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(stack)).float()[:, None]
    small = F.interpolate(t, size=OVERLAY_SHAPE, mode="area")[:, 0]
    return (
        (small >= 0.5).to(torch.uint8).numpy()
        if binary
        else small.round().clamp(0, 255).to(torch.uint8).numpy()
    )


def overlay_picks(empty: np.ndarray) -> np.ndarray:
    """Positions of the first positives and negatives, from per-image "truth is empty" flags
    (inputs are in stem order)."""
    empty = np.asarray(empty, dtype=bool)
    order = np.arange(len(empty))
    return np.concatenate([order[~empty][:OVERLAY_POS], order[empty][:OVERLAY_NEG]]).astype(np.int64)


def write_overlays(
    path: Path, stems: list[str], images: np.ndarray, truth: np.ndarray, pred: np.ndarray
) -> None:
    """Save image/truth/prediction stacks (already picked) downsampled for plotting, atomically."""
    # A file handle, not a name: np.savez would append ".npz" to the temporary name.
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(
            fh,
            stem=np.asarray(stems, dtype=str),
            image=_downsample(images, False),
            truth=_downsample(truth, True),
            pred=_downsample(pred, True),
        )


def cost_block(cfg: TrainConfig, module: SegModule, history: dict, device: torch.device) -> dict[str, Any]:
    """Parameters, GFLOPs, training throughput and inference speed, and how they were measured.

    ``train_img_s`` is the run's own training (its recipe's settings, on whatever share of the device
    it had); the inference columns are measured under ``costs.measurement_flags`` on a device the run
    has to itself, or left ``None`` with ``measured.inference == "pending"`` when it shares one (a
    Ray task packed onto a GPU): :mod:`benchmark.evaluation.deferred_costs` measures those after the grid.
    """
    from datamodules.geometry import input_shape
    from models.info import count_params, gflops

    train_s, train_images = sum(history.get("train_s", [])), sum(history.get("train_images", []))
    cost: dict[str, Any] = {
        "params": int(count_params(module.model)),
        "gflops": 0.0,
        "train_img_s": train_images / train_s if train_s > 0 else 0.0,
    }
    try:
        cost["gflops"] = float(gflops(module.model, size=input_shape(cfg.resize_mode, cfg.image_size)))
    except Exception:  # noqa: BLE001 - FLOP counting is best effort (exotic ops)
        pass
    exclusive, share = costs.measured_exclusively()
    if exclusive:
        cost.update(costs.run_inference_costs(module.model, cfg, device))
    else:
        cost.update(dict.fromkeys(costs.INFERENCE_KEYS))
    cost["measured"] = {
        "device": costs.device_label(device),
        "device_share": share,
        "inference": "exclusive" if exclusive else "pending",
    }
    return cost


def run_identity(cfg: TrainConfig) -> dict[str, Any]:
    """The first keys of every summary, trained or imported: which run of which grid it is."""
    return {
        "schema_version": SCHEMA_VERSION,
        "run": cfg.run_name(),
        "model": cfg.model,
        "fold": cfg.fold,
        "n_folds": cfg.n_folds,
        "seed": cfg.seed,
        "config": cfg.to_dict(),
        "config_hash": cfg.hash(),
        **cfg.box_recipe(),  # cpu_processes: the board keeps such runs apart (leaderboard.benchmark_hash)
    }


def dataset_block(dm: UltrasoundNerveDataModule, data_dir: Path) -> dict[str, Any]:
    """The data a run saw: sizes of the three parts and the content hash (evaluate matches on it)."""
    from datamodules.kaggle import content_hash

    ts = dm.decoded
    return {
        "name": data_dir.resolve().name,
        "n_train": len(ts),
        "n_subjects": int(len(np.unique(ts.subjects))),
        "n_fit": int(len(dm.fit_indices)),
        "n_inner": int(len(dm.inner_indices)),
        "n_outer": int(len(dm.outer_indices)),
        "content_hash": content_hash(ts),
        "synthetic": (data_dir / "synthetic.json").is_file(),
    }


def _subjects(dm: UltrasoundNerveDataModule, indices: np.ndarray) -> list[int]:
    return np.unique(dm.subjects[indices]).tolist()


def split_block(cfg: TrainConfig, dm: UltrasoundNerveDataModule) -> dict[str, Any]:
    """Who is where. In hold-out mode the one outer set is fold 0 of 1 (table row 1: the rest).

    ``outer_indices``: the outer fold's data-set indices, sorted; the leaderboard checks that each
    seed's folds cover exactly the expected images with them.
    """
    from datamodules.splits import fold_table

    holdout = cfg.holdout_fraction is not None
    return {
        "mode": "holdout" if holdout else "kfold",
        "split_seed": cfg.split_seed,
        "n_folds": 1 if holdout else cfg.n_folds,
        "fold": 0 if holdout else cfg.fold,
        "holdout_fraction": cfg.holdout_fraction,
        "inner_fraction": cfg.inner_fraction,
        "outer_subjects": _subjects(dm, dm.outer_indices),
        "inner_subjects": _subjects(dm, dm.inner_indices),
        "fit_subjects": _subjects(dm, dm.fit_indices),
        "outer_indices": np.sort(np.asarray(dm.outer_indices, dtype=np.int64)).tolist(),
        "folds": fold_table(dm.subjects, dm.positive, dm.outer_folds),
        "link_subjects": cfg.link_subjects,
        "linked_subjects": link_records(dm.links),
    }


def tune_on_inner(inner: dict[str, Any], tta: bool) -> tuple[Any, dict[str, dict[str, float]]]:
    """Tune post-processing on the inner-set predictions; the inner raw and post-processed metrics."""
    from benchmark.scoring import postprocess

    head = inner["presence_prob"] if inner["presence_head"] else None  # else the gate uses max prob
    pp, _ = postprocess.tune(inner["prob_u8"], inner["truth"], head, tta=tta)
    post = postprocess_counts(inner["prob_u8"], inner["truth"], head, pp)
    return pp, scored(inner["counts"], inner["presence_prob"], post)


def scored(raw_counts: np.ndarray, presence_prob: np.ndarray, post_counts: np.ndarray) -> dict[str, dict]:
    """Raw (threshold 0.5) and post-processed mean metrics from per-image confusion counts."""
    return {
        "raw": counts.score_counts(raw_counts, presence_prob),
        "post": counts.score_counts(post_counts, None),
    }


def per_image_block(dm: UltrasoundNerveDataModule, rows: dict[str, Any]) -> dict[str, Any]:
    """Per-image rows of a scored loader (``predict_loader`` with ``pp``): the outer fold's images."""
    raw, post = counts.per_image_scores(rows["counts"]), counts.per_image_scores(rows["post_counts"])
    idx = rows["index"]
    return {
        "index": idx,
        "stem": [dm.decoded.stems[i] for i in idx],
        "subject": dm.decoded.subjects[idx],
        "unit": dm.units[idx],  # what a CI resamples
        "true_empty": raw["true_empty"],
        "dice_raw": raw["dice"],
        "dice": post["dice"],
        "iou": post["iou"],
        "presence_prob": rows["presence_prob"],
    }


def _training_record(
    out_dir: Path, module: Any, world_size: int, trained: dict | None, device: torch.device
) -> dict[str, Any]:
    """The training's history, world and environment: this process's, or the record of a training
    that finished earlier (then the environment scoring it again goes under "scored_again")."""
    if trained is not None:
        return {**trained, "scored_again": environment(device)}
    history = _final_history(out_dir / "checkpoints" / LAST, module.history)
    return {"history": history, "world_size": world_size, "environment": environment(device)}


def finalize_run(
    cfg: TrainConfig,
    dm: UltrasoundNerveDataModule,
    data_dir: Path,
    out_dir: Path,
    device: torch.device,
    world_size: int = 1,
    trained: dict | None = None,
) -> dict:
    """Tune on the inner set, score ``best.ckpt`` once on the outer fold, write the summary.

    ``world_size``: processes that trained the run (recorded; the global batch is ``batch_size``
    whatever it is). ``trained``: the record of a training that finished earlier
    (:func:`benchmark.training.finished.trained_record`): its history, world size and environment are
    the summary's, and the environment that scored it again is kept under "scored_again".
    """
    best = out_dir / "checkpoints" / BEST
    module, ckpt = load_checkpoint_module(best)
    precision = run_scoring_precision(cfg.precision, cfg.accelerator, device)
    dm.setup("fit")  # a no-op after a fit; the empty baseline and a re-score set it up here
    data = dataset_block(dm, data_dir)
    if trained is not None:
        _check_same_data(trained, data, out_dir, data_dir)
    pp, selection, outer = _select_and_predict(cfg, dm, module, int(ckpt.get("epoch", 0)), device, precision)
    metrics = scored(outer["counts"], outer["presence_prob"], outer["post_counts"])
    record = _checkpoint_record(cfg, dm, pp, metrics, selection, data, outer)
    store_in_checkpoint(best, ckpt, {**record, "precision": precision})
    _overlays(out_dir / OVERLAY_NAME, dm, module, outer, pp, device, precision)
    training = _training_record(out_dir, module, world_size, trained, device)
    summary = {
        **run_identity(cfg),
        # the code that trained it: kept from the training when it is only scored again
        "model_source": training.get("model_source") or model_source(cfg.model),
        "dataset": data,
        "best_epoch": selection["best_epoch"],
        "metrics": metrics,
        "selection": selection,
        "split": split_block(cfg, dm),
        "per_image": per_image_block(dm, outer),
        "postprocess": pp.to_dict(),
        **_training_block(cfg, module, training, device),
        "overlays": OVERLAY_NAME,
        "status": "complete",
    }
    write_summary(out_dir, summary)
    return to_jsonable(summary)


def _training_block(cfg: TrainConfig, module: SegModule, training: dict, device: torch.device) -> dict:
    """The summary's keys about the training: epochs, time, world, costs, history, environment (and
    the scoring machine's, when it was scored again)."""
    history = training["history"]
    again = {"scored_again": training["scored_again"]} if "scored_again" in training else {}
    return {
        **again,
        "epochs_run": len(history["epoch"]),
        "train_time_s": float(sum(history["epoch_time_s"])),
        "global_batch": int(cfg.batch_size),
        "world_size": int(training["world_size"]),
        "cost": cost_block(cfg, module, history, device),
        "history": {k: history[k] for k in ("epoch", "train_loss", "val_loss", "val_kaggle_dice")},
        "environment": training["environment"],
    }


def _check_same_data(trained: dict, data: dict, out_dir: Path, data_dir: Path) -> None:
    """A run trained earlier is scored again on its training data only: elsewhere its fold may hold
    frames it trained on (the config hash does not cover the data)."""
    if data["content_hash"] != trained["data_hash"]:
        raise ConfigError(
            f"{out_dir}: trained on data with content hash {trained['data_hash']}, but {data_dir} has "
            f"{data['content_hash']}; use another output directory for this data set"
        )


def training_facts(summary: dict) -> dict[str, Any]:
    """What a summary says of its run's training, kept when its last.ckpt goes (``finished.FACTS``)."""
    return {
        "world_size": summary["world_size"],
        "environment": summary["environment"],
        "data_hash": summary["dataset"]["content_hash"],
        "model_source": summary.get("model_source"),
    }


def _select_and_predict(
    cfg: TrainConfig,
    dm: UltrasoundNerveDataModule,
    module: Any,
    best_epoch: int,
    device: torch.device,
    precision: str,
) -> tuple[PostProcess, dict, dict]:
    """Post-processing tuned on the inner set, then the outer fold predicted with it (counts only)."""
    inner = inference.predict_loader(module, dm.inner_dataloader(), device, precision, keep_probs=True)
    pp, selection_metrics = tune_on_inner(inner, cfg.tta)
    selection = {
        "metrics": selection_metrics,
        "n_images": len(inner["index"]),
        "subjects": _subjects(dm, dm.inner_indices),
        "best_epoch": best_epoch,
        "select": cfg.select,
    }
    del inner  # the 420x580 probabilities of the inner set; the outer pass needs only counts
    return pp, selection, inference.predict_loader(module, dm.outer_dataloader(), device, precision, pp=pp)


def _checkpoint_record(
    cfg: TrainConfig,
    dm: UltrasoundNerveDataModule,
    pp: PostProcess,
    metrics: dict,
    selection: dict,
    data: dict,
    outer: dict,
) -> dict:
    """What ``best.ckpt`` carries of its scoring: the tuned post-processing that ``predict`` and
    ``export`` apply; the data hash and outer indices by which ``evaluate`` knows its fold; and the
    frames and subjects outside its outer fold, by which ``evaluate`` knows them in other data."""
    # Every frame outside the outer fold: fit and inner, and any frame cleaning set aside (its subject
    # trained the model and its pixels nearly match a labelled training frame).
    seen = np.setdiff1d(np.arange(len(dm.decoded)), dm.outer_indices)
    return {
        "postprocess": pp.to_dict(),
        "config": cfg.to_dict(),
        "model_source": model_source(cfg.model),  # the package to install where it is loaded again
        "summary_metrics": metrics,
        "selection_metrics": selection["metrics"],
        "data_hash": data["content_hash"],
        "outer_indices": outer["index"].tolist(),
        # near matches find them identical or re-encoded (datamodules.fingerprints); a tensor loads
        # with weights_only
        "seen_fingerprints": torch.from_numpy(np.ascontiguousarray(dm.decoded.fingerprints()[seen])),
        "seen_subjects": _subjects(dm, seen),
    }


def _final_history(last: Path, fallback: dict) -> dict:
    """The full per-epoch history lives in last.ckpt (best.ckpt stops at the best epoch)."""
    if not last.is_file():
        return fallback
    saved = checkpoint_history(load_plain(last, mmap=True))  # the history, not the tensors
    return saved if saved["epoch"] else fallback


def _overlays(
    path: Path,
    dm: UltrasoundNerveDataModule,
    module: SegModule,
    outer: dict,
    pp: PostProcess,
    device: torch.device,
    precision: str,
) -> None:
    """Plot material from the outer fold: its first positives and negatives, re-predicted at full size."""
    from benchmark.scoring import postprocess

    index = outer["index"][overlay_picks(~dm.positive[outer["index"]])]
    rows = inference.predict_loader(module, dm.subset_dataloader(index), device, precision, keep_probs=True)
    order = np.searchsorted(rows["index"], index)  # rows come back sorted by index; keep the pick order
    head = rows["presence_prob"][order] if rows["presence_head"] else None
    pred = np.asarray(postprocess.apply(rows["prob_u8"][order], pp, head)).astype(np.uint8)
    stems = [dm.decoded.stems[i] for i in index]
    write_overlays(path, stems, dm.decoded.images[index], rows["truth"][order], pred)

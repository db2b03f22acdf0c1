"""An outside method's predictions of one outer fold scored by our metric code into a run summary.

The summary is what ``finalize`` writes for our own runs (schema version, split block, dataset
block with the content hash, per-image rows, overlays), so ``report`` ranks it under the same
CIs, tests and completeness rule. The masks are the method's final output: no post-processing is
tuned or applied here (``dice_raw`` equals ``dice``). What cannot be known stays null and shows as
"unknown" on the board (cost, epochs); ``summary["external"]`` names the source and provenance.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark.core.lock import claim
from benchmark.core.summary import COST_KEYS, HISTORY_KEYS, environment, to_jsonable, write_summary
from benchmark.evaluation import finalize
from benchmark.external.folds import Fold
from benchmark.scoring import counts
from datamodules.errors import NerveBenchError

SELECT = "external"  # selection.select of an imported run: chosen outside nerve-bench


def score_masks(fold: Fold, pred: np.ndarray) -> dict[str, Any]:
    """Per-image counts of ``pred`` (outer-fold order) against the truth, as ``predict_loader`` rows."""
    outer = fold.dm.outer_indices
    truth = torch.from_numpy(fold.dm.train_set.masks[outer])
    c = counts.confusion_counts_torch(torch.from_numpy(np.asarray(pred, bool)), truth).numpy()
    presence = pred.reshape(len(pred), -1).any(axis=1).astype(np.float64)  # a binary mask: present or not
    return {"index": outer, "counts": c, "post_counts": c, "presence_prob": presence}


def _selection(fold: Fold, metrics: dict | None) -> dict[str, Any]:
    dm = fold.dm
    return {
        "metrics": metrics or {"raw": {}, "post": {}},
        "n_images": int(len(dm.inner_indices)),
        "subjects": np.unique(dm.subjects[dm.inner_indices]).tolist(),
        "best_epoch": None,
        "select": SELECT,
    }


def imported_summary(
    fold: Fold,
    data_dir: Path,
    pred: np.ndarray,
    external: dict[str, Any],
    facts: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The summary of one imported outer fold. ``facts`` may add what the source knows: ``cost`` entries,
    ``train_time_s``, ``epochs_run``, ``selection_metrics``."""
    facts = facts or {}
    cfg, dm = fold.cfg, fold.dm
    rows = score_masks(fold, pred)
    cost = {key: None for key in COST_KEYS} | dict(facts.get("cost") or {})
    return {
        **finalize.run_identity(cfg),
        "dataset": finalize.dataset_block(dm, data_dir),
        "best_epoch": None,
        "epochs_run": facts.get("epochs_run"),
        "train_time_s": facts.get("train_time_s"),
        "metrics": finalize.scored(rows["counts"], rows["presence_prob"], rows["post_counts"]),
        "selection": _selection(fold, facts.get("selection_metrics")),
        "split": finalize.split_block(cfg, dm),
        "global_batch": None,
        "world_size": None,
        "per_image": finalize.per_image_block(dm, rows),
        "postprocess": None,
        "cost": cost,
        "history": {key: [] for key in HISTORY_KEYS},
        "overlays": finalize.OVERLAY_NAME,
        "environment": environment(),
        "status": "complete",
        "external": external,
    }


def _overlays(path: Path, fold: Fold, pred: np.ndarray) -> None:
    dm = fold.dm
    picks = finalize.overlay_picks(~dm.positive[dm.outer_indices])
    index = dm.outer_indices[picks]
    stems = [dm.train_set.stems[i] for i in index]
    truth, images = dm.train_set.masks[index], dm.train_set.images[index]
    finalize.write_overlays(path, stems, images, truth, pred[picks].astype(np.uint8))


def write_imported(
    run_dir: Path, summary: dict[str, Any], fold: Fold, pred: np.ndarray, settle: Callable[[], None]
) -> dict[str, Any]:
    """Claim the run directory, ``settle`` (checks against what is on disk now, under the lock), write
    overlays.npz and summary.json (atomically), release."""
    lock = claim(run_dir)
    if lock is None:
        raise NerveBenchError(f"{run_dir}: held by another process; try again when it is done")
    with lock:
        settle()
        _overlays(run_dir / finalize.OVERLAY_NAME, fold, pred)
        write_summary(run_dir, summary)
    return to_jsonable(summary)


def with_model(fold: Fold, name: str, seed: int) -> Fold:
    """The same split with the row's name and seed in its config (the run name and hash follow)."""
    return Fold(dataclasses.replace(fold.cfg, model=name, model_kwargs={}, seed=seed), fold.dm)

"""``evaluate``: score a checkpoint on a data directory with its stored post-processing.

What it scores depends on the data (the checkpoint records its training data's content hash and
outer-fold indices):

- the checkpoint's own training data: only its outer fold, the images no decision saw; the rest
  trained or selected the checkpoint, so scoring them would report a training score;
- the same data with ``all_images``: every image, with a warning that training images are included;
- any other data: when a frame is one outside the checkpoint's outer fold, identical or re-encoded
  (its fingerprint, :mod:`datamodules.fingerprints`, within a few bits of one the checkpoint
  recorded), the data is a copy or subset of its own, and every frame of its fit and inner subjects
  is left out (``all_images`` keeps them, with a warning); otherwise every image;
- a checkpoint without that record: every image, with a warning.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.core.files import check_output_file
from benchmark.core.summary import to_jsonable, write_json_atomic
from benchmark.evaluation import inference
from benchmark.scoring import counts
from benchmark.training.checkpoint import (
    CKPT_KEY,
    load_checkpoint_module,
    postprocess_of,
    scoring_precision_of,
)
from benchmark.training.device import eval_device
from benchmark.training.module import config_from_dict
from datamodules.errors import NerveBenchError
from datamodules.kaggle import layout_paths

OUTER, ALL_WITH_TRAINING, ALL = "outer_fold", "all_images_including_training", "all_images"
UNSEEN = "images_not_seen_in_training"  # a copy of its data, less the frames and subjects it saw


def choose_images(
    record: dict,
    data_hash: str,
    n_images: int,
    all_images: bool,
    hit: np.ndarray | None = None,
    subjects: np.ndarray | None = None,
) -> tuple[np.ndarray, str, str]:
    """(indices to score, scope, one-line note) for data with ``data_hash`` and ``n_images`` frames.

    ``record`` is the checkpoint's ``nerve_bench`` block (``data_hash``, ``outer_indices``,
    ``seen_fingerprints``, ``seen_subjects``); ``hit`` (:func:`seen_hits`) and ``subjects`` are the
    data's, per frame.
    """
    outer = record.get("outer_indices")
    if record.get("data_hash") != data_hash or outer is None:
        return _other_data(record, n_images, all_images, hit, subjects)
    every = np.arange(n_images, dtype=np.int64)
    outer = np.asarray(outer, dtype=np.int64)
    n_seen = n_images - len(outer)
    if all_images:
        note = (
            f"warning: --all-images: {n_seen} of these {n_images} images trained or selected this "
            "checkpoint; this is not a held-out score"
        )
        return every, ALL_WITH_TRAINING, note
    note = (
        f"this is the checkpoint's training data: scoring only its outer fold, {len(outer)} of "
        f"{n_images} images (the other {n_seen} trained or selected it; --all-images: all)"
    )
    return outer, OUTER, note + _outer_matches(hit, outer)


def _outer_matches(hit: np.ndarray | None, outer: np.ndarray) -> str:
    """A warning clause when outer-fold frames match frames that trained or selected the checkpoint:
    subjects that share frames split apart, as ``link_subjects: false`` (or an older version) does."""
    n = 0 if hit is None else int(hit[outer].sum())
    if not n:
        return ""
    return (
        f"; warning: {n} of them match frames that trained or selected it (subjects that share frames "
        "were split apart: link_subjects false), so this is not a fully held-out score"
    )


def seen_hits(record: dict, train_set: Any) -> np.ndarray | None:
    """Per frame of ``train_set``: whether it is a frame that trained or selected the checkpoint,
    identical or re-encoded (its fingerprint within ``NEAR_FRACTION`` of one the checkpoint recorded);
    checkpoints written before fingerprints: identical pixels only. None: the checkpoint records no
    frames."""
    from datamodules import fingerprints as fingerprint
    from datamodules.kaggle import frame_digests

    if "seen_fingerprints" in record:
        seen, mine = np.asarray(record["seen_fingerprints"], dtype=np.uint8), train_set.fingerprints()
        hit = np.zeros(len(train_set), dtype=bool)
        if seen.ndim == 2 and seen.shape[1] == mine.shape[1]:  # else frames of another size: no match
            hit[fingerprint.near_pairs(mine, seen, fingerprint.bits_of(train_set.images.shape[1:]))[0]] = True
        return hit
    if "seen_frames" in record:
        seen_digests = set(record["seen_frames"])  # built once, not once per frame
        return np.array([d in seen_digests for d in frame_digests(train_set.images)], dtype=bool)
    return None


def _other_data(
    record: dict, n_images: int, all_images: bool, hit: np.ndarray | None, subjects: np.ndarray | None
) -> tuple[np.ndarray, str, str]:
    """Another copy or subset of the data, or other data. A frame that matches one outside the
    checkpoint's outer fold proves a copy of its data: then every frame of those subjects is left out
    (the subject, not the frame, is the unit of independence); ``--all-images`` keeps them, with a
    warning."""
    every = np.arange(n_images, dtype=np.int64)
    if hit is None or subjects is None:
        why = "does not record its training frames" if record.get("data_hash") else "records no training data"
        return (
            every,
            ALL,
            f"warning: scoring all {n_images} images: the checkpoint {why}, training images may be included",
        )
    if not hit.any():
        if "seen_fingerprints" in record:
            none = "none is a frame that trained or selected the checkpoint, identical or re-encoded"
            return every, ALL, f"scoring all {n_images} images: {none}"
        return (
            every,
            ALL,
            f"scoring all {n_images} images (not the checkpoint's training data)"
            + _numbered_like(record, subjects),
        )
    # Training subjects by number (a copy keeps its numbers) and by matching frame (a renumbered one).
    trained = set(record.get("seen_subjects") or ()) | {int(x) for x in subjects[hit]}
    same_subject = np.isin(subjects, sorted(trained)) & ~hit
    kept = every if all_images else every[~(hit | same_subject)]
    # several images may match one frame: consecutive frames of a scan are near-identical
    seen = record.get("seen_fingerprints", record.get("seen_frames"))  # a tensor in a checkpoint
    n_seen = 0 if seen is None else len(seen)
    frames = "the frame" if n_seen == 1 else f"one of the {n_seen} frames"
    which = f"{int(hit.sum())} of these {n_images} images match {frames} that trained or selected it" + (
        f", {int(same_subject.sum())} more belong to its training subjects" if same_subject.any() else ""
    )
    if all_images:
        return kept, ALL_WITH_TRAINING, f"warning: --all-images: {which}; this is not a held-out score"
    if not kept.size:
        raise NerveBenchError(
            f"every one of these {n_images} images trained or selected this checkpoint or is of its training "
            "subjects: there is no held-out image to score (--all-images scores them anyway)"
        )
    return kept, UNSEEN, f"scoring {kept.size} of {n_images} images: {which} (--all-images: all)"


def _numbered_like(record: dict, subjects: np.ndarray) -> str:
    """A warning clause for a checkpoint that records identical frames only (written before
    fingerprints): frames of subjects numbered like its training subjects may be the same patients,
    re-encoded."""
    trained = set(record.get("seen_subjects") or ())
    shared = sorted(trained & {int(s) for s in subjects})
    if not shared:
        return ""
    n = int(np.isin(subjects, shared).sum())
    listed = ", ".join(map(str, shared[:8])) + (", ..." if len(shared) > 8 else "")
    return (
        f"; warning: {n} of them belong to subjects numbered like ones that trained or selected it "
        f"({listed}): if this is the same data set re-encoded, they are not held out"
    )


def evaluate(
    checkpoint: str | Path, data_dir: str | Path, out: str | Path | None = None, all_images: bool = False
) -> dict:
    """Score ``checkpoint`` on ``data_dir``'s training images (see the module doc for which ones).

    Returns (and writes to ``out`` as JSON) per-image rows and the mean metrics, raw and post-processed,
    ``scope`` (outer_fold | images_not_seen_in_training | all_images_including_training | all_images)
    and ``note``, the one line that says what was scored.
    """
    if out is not None:
        reads = [checkpoint, *layout_paths(data_dir)]
        check_output_file(out, "--out", "the path of a .json file", reads)
    path = Path(checkpoint)
    module, ckpt = load_checkpoint_module(path)
    _require_record(path, ckpt)
    # The run's own hash: the module was rebuilt for inference (no pretrained download, no compile),
    # and both fields are hashed, so module.cfg.hash() would not match the run's summary.
    trained_hash = config_from_dict(ckpt["hyper_parameters"]["config"]).hash()
    pp = postprocess_of(path, ckpt)
    # The forward pass the post-processing was tuned with (its tta), as predict and export run it;
    # the two differ only in a hand-edited checkpoint.
    module.cfg = cfg = dataclasses.replace(module.cfg, tta=pp.tta)
    dm = _scoring_data(cfg.to_dict(), data_dir)
    ts, record = dm.decoded, ckpt.get(CKPT_KEY) or {}
    indices, scope, note = _images_of(record, ts, data_dir, all_images)
    device = eval_device()
    precision = scoring_precision_of(ckpt, device)
    rows = inference.predict_loader(module, dm.subset_dataloader(indices), device, precision, pp=pp)
    result = {
        "checkpoint": str(path),
        "data_dir": str(data_dir),
        "model": cfg.model,
        "config_hash": trained_hash,
        "scope": scope,
        "note": note,
        "n_images": len(rows["index"]),
        "postprocess": pp.to_dict(),
        "metrics": {
            "raw": counts.score_counts(rows["counts"], rows["presence_prob"]),
            "post": counts.score_counts(rows["post_counts"], None),
        },
        "per_image": _per_image(ts, rows),
    }
    if out is not None:
        write_json_atomic(out, result)
    return to_jsonable(result)


def _images_of(record: dict, ts: Any, data_dir: str | Path, all_images: bool) -> tuple[np.ndarray, str, str]:
    """:func:`choose_images` for the decoded set ``ts`` of ``data_dir``; nothing held out names the data."""
    from datamodules.kaggle import content_hash

    hit = seen_hits(record, ts)
    try:
        return choose_images(record, content_hash(ts), len(ts), all_images, hit, ts.subjects)
    except NerveBenchError as exc:
        raise NerveBenchError(f"{data_dir}: {exc}") from None


def _scoring_data(config: dict, data_dir: str | Path) -> Any:
    """The DataModule of the images to score: no split (any directory of any size can be scored), no
    cleaning, no GPU cache."""
    from datamodules.datamodule import UltrasoundNerveDataModule

    config = {**config, "clean_contradictory": False}
    dm = UltrasoundNerveDataModule.from_config_dict(data_dir, config, split=False)
    dm.setup()
    return dm


def _require_record(path: Path, ckpt: dict) -> None:
    """Refuse a checkpoint without the scoring record: scored as held out without knowing what
    trained it, training frames could be reported as unseen."""
    if CKPT_KEY in ckpt:
        return
    best = path.with_name("best.ckpt")
    if path.name == best.name:  # the record is written when the run ends
        what = "the run has not finished; finish it (run the same command again), then evaluate it"
    else:
        instead = str(best) if best.is_file() else "the run's best.ckpt"
        what = f"a resume checkpoint such as last.ckpt; evaluate {instead}"
    raise NerveBenchError(
        f"{path}: no scoring record (tuned post-processing, outer fold, training frames): {what}"
    )


def _per_image(ts: Any, rows: dict[str, Any]) -> dict[str, Any]:
    raw, post = counts.per_image_scores(rows["counts"]), counts.per_image_scores(rows["post_counts"])
    idx = rows["index"]
    return {
        "index": idx,
        "stem": [ts.stems[i] for i in idx],
        "subject": ts.subjects[idx],
        "true_empty": raw["true_empty"],
        "dice_raw": raw["dice"],
        "dice": post["dice"],
        "iou": post["iou"],
        "presence_prob": rows["presence_prob"],
    }


def format_metrics(metrics: dict[str, dict[str, float]]) -> str:
    """A small aligned table: one row per metric, raw and post-processed columns."""
    from benchmark.scoring.metrics import METRIC_NAMES

    # The canonical order (kaggle_dice first), whether the dict was just computed or read back from a
    # summary.json written with sorted keys.
    names = sorted(
        metrics["post"], key=lambda n: (METRIC_NAMES.index(n) if n in METRIC_NAMES else len(METRIC_NAMES), n)
    )
    width = max(len(n) for n in names)
    lines = [f"{'metric':<{width}}  {'raw':>8}  {'post':>8}"]
    for name in names:
        raw, post = metrics["raw"].get(name), metrics["post"].get(name)
        cells = [f"{v:8.4f}" if isinstance(v, float) else f"{'-':>8}" for v in (raw, post)]
        lines.append(f"{name:<{width}}  {cells[0]}  {cells[1]}")
    return "\n".join(lines)

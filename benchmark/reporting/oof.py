"""Out-of-fold images of one model, from its run summaries: each image's subject, unit and truth,
its scores averaged over the seeds, and each seed's own scores (what the board's CIs and tests draw
seeds from); the exact scores of the all-empty floor on the same images (pure numpy)."""

from __future__ import annotations

from typing import Any

import numpy as np

IMAGE_VALUES = ("dice", "dice_raw", "iou")


def per_image(runs: list[dict[str, Any]], key: str) -> np.ndarray:
    """Every run's per-image ``key`` values, concatenated (a missing score is NaN)."""
    parts = [(s.get("per_image") or {}).get(key) or [] for s in runs]
    if key in IMAGE_VALUES:
        return np.asarray([np.nan if v is None else v for p in parts for v in p], dtype=float)
    return np.asarray([v for p in parts for v in p])


def has_units(runs: list[dict[str, Any]]) -> bool:
    """Whether every run records each image's unit (subjects that share frames are one,
    ``link_subjects``); summaries written before units do not. Decided once per board, so that every
    model's CIs and paired tests resample the same clusters."""
    return all(
        len((s.get("per_image") or {}).get("unit") or []) == len(s["per_image"]["index"]) for s in runs
    )


def oof_images(runs: list[dict[str, Any]], units: bool | None = None) -> dict[str, np.ndarray]:
    """Per image (sorted by index): subject, unit, true_empty, and each score averaged over its seeds."""
    units = has_units(runs) if units is None else units
    index = per_image(runs, "index").astype(np.int64)
    uniq, first, inverse = np.unique(index, return_index=True, return_inverse=True)
    n_seeds = np.bincount(inverse, minlength=uniq.size)
    out = {
        "index": uniq,
        "subject": per_image(runs, "subject")[first],
        # what a CI resamples: the unit when the board records units (``has_units``), else the subject
        "unit": per_image(runs, "unit" if units else "subject")[first],
        "true_empty": per_image(runs, "true_empty").astype(bool)[first],
        "n_seeds": n_seeds,
    }
    for key in IMAGE_VALUES:  # each seed's scores too: the CIs and tests draw seeds from them
        out[key] = np.bincount(inverse, weights=per_image(runs, key), minlength=uniq.size) / n_seeds
        out[f"seeds_{key}"] = by_seed(runs, uniq, key)
    return out


def by_seed(runs: list[dict[str, Any]], index: np.ndarray, key: str) -> np.ndarray:
    """(seeds, images): each seed's ``key`` score of every image in the sorted ``index`` (NaN where
    that seed scored none: an incomplete model, which is not tested)."""
    seeds = sorted({int(s["seed"]) for s in runs})
    out = np.full((len(seeds), index.size), np.nan)
    for row, mine in enumerate([s for s in runs if int(s["seed"]) == seed] for seed in seeds):
        out[row, np.searchsorted(index, per_image(mine, "index").astype(np.int64))] = per_image(mine, key)
    return out


def baseline_images(images: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What the all-empty prediction scores on these images: 1 on an empty truth, 0 elsewhere (exact)."""
    score = images["true_empty"].astype(float)
    seeds = {f"seeds_{key}": score[None] for key in IMAGE_VALUES}  # exact: no training, one "seed"
    return {**images, "dice": score, "dice_raw": score.copy(), "iou": score.copy(), **seeds}


def seed_spread(images: dict[str, np.ndarray]) -> tuple[list[float], float | None]:
    """(per-seed out-of-fold mean Kaggle Dice, their SD with ddof 1; None with fewer than 2 seeds)."""
    means = images["seeds_dice"].mean(axis=1).tolist()
    return means, float(np.std(means, ddof=1)) if len(means) >= 2 else None

"""Post-processing of 420x580 probability maps and its tuning on the validation fold (pure numpy).

Three per-image rules, applied in this order:

1. threshold: foreground = ``prob > threshold`` (strict, as the raw metrics use ``prob > 0.5``);
2. minimum area: if the image's total predicted area (foreground pixel count, all components
   together) is ``< min_area``, the prediction is emptied. This is the common Kaggle trick for
   this competition: ~59% of truths are empty and a small spurious blob costs a full Dice point;
3. presence gate: if the image's presence score is ``< presence_tau`` the prediction is emptied.
   The score is the presence-head probability (``presence_source="presence"``, when given) or
   else the image's maximum pixel probability.

``tune`` grid-searches the three on the tuning (validation) fold only, maximising the Kaggle
mean Dice; the caller guarantees the data is not the evaluation fold. Probabilities may be float
in [0, 1] or uint8 ``ceil(p*255 - 0.5)`` (the compact form of ``benchmark.evaluation.inference``); floats
are quantised to that form first (``to_u8``), so both give identical masks at any threshold.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmark.core.config import ConfigError

PRESENCE_SOURCES = ("max_prob", "presence")
DEFAULT_THRESHOLDS = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7)
DEFAULT_MIN_AREAS = (0, 250, 500, 1000, 1500, 2000, 2500, 3000, 4000, 5000)
DEFAULT_TAUS = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
_CHUNK = 32  # images per chunk: ~8 M pixels of temporaries at 420x580


@dataclass(frozen=True)
class PostProcess:
    """Parameters of :func:`apply`; the defaults are the identity (threshold 0.5 only)."""

    threshold: float = 0.5
    min_area: int = 0
    presence_tau: float = 0.0
    presence_source: str = "max_prob"
    tta: bool = False  # recorded only: whether the probabilities came from flip TTA

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.threshold) < 1.0:
            raise ConfigError(f"postprocess.threshold: must be in [0, 1), got {self.threshold!r}")
        if isinstance(self.min_area, bool) or int(self.min_area) != self.min_area or self.min_area < 0:
            raise ConfigError(f"postprocess.min_area: must be a non-negative integer, got {self.min_area!r}")
        if not 0.0 <= float(self.presence_tau) <= 1.0:
            raise ConfigError(f"postprocess.presence_tau: must be in [0, 1], got {self.presence_tau!r}")
        if self.presence_source not in PRESENCE_SOURCES:
            got = self.presence_source
            raise ConfigError(f"postprocess.presence_source: must be one of {PRESENCE_SOURCES}, got {got!r}")
        object.__setattr__(self, "threshold", float(self.threshold))
        object.__setattr__(self, "min_area", int(self.min_area))
        object.__setattr__(self, "presence_tau", float(self.presence_tau))
        object.__setattr__(self, "tta", bool(self.tta))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PostProcess:
        """Inverse of :meth:`to_dict`; unknown keys raise ConfigError naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict):  # a string's characters would read as "unknown keys"
            raise ConfigError(
                f"postprocess: expected a mapping of {sorted(known)}, got {type(data).__name__}"
            )
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"postprocess: unknown keys {unknown}; expected some of {sorted(known)}")
        return cls(**data)


def to_u8(prob: np.ndarray) -> np.ndarray:
    """Probabilities as uint8 ``ceil(p*255 - 0.5)`` (round half down); uint8 passes through.

    Tuning sees this compact uint8 form, so every later application quantises the same way first:
    otherwise a threshold such as 0.35 (89.25 in uint8 units) would cut pixels with p in
    (0.349, 0.351) differently at tuning and at evaluation time. Half rounds *down* so that p = 0.5
    stays background at threshold 0.5, like the raw metric's strict ``p > 0.5``.
    ``benchmark.scoring.post_counts`` quantises with the same formula in torch (float32, the
    same two IEEE operations, so the same bytes).
    """
    prob = np.asarray(prob)
    if prob.dtype == np.uint8:
        return prob
    if not np.issubdtype(prob.dtype, np.floating):
        raise ValueError(f"probabilities must be float in [0,1] or uint8 p*255, got dtype {prob.dtype}")
    p = np.clip(prob.astype(np.float32, copy=False), 0.0, 1.0)
    return np.ceil(p * np.float32(255) - np.float32(0.5)).astype(np.uint8)


def _check_inputs(prob: np.ndarray, truth: np.ndarray | None, presence_prob: np.ndarray | None) -> None:
    if prob.ndim != 3:
        raise ValueError(f"probabilities must be (N,H,W), got shape {prob.shape}")
    if truth is not None and truth.shape != prob.shape:
        raise ValueError(f"truth shape {truth.shape} differs from probabilities shape {prob.shape}")
    if presence_prob is not None and presence_prob.shape != (prob.shape[0],):
        raise ValueError(f"presence_prob must be ({prob.shape[0]},), got shape {presence_prob.shape}")


def _presence_scores(max_prob: np.ndarray, presence_prob: np.ndarray | None, source: str) -> np.ndarray:
    """The gate's per-image score: the presence head when asked for and given, else max prob."""
    if source == "presence" and presence_prob is not None:
        return np.asarray(presence_prob, dtype=np.float64)
    return max_prob


def threshold_cut(threshold: float) -> int:
    """The largest uint8 value that stays background: for every integer p, :func:`apply`'s
    ``p > threshold * 255`` (compared in float64) is ``p > threshold_cut(threshold)``, which a device
    compares exactly in integers."""
    return math.floor(threshold * 255.0)


def kept(
    area: np.ndarray, max_prob: np.ndarray, presence_prob: np.ndarray | None, params: PostProcess
) -> np.ndarray:
    """(N,) bool: which images keep their thresholded mask (its area at least ``min_area``, the gate's
    score at least ``presence_tau``); ``max_prob`` is the image's largest uint8 value / 255."""
    score = _presence_scores(max_prob, presence_prob, params.presence_source)
    return ~((area < params.min_area) | (score < params.presence_tau))


def apply(prob: np.ndarray, params: PostProcess, presence_prob: np.ndarray | None = None) -> np.ndarray:
    """(N,H,W) probabilities -> (N,H,W) bool masks by threshold, min-area and presence rules."""
    prob = np.asarray(prob)
    presence_prob = None if presence_prob is None else np.asarray(presence_prob, dtype=np.float64).reshape(-1)
    _check_inputs(prob, None, presence_prob)
    out = np.empty(prob.shape, dtype=bool)
    for start in range(0, prob.shape[0], _CHUNK):
        sl = slice(start, start + _CHUNK)
        p = to_u8(prob[sl])
        mask = np.greater(p, params.threshold * 255.0, out=out[sl])
        area = np.count_nonzero(mask, axis=(1, 2))
        max_prob = p.reshape(mask.shape[0], -1).max(axis=1) / 255.0
        pres = None if presence_prob is None else presence_prob[sl]
        mask[~kept(area, max_prob, pres, params)] = False
    return out


def _per_threshold_counts(
    prob: np.ndarray, truth: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One pass over the images: per-threshold (T,N) predicted area and TP, (N,) truth area, max prob."""
    n, scale = prob.shape[0], 255.0
    area = np.zeros((len(thresholds), n), dtype=np.int64)
    tp = np.zeros_like(area)
    truth_area = np.zeros(n, dtype=np.int64)
    max_prob = np.zeros(n, dtype=np.float64)
    for start in range(0, n, _CHUNK):
        sl = slice(start, start + _CHUNK)
        p, t = to_u8(prob[sl]), truth[sl].astype(bool, copy=False)
        truth_area[sl] = np.count_nonzero(t, axis=(1, 2))
        max_prob[sl] = p.reshape(p.shape[0], -1).max(axis=1) / scale
        for i, thr in enumerate(thresholds):
            mask = p > thr * scale
            area[i, sl] = np.count_nonzero(mask, axis=(1, 2))
            tp[i, sl] = np.count_nonzero(mask & t, axis=(1, 2))
    return area, tp, truth_area, max_prob


def _grid(values: Sequence[float] | None, default: Sequence[float], must: float) -> np.ndarray:
    """Sorted unique grid that always contains the identity value (so tuning never loses)."""
    return np.unique(np.append(np.asarray(default if values is None else values, dtype=np.float64), must))


def _score_table(
    area: np.ndarray,
    tp: np.ndarray,
    truth_area: np.ndarray,
    score: np.ndarray,
    min_areas: np.ndarray,
    taus: np.ndarray,
) -> np.ndarray:
    """Mean Kaggle Dice for every (threshold, min_area, tau): (T, A, U)."""
    den = area + truth_area[None]
    kept = np.where(den > 0, 2.0 * tp / np.maximum(den, 1), 1.0)  # (T,N) Dice of the thresholded mask
    emptied = (truth_area == 0).astype(np.float64)  # (N,) Dice once the prediction is emptied
    table = np.empty((len(area), len(min_areas), len(taus)))
    gate = score[None, :] >= taus[:, None]  # (U,N) images passing the presence gate
    for a, min_area in enumerate(min_areas):
        keep = (area >= min_area)[:, None, :] & gate[None]  # (T,U,N)
        dice = np.where(keep, kept[:, None, :], emptied[None, None, :])
        table[:, a, :] = dice.mean(axis=2)
    return table


def _best_index(table: np.ndarray, thresholds: np.ndarray, min_areas: np.ndarray, taus: np.ndarray) -> tuple:
    """argmax with deterministic ties: lowest min_area, lowest tau, threshold nearest 0.5, lowest."""
    best = table.max()
    ties = np.argwhere(table >= best - 1e-12)
    key = [(min_areas[a], taus[u], abs(thresholds[t] - 0.5), thresholds[t], (t, a, u)) for t, a, u in ties]
    return min(key)[-1]


def tune(
    prob: np.ndarray,
    truth: np.ndarray,
    presence_prob: np.ndarray | None = None,
    thresholds: Sequence[float] | None = None,
    min_areas: Sequence[int] | None = None,
    taus: Sequence[float] | None = None,
    tta: bool = False,
) -> tuple[PostProcess, float]:
    """Grid-search :class:`PostProcess` maximising kaggle_dice on the given (validation) images.

    Each threshold costs one comparison pass over the probabilities (chunked); min-area and
    presence-gate choices are then per-image decisions on the precomputed (area, TP) counts.
    The grids always include the identity (0.5, 0, 0.0), so the result never scores below the
    defaults on these images. The gate uses ``presence_prob`` (source "presence") when given.
    """
    prob, truth = np.asarray(prob), np.asarray(truth)
    presence_prob = None if presence_prob is None else np.asarray(presence_prob, dtype=np.float64).reshape(-1)
    _check_inputs(prob, truth, presence_prob)
    if prob.shape[0] == 0:
        raise ValueError("cannot tune post-processing on zero images")
    thr = _grid(thresholds, DEFAULT_THRESHOLDS, 0.5)
    areas = _grid(min_areas, DEFAULT_MIN_AREAS, 0)
    if (areas != np.floor(areas)).any():
        raise ConfigError(f"postprocess.min_area: grid values must be integers, got {areas.tolist()}")
    areas = areas.astype(np.int64)
    tau = _grid(taus, DEFAULT_TAUS, 0.0)
    source = "presence" if presence_prob is not None else "max_prob"
    for i in (0, -1):  # grids are sorted: validating both corners validates every value
        PostProcess(float(thr[i]), int(areas[i]), float(tau[i]), source)
    area, tp, truth_area, max_prob = _per_threshold_counts(prob, truth, thr)
    table = _score_table(area, tp, truth_area, _presence_scores(max_prob, presence_prob, source), areas, tau)
    t, a, u = _best_index(table, thr, areas, tau)
    params = PostProcess(float(thr[t]), int(areas[a]), float(tau[u]), source, tta)
    return params, float(table[t, a, u])

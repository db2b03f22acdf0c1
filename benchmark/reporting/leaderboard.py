"""The leaderboard: pure aggregation of run summaries (summary.json dicts) into ranked model rows.

Each model's metric is the mean over its (fold, seed) runs with a 95% Student-t interval over runs;
with a single run the interval is a per-image percentile bootstrap instead (Efron & Tibshirani
1993), and the row says which. Models are compared with the top-ranked one by a paired bootstrap
test on per-image post-processed Dice, paired on (fold, seed, image index) present in both.
Rendering to Markdown/CSV/JSON lives in ``benchmark.report``.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from typing import Any

import numpy as np

from benchmark.core.config import _NOT_HASHED
from benchmark.scoring import stats

BASELINE = "empty"
# (column key, summary block, metric name) in display order; the first is the ranking metric.
METRICS = (
    ("kaggle_dice", "post", "kaggle_dice"),
    ("dice_positive", "post", "dice_positive"),
    ("iou", "post", "iou"),
    ("sensitivity", "post", "sensitivity"),
    ("precision", "post", "precision"),
    ("f1", "post", "f1"),
    ("presence_accuracy", "post", "presence_accuracy"),
    ("raw_kaggle_dice", "raw", "kaggle_dice"),
)
COST = ("params", "gflops", "train_time_s", "train_img_s", "infer_img_s", "latency_ms", "peak_mem_mb")
N_BOOT = 10_000
SEED = 0
_RUN_KEYS = {"model", "model_kwargs", "fold", "seed"}  # per-run/per-model; the rest is shared


def benchmark_hash(summary: dict[str, Any]) -> str:
    """Hash of the run's config without model/kwargs/fold/seed: equal for every run of one benchmark."""
    cfg = summary.get("config") or {}
    payload = {k: v for k, v in cfg.items() if k not in _NOT_HASHED | _RUN_KEYS}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def _key(summary: dict[str, Any]) -> tuple[str, str]:
    return benchmark_hash(summary), str((summary.get("dataset") or {}).get("content_hash"))


def select_runs(summaries: list[dict[str, Any]]) -> tuple[list[dict], list[dict]]:
    """Keep complete runs of the most common (benchmark config, dataset); return (kept, ignored).

    Runs left over from an older config or another dataset would otherwise be averaged together.
    Ties between groups go to the lexicographically smaller key, so the choice is deterministic.
    """
    complete = [s for s in summaries if s.get("status") == "complete"]
    if not complete:
        return [], sorted(summaries, key=lambda s: str(s.get("run")))
    counts = Counter(_key(s) for s in complete)
    best = min(counts, key=lambda k: (-counts[k], k))
    kept = sorted((s for s in complete if _key(s) == best), key=lambda s: s["run"])
    kept_ids = {id(s) for s in kept}
    ignored = sorted((s for s in summaries if id(s) not in kept_ids), key=lambda s: str(s.get("run")))
    return kept, ignored


def _per_image_values(summary: dict[str, Any], column: str) -> np.ndarray | None:
    """Per-image values whose mean *is* the metric ``column``, or None when there are none."""
    per = summary.get("per_image") or {}
    source = {"kaggle_dice": "dice", "raw_kaggle_dice": "dice_raw", "iou": "iou", "dice_positive": "dice"}
    if column not in source or not per.get(source[column]):
        return None
    values = np.asarray([np.nan if v is None else v for v in per[source[column]]], dtype=float)
    if column == "dice_positive":
        values = values[~np.asarray(per.get("true_empty", []), dtype=bool)]
    return values if values.size and np.isfinite(values).all() else None


def _metric(summary: dict[str, Any], block: str, name: str) -> float | None:
    value = ((summary.get("metrics") or {}).get(block) or {}).get(name)
    return None if value is None else float(value)


def metric_ci(runs: list[dict[str, Any]], column: str, block: str, name: str) -> dict[str, Any]:
    """Mean and 95% CI of one metric: t over runs, or per-image bootstrap for a single run."""
    values = [v for v in (_metric(s, block, name) for s in runs) if v is not None]
    if not values:
        return {"mean": None, "lo": None, "hi": None, "ci": "n/a"}
    if len(values) > 1:
        mean, lo, hi = stats.mean_ci_t(np.asarray(values))
        return {"mean": float(mean), "lo": float(lo), "hi": float(hi), "ci": "t"}
    per = _per_image_values(runs[0], column) if len(runs) == 1 else None
    # Only bootstrap when the per-image values reproduce the reported metric exactly.
    if per is None or abs(float(per.mean()) - values[0]) > 1e-6:
        return {"mean": values[0], "lo": None, "hi": None, "ci": "n/a"}
    _, lo, hi = stats.bootstrap_ci(per, n_boot=N_BOOT, seed=SEED)
    return {"mean": values[0], "lo": float(lo), "hi": float(hi), "ci": "bootstrap"}


def _paired_dice(runs: list[dict[str, Any]]) -> dict[tuple[int, int, int], float]:
    """Per-image post-processed Dice keyed by (fold, seed, image index)."""
    out = {}
    for s in runs:
        per = s.get("per_image") or {}
        for idx, dice in zip(per.get("index", []), per.get("dice", [])):
            if dice is not None:
                out[(int(s["fold"]), int(s["seed"]), int(idx))] = float(dice)
    return out


def paired_pvalue(runs: list[dict], top_runs: list[dict]) -> tuple[float | None, int]:
    """Two-sided paired bootstrap p-value of mean per-image Dice vs the top model; (p, n_pairs)."""
    a, b = _paired_dice(runs), _paired_dice(top_runs)
    keys = sorted(set(a) & set(b))
    if len(keys) < 2:
        return None, len(keys)
    x = np.asarray([a[k] for k in keys])
    y = np.asarray([b[k] for k in keys])
    return float(stats.paired_bootstrap_pvalue(x, y, n_boot=N_BOOT, seed=SEED)), len(keys)


def _cost(runs: list[dict[str, Any]]) -> dict[str, float | None]:
    """Mean of each cost over the runs that report it (None = "n/a")."""
    out = {}
    for key in COST:
        source = [
            s.get("train_time_s") if key == "train_time_s" else (s.get("cost") or {}).get(key) for s in runs
        ]
        values = [float(v) for v in source if v is not None]
        out[key] = float(np.mean(values)) if values else None
    return out


def model_row(model: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate the runs of one model (without rank or p-value)."""
    runs = sorted(runs, key=lambda s: (int(s["fold"]), int(s["seed"])))
    return {
        "model": model,
        "baseline": model == BASELINE,
        "n_runs": len(runs),
        "folds": sorted({int(s["fold"]) for s in runs}),
        "seeds": sorted({int(s["seed"]) for s in runs}),
        "n_images": sum(len((s.get("per_image") or {}).get("dice", [])) for s in runs),
        "metrics": {col: metric_ci(runs, col, block, name) for col, block, name in METRICS},
        "cost": _cost(runs),
        "config_hashes": sorted({str(s.get("config_hash")) for s in runs}),
    }


def _rank_key(row: dict[str, Any]) -> tuple[float, str]:
    mean = row["metrics"]["kaggle_dice"]["mean"]
    return (-(mean if mean is not None else -np.inf), row["model"])


def rank_rows(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per model, ranked by mean post-processed kaggle_dice, with p-values vs the top."""
    by_model: dict[str, list[dict]] = {}
    for s in summaries:
        by_model.setdefault(str(s["model"]), []).append(s)
    rows = sorted((model_row(m, runs) for m, runs in by_model.items()), key=_rank_key)
    top = rows[0]["model"] if rows else None
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
        if row["model"] == top:
            row["p_value"], row["n_pairs"] = None, 0
        else:
            row["p_value"], row["n_pairs"] = paired_pvalue(by_model[row["model"]], by_model[top])
    return rows


def _unique(summaries: list[dict[str, Any]], block: str, key: str) -> list[str]:
    return sorted({str((s.get(block) or {}).get(key, "unknown")) for s in summaries})


def header(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Dataset, hardware, software and config provenance shared by the leaderboard's runs."""
    datasets = sorted({json.dumps(s.get("dataset") or {}, sort_keys=True) for s in summaries})
    software = {
        k: _unique(summaries, "environment", k) for k in ("python", "torch", "lightning", "smp", "timm")
    }
    return {
        "datasets": [json.loads(d) for d in datasets],
        "device": _unique(summaries, "environment", "device"),
        "platform": _unique(summaries, "environment", "platform"),
        "software": software,
        "git_sha": _unique(summaries, "environment", "git_sha"),
        "benchmark_hash": sorted({benchmark_hash(s) for s in summaries}),
        "n_runs": len(summaries),
        "models": sorted({str(s["model"]) for s in summaries}),
    }


def build(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """The whole leaderboard as plain data: header, ranked rows, per-run index, ignored runs."""
    kept, ignored = select_runs(summaries)
    return {
        "header": header(kept),
        "rows": rank_rows(kept),
        "runs": [{k: s.get(k) for k in ("run", "model", "fold", "seed", "config_hash")} for s in kept],
        "ignored_runs": [str(s.get("run")) for s in ignored],
    }

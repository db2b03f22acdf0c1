"""The leaderboard: pure aggregation of schema-2 run summaries into out-of-fold model rows.

Protocol (issue 11): every run was selected (epoch, post-processing) on an inner set of its outer
training subjects and scored once on its outer fold. With K outer folds, the K runs of one seed
score every image once, by a model that never saw its subject. Per image, each score is first
averaged over the model's seeds; a column is then the mean over images (all, or the positive /
empty ones). Frames of one patient are correlated, so the unit of independence is the subject.

Statistics (issue 17), all on the ranked quantity, the image-weighted mean, through per-subject
TOTALS with the image counts fixed:
* 95% CIs resample subjects and recompute the image mean (``stats.subject_bootstrap_ci``);
* ``p vs top``: the studentised gap to the top, corrected over every pair of rows and for the top
  being picked on the same data (``ranking.simultaneous_pvalues``); the pair's own p before that
  correction is kept as ``p_unadjusted``;
* with two or more seeds, each model's seeds are drawn in every resample of the CIs and tests, so
  they cover training randomness (``benchmark.scoring.seed_draws``), and the SD of the per-seed
  out-of-fold means is shown;
* the top group is the 95% model confidence set for the best (``ranking.best_set``), which accounts
  for the top being picked on the same data; the all-empty floor is shown but is not a contender;
* simultaneous 95% intervals for every row's rank (``ranking.rank_intervals``), and the smallest gap
  to the top that p vs top detects with 80% power (``ranking.detectable_differences``).
One subject bootstrap (``ranking.Resamples``) serves the set, the rank intervals, p vs top and the
power.
A model whose folds do not score exactly the expected images once per seed
(``benchmark.reporting.completeness``) is shown as incomplete and not ranked.
The statistics live in ``benchmark.reporting.board_stats``, rendering in ``benchmark.reporting.tables``.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from typing import Any

import numpy as np

from benchmark.core.config import NOT_HASHED
from benchmark.reporting import board_stats, completeness, recipe, sources
from benchmark.reporting.oof import (
    IMAGE_VALUES,
    baseline_images,
    has_units,
    oof_images,
    per_image,
    seed_spread,
)
from benchmark.scoring import stats

BASELINE = "empty"

# Out-of-fold columns: (key, per-image source, subset by true_empty: None = all images).
OOF_METRICS = (
    ("kaggle_dice", "dice", None),
    ("dice_positive", "dice", False),
    ("empty_correct", "dice", True),  # Dice on an empty truth is 1 iff the prediction is empty
    ("iou", "iou", None),
    ("raw_kaggle_dice", "dice_raw", None),
)
# Pooled metrics not derivable from per-image rows: (key, block, stage, name), mean over runs.
RUN_MEANS = (
    ("selection_kaggle_dice", "selection", "post", "kaggle_dice"),
    ("sensitivity", "metrics", "post", "sensitivity"),
    ("precision", "metrics", "post", "precision"),
    ("presence_accuracy", "metrics", "post", "presence_accuracy"),
)
COST = ("params", "gflops", "train_time_s", "train_img_s", "infer_img_s", "latency_ms", "peak_mem_mb")


def benchmark_hash(summary: dict[str, Any]) -> str:
    """Hash of the run's config without model/kwargs/fold/seed: equal for every run of one benchmark."""
    cfg = summary.get("config") or {}
    # without the run's own fields and the execution-only NOT_HASHED ones, a config is one benchmark
    payload = {k: v for k, v in cfg.items() if k not in NOT_HASHED | recipe.RUN_KEYS}
    # a per-model recipe: the benchmark's shared values (of hashed fields: an execution-only one
    # recorded by an earlier version must not set the run apart)
    payload.update({k: v for k, v in (cfg.get("model_recipe") or {}).items() if k not in NOT_HASHED})
    if summary.get("cpu_processes"):  # CPU DDP: another recipe (TrainConfig.box_recipe)
        payload["cpu_processes"] = summary["cpu_processes"]
    if not payload.get("link_subjects", True):  # off, or before the field: one benchmark (same split)
        payload.pop("link_subjects")
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def _key(summary: dict[str, Any]) -> tuple[str, str]:
    return benchmark_hash(summary), str((summary.get("dataset") or {}).get("content_hash"))


def select_runs(summaries: list[dict[str, Any]], prefer: str | None = None) -> tuple[list[dict], list[dict]]:
    """Keep complete runs of one (benchmark config, dataset): the benchmark ``prefer`` (a hash, or
    its start) names, else the most common, real data first; return (kept, ignored).

    Runs left over from an older config or another dataset would otherwise be averaged together.
    Ties between groups go to the lexicographically smaller key, so the choice is deterministic.
    """
    complete = [s for s in summaries if s.get("status") == "complete"]
    if not complete:
        return [], sorted(summaries, key=lambda s: str(s.get("run")))
    counts = Counter(_key(s) for s in complete)
    # Real data before the synthetic fallback's runs (a first `make benchmark` before the download).
    synthetic = {_key(s) for s in complete if (s.get("dataset") or {}).get("synthetic")}
    chosen = {k for k in counts if prefer is not None and k[0].startswith(prefer)}
    best = min(counts, key=lambda k: (k not in chosen, k in synthetic, -counts[k], k))
    kept = sorted((s for s in complete if _key(s) == best), key=lambda s: s["run"])
    kept_ids = {id(s) for s in kept}
    ignored = sorted((s for s in summaries if id(s) not in kept_ids), key=lambda s: str(s.get("run")))
    return kept, ignored


def _split(summary: dict[str, Any]) -> dict[str, Any]:
    return summary.get("split") or {}


def expected_images(runs: list[dict[str, Any]]) -> int:
    """Images the K outer folds cover together (fold table rows 0..K-1), else every index seen: the
    count rule for summaries that do not say which images they must cover.

    In hold-out mode K = 1 and the table's second row is the training rest, which is never scored.
    """
    table, k = completeness.fold_table(runs), completeness.n_folds(runs)
    if table:
        return int(sum(int(row["n_images"]) for row in table if int(row["fold"]) < k))
    return int(np.unique(per_image(runs, "index")).size)


def expected(runs: list[dict[str, Any]]) -> tuple[np.ndarray, str] | int:
    """What each seed's folds must score: the exact index set when the split records it, else the set
    most models agree on (of the fold table's size), else a count."""
    found = completeness.expected_index(runs)
    if found is not None:
        return found
    count = expected_images(runs)
    agreed = completeness.agreed_index(runs, count)
    return count if agreed is None else agreed


def missing(
    runs: list[dict[str, Any]], k: int, images: tuple[np.ndarray, str] | int, seeds: list[int] | None = None
) -> list[str]:
    """Why a model is incomplete ([] = complete): each of the benchmark's ``seeds`` (default: the
    model's own) needs K folds that score exactly ``images`` (``expected``), each once; a seed with
    no run at all counts too."""
    seen = Counter((int(s["fold"]), int(s["seed"])) for s in runs)
    problems = [f"fold {f} seed {e}: {c} runs" for (f, e), c in sorted(seen.items()) if c > 1]
    problems += completeness.mixed_sources(runs)
    for seed in sorted(set(seeds or []) | {e for _, e in seen}):
        absent = [str(f) for f in range(k) if (f, seed) not in seen]
        if absent:
            problems.append(f"seed {seed}: fold{'s' if len(absent) > 1 else ''} {', '.join(absent)} missing")
            continue
        problems += completeness.seed_coverage(seed, [s for s in runs if int(s["seed"]) == seed], images)
    return problems


def metric(images: dict[str, np.ndarray], source: str, empty: bool | None, with_ci: bool) -> dict[str, Any]:
    """Mean over the selected images and, when asked and from ``MIN_CI_UNITS`` units, the subject-bootstrap
    95% CI (it resamples units: subjects, or subjects that share frames together)."""
    mask = np.ones(images["index"].size, bool) if empty is None else images["true_empty"] == empty
    values, subjects = images[source][mask], images["unit"][mask]
    out: dict[str, Any] = {"mean": None, "lo": None, "hi": None, "n_images": int(values.size)}
    if values.size == 0 or not np.isfinite(values).all():
        return out
    out["mean"] = float(values.mean())
    if with_ci and np.unique(subjects).size >= board_stats.MIN_CI_UNITS:
        seeds = images[f"seeds_{source}"][:, mask]  # each seed's scores: the CI draws seeds too
        _, lo, hi = stats.subject_bootstrap_ci(
            values, subjects, board_stats.N_BOOT, board_stats.ALPHA, board_stats.SEED, seeds
        )
        out["lo"], out["hi"] = float(lo), float(hi)
    return out


def _mean_over_runs(runs: list[dict[str, Any]], block: str, stage: str, name: str) -> float | None:
    found = []
    for s in runs:
        holder = s.get(block) or {}
        value = ((holder.get("metrics") if block == "selection" else holder) or {}).get(stage, {}) or {}
        if value.get(name) is not None:
            found.append(float(value[name]))
    return float(np.mean(found)) if found else None


def _cost(runs: list[dict[str, Any]]) -> dict[str, float | None]:
    """Mean of each cost over the runs that report it (None = "n/a")."""
    out = {}
    for key in COST:
        source = [s.get(key) if key == "train_time_s" else (s.get("cost") or {}).get(key) for s in runs]
        values = [float(v) for v in source if v is not None]
        out[key] = float(np.mean(values)) if values else None
    return out


def external_provenance(runs: list[dict[str, Any]]) -> str | None:
    """The provenance text of an imported (outside) method's runs, None for our own runs; where its
    runs' texts differ, each names its folds (the texts were joined, which fold said what unsaid)."""
    where: dict[str, list[str]] = {}
    seeds = len({s.get("seed") for s in runs}) > 1
    for s in (s for s in runs if s.get("external")):
        text = str(s["external"].get("provenance") or "external")
        where.setdefault(text, []).append(f"{s.get('fold')}" + (f" seed {s.get('seed')}" if seeds else ""))
    if len(where) <= 1:
        return next(iter(where), None)
    return "; ".join(f"{text} [fold {', '.join(folds)}]" for text, folds in sorted(where.items()))


def model_row(
    model: str,
    runs: list[dict[str, Any]],
    k: int,
    images_expected: tuple[np.ndarray, str] | int,
    seeds: list[int] | None = None,
    units: bool | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(row, out-of-fold images): completeness, OOF metrics (CIs and seed spread only when complete),
    run means, cost. ``units``: resample units (the board's ``has_units``), else subjects."""
    runs = sorted(runs, key=lambda s: (int(s["seed"]), int(s["fold"])))
    problems = missing(runs, k, images_expected, seeds)
    images = oof_images(runs, units)
    if not all(np.isfinite(images[key]).all() for key in IMAGE_VALUES):
        problems.append("per-image scores have missing values")
    seed_means, seed_sd = seed_spread(images) if not problems else ([], None)
    return {
        "model": model,
        "baseline": model == BASELINE,
        "derived": False,
        "external": external_provenance(runs),
        "complete": not problems,
        "missing": problems,
        "n_runs": len(runs),
        "folds": sorted({int(s["fold"]) for s in runs}),
        "seeds": sorted({int(s["seed"]) for s in runs}),
        "n_images": int(images["index"].size),
        "n_subjects": int(np.unique(images["subject"]).size),
        "metrics": {key: metric(images, src, sub, not problems) for key, src, sub in OOF_METRICS},
        "seed_means": seed_means,
        "seed_sd": seed_sd,
        "run_means": {key: _mean_over_runs(runs, *where) for key, *where in RUN_MEANS},
        "cost": _cost(runs),
        "global_batch": sorted({int(s["global_batch"]) for s in runs if s.get("global_batch") is not None}),
        "config_hashes": sorted({str(s.get("config_hash")) for s in runs}),
    }, images


def derived_baseline(images: dict[str, np.ndarray]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The `empty` row computed from the truth alone, for a board without complete `empty` runs."""
    base = baseline_images(images)
    row = {
        "model": BASELINE,
        "baseline": True,
        "derived": True,
        "external": None,
        "complete": True,
        "missing": [],
        "n_runs": 0,
        "folds": [],
        "seeds": [],
        "n_images": int(base["index"].size),
        "n_subjects": int(np.unique(base["subject"]).size),
        "metrics": {key: metric(base, src, sub, True) for key, src, sub in OOF_METRICS},
        "seed_means": [],
        "seed_sd": None,
        "run_means": {key: None for key, *_ in RUN_MEANS},
        "cost": {key: None for key in COST},
        "global_batch": [],
        "config_hashes": [],
    }
    return row, base


def _unique(runs: list[dict[str, Any]], block: str, key: str) -> list[str]:
    return sorted({str((s.get(block) or {}).get(key, "unknown")) for s in runs})


def _scored_again(runs: list[dict[str, Any]]) -> list[str]:
    """'N run(s) on DEVICE at SHA' for runs tuned and scored again after training, on another
    machine or code version than ``environment`` (their inference columns were measured there)."""
    found = [f"{s['scored_again'].get('device')} at {s['scored_again'].get('git_sha')}"
             for s in runs if s.get("scored_again")]  # fmt: skip
    return [f"{found.count(where)} run(s) on {where}" for where in sorted(set(found))]


def _split_values(runs: list[dict[str, Any]], key: str) -> list[Any]:
    """One split setting as recorded (split block first, then the config), unique and sorted."""
    found = {json.dumps(_split(s).get(key, (s.get("config") or {}).get(key))) for s in runs}
    return [json.loads(v) for v in sorted(found)]


DATASET_FIELDS = ("name", "n_train", "n_subjects", "content_hash", "synthetic")


def _dataset_fields(summary: dict[str, Any]) -> dict[str, Any]:
    data = summary.get("dataset") or {}
    return {k: data[k] for k in DATASET_FIELDS if k in data}


def header(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Data set, split, seeds, batch, hardware, software and config provenance shared by the runs."""
    # Only what describes the data set itself: the fit/inner/outer counts differ from run to run.
    datasets = sorted({json.dumps(_dataset_fields(s), sort_keys=True) for s in runs})
    software = {k: _unique(runs, "environment", k) for k in ("python", "torch", "lightning", "smp", "timm")}
    return {
        "datasets": [json.loads(d) for d in datasets],
        "n_folds": completeness.n_folds(runs) if runs else None,
        "mode": _split_values(runs, "mode"),
        "folds": completeness.fold_table(runs),
        "split_seed": _split_values(runs, "split_seed"),
        "inner_fraction": _split_values(runs, "inner_fraction"),
        "link_subjects": _split_values(runs, "link_subjects"),  # [null]: runs from before the field
        "linked_subjects": _split_values(runs, "linked_subjects"),
        "select": sorted({str((s.get("selection") or {}).get("select", "unknown")) for s in runs}),
        "seeds": sorted({int(s["seed"]) for s in runs}),
        "global_batch": sorted({int(s["global_batch"]) for s in runs if s.get("global_batch") is not None}),
        "world_size": sorted({int(s["world_size"]) for s in runs if s.get("world_size") is not None}),
        "device": _unique(runs, "environment", "device"),
        "platform": _unique(runs, "environment", "platform"),
        "software": software,
        "git_sha": _unique(runs, "environment", "git_sha"),
        "scored_again": _scored_again(runs),
        "benchmark_hash": sorted({benchmark_hash(s) for s in runs}),
        "n_runs": len(runs),
        "models": sorted({str(s["model"]) for s in runs}),
        "recipe": recipe.differences(runs),
        "shared_recipe": recipe.shared_recipe(runs),
        "model_sources": sources.model_sources(runs),
        "statistics": board_stats.settings(),
    }


def _model_rows(kept: list[dict[str, Any]]) -> tuple[list[dict], dict[str, dict[str, np.ndarray]]]:
    """Every model's row and OOF images, plus the derived `empty` row when no complete `empty` runs exist."""
    by_model: dict[str, list[dict]] = {}
    for s in kept:
        by_model.setdefault(str(s["model"]), []).append(s)
    k, images_expected = completeness.n_folds(kept), expected(kept)
    seeds = sorted({int(s["seed"]) for s in kept})  # a model must have every seed of the benchmark
    rows, images, units = [], {}, has_units(kept)
    for model in sorted(by_model):
        row, images[model] = model_row(model, by_model[model], k, images_expected, seeds, units)
        rows.append(row)
    completeness.same_images(rows, images)
    complete = [r for r in rows if r["complete"]]
    if complete and not any(r["baseline"] for r in complete):
        rows = [r for r in rows if not r["baseline"]]  # an incomplete `empty` is replaced by the exact one
        row, images[BASELINE] = derived_baseline(images[complete[0]["model"]])
        rows.append(row)
    return rows, images


def build(summaries: list[dict[str, Any]], prefer: str | None = None) -> dict[str, Any]:
    """The whole leaderboard as plain data: header, ranked rows, incomplete rows, runs, ignored runs
    and the other benchmarks whose complete runs the directory holds (of the ``prefer`` one, if any)."""
    kept, ignored = select_runs(summaries, prefer)
    rows, images = _model_rows(kept) if kept else ([], {})
    others = Counter(benchmark_hash(s) for s in ignored if s.get("status") == "complete")
    others.pop(benchmark_hash(kept[0]) if kept else "", None)  # the same config on other data
    return {
        "header": header(kept),
        "rows": board_stats.rank_rows([r for r in rows if r["complete"]], images),
        "incomplete": [r for r in rows if not r["complete"]],
        "runs": [{k: s.get(k) for k in ("run", "model", "fold", "seed", "config_hash")} for s in kept],
        "ignored_runs": [str(s.get("run")) for s in ignored],
        "other_benchmarks": dict(sorted(others.items())),
    }

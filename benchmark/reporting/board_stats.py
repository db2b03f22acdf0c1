"""The board's statistics on the ranked quantity, the image-weighted mean of post-processed Dice,
through per-subject TOTALS with the image counts fixed (issue 17): each model against the top, its
p-value corrected for every pair on the board and for the top being picked on the same data;
simultaneous rank intervals; the 95% confidence set for the best model (the all-empty floor is
tested but is not a contender); whether each model beats that floor (a one-sided test, Holm-adjusted
over the models: the bootstrap-t from 20 subjects, exact sign flips below); and the smallest gap to
the top that the corrected test detects with 80% power. One seeded subject bootstrap serves the
set, the rank intervals, the corrected p-values, the floor test and the power, so a board rebuilt
from the same summaries is the same board. With two or more seeds each model's seeds are drawn
inside every subject resample (``benchmark.scoring.seed_draws``): the tests then cover training
randomness too."""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from benchmark.scoring import ranking, stats

N_BOOT = 2000  # subject-bootstrap resamples (issue 11: at least 2,000, seeded)
N_SET = 10_000  # subject-bootstrap resamples for the top group, the rank intervals and the power
ALPHA = 0.05
# Below this many units the subject bootstrap's 95% CI covers far less (tests/benchmark/
# test_stats_simulation.py: 0.94 with 10 subjects, 0.93 with 6, 0.47 with 2): no CI is shown.
MIN_CI_UNITS = 10
POWER = 0.8  # the power at which the detectable difference is stated
SEED = 0
FLOOR_BOOT_MIN = 20  # from this many subjects the floor test is the bootstrap-t, below it exact sign flips


def subject_totals(images: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(seed-mean totals (models x subjects) of post-processed Dice, image count per subject, per model
    its per-seed totals (seeds x subjects)) over the images every model scored (complete models all
    score the same ones; see ``common_images``)."""
    common = common_images(images)
    rows, per_seed = [], []
    for im in images:
        at = np.searchsorted(im["index"], common)
        _, totals, counts = stats.subject_totals(im["dice"][at], im["unit"][at])  # linked subjects: one
        rows.append(totals)
        by_seed = im["seeds_dice"][:, at]  # set for every model and the floor (``oof``)
        per_seed.append(np.stack([stats.subject_totals(v, im["unit"][at])[1] for v in by_seed]))
    return np.vstack(rows), counts.astype(np.float64), per_seed


def common_images(images: list[dict[str, Any]]) -> np.ndarray:
    """The image indices every model scored. Complete rows score the same set; a board whose rows
    differ would test the models on a subset while ranking each on its own, so it is refused."""
    common = images[0]["index"]
    for other in images[1:]:
        if not np.array_equal(other["index"], common):
            raise ValueError("ranked models scored different images; their tests would compare a subset")
    return common


def _rank_key(row: dict[str, Any]) -> tuple[float, bool, str]:
    """Highest mean first; a model tied with the floor ranks above it (the floor is no contender, and
    its name would otherwise put it first and make every row's "top" the floor); then by name."""
    return (-row["metrics"]["kaggle_dice"]["mean"], bool(row["baseline"]), row["model"])


def rank_rows(rows: list[dict[str, Any]], images: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Rank complete rows by OOF Kaggle Dice (ties: the floor last, then name); tests vs the top, rank
    intervals, the set."""
    ranked = sorted((r for r in rows if r["metrics"]["kaggle_dice"]["mean"] is not None), key=_rank_key)
    if not ranked:
        return []
    totals, weights, per_seed = subject_totals([images[r["model"]] for r in ranked])
    boot = ranking.Resamples.draw(weights.size, N_SET, SEED)
    keys = [zlib.crc32(r["model"].encode()) for r in ranked]  # a model's seed draws: by name, not row
    pairs = ranking.Pairs.compare(totals, weights, boot, per_seed, SEED, keys)
    lo, hi = ranking.rank_intervals(pairs, ALPHA)
    # The floor is shown and tested but is not a contender: it stays out of the confidence set.
    contenders = [i for i, r in enumerate(ranked) if not r["baseline"]]
    p_best = dict(zip(contenders, ranking.best_set(pairs, contenders).tolist()))
    power_boot = ranking.Resamples(boot.counts[:N_BOOT])  # enough for a power curve; 5x cheaper
    # pairs (0, i) come first in the pair order (upper triangle, row 0): the top against row i
    top = slice(0, len(ranked) - 1)
    critical = ranking.simultaneous_criticals(pairs, ALPHA)[top]
    mde = [None] + ranking.detectable_differences(
        totals[1:] - totals[0], weights, critical, POWER, power_boot, seed_var=pairs.seed_var[top]
    )
    tested = bool(weights.size >= ranking.MIN_SUBJECTS)
    p_top = [None] + ranking.simultaneous_pvalues(pairs)[top].tolist()
    p_own = [None] + (pairs.marginal[top] if tested else np.ones(len(ranked) - 1)).tolist()
    vs_floor = floor_tests(ranked, totals, weights, pairs)
    for i, row in enumerate(ranked):
        row["vs_floor"] = vs_floor.get(i)
        row["rank"], row["rank_ci"] = i + 1, [int(lo[i]), int(hi[i])]
        gap = float((totals[i] - totals[0]).sum() / weights.sum())
        row["vs_top"] = {"diff": gap, "p": p_top[i], "p_unadjusted": p_own[i],
                         "n_subjects": int(weights.size), "mde": mde[i], "tested": tested}  # fmt: skip
        row["p_best"] = p_best.get(i)
        row["top_group"] = None if i not in p_best else bool(p_best[i] >= ALPHA)
    return ranked


def floor_tests(
    ranked: list[dict[str, Any]], totals: np.ndarray, weights: np.ndarray, pairs: ranking.Pairs
) -> dict[int, dict]:
    """Row index -> (model - floor) gap, ONE-sided p of "above the floor" and its Holm adjustment over
    the models ("clears the floor" is a directional claim about every model at once). Empty without
    a floor row.

    From ``FLOOR_BOOT_MIN`` subjects: the pair's own bootstrap-t (seeds drawn with the subjects). A
    sign flip tests that per-subject differences are symmetric about 0, not that their image-weighted
    mean is 0: a model 0.5 worse than the floor on 10% of 47 subjects and a little better on the rest
    (the floor's mean) cleared it in 11.7% of simulated data sets, the bootstrap-t in 4.8%. Below
    that the bootstrap is erratic (on the example's 8 subjects it showed models 0.2-0.4 above the
    floor at p 0.1-0.35) and neither holds its level when differences are skewed (a sample without
    a failing subject looks like a better model), so the exact sign flip of the seed-mean totals
    serves: exact when differences are symmetric, half the two-sided p for a positive gap."""
    floor = next((i for i, r in enumerate(ranked) if r["baseline"]), None)
    if floor is None:
        return {}
    models = [i for i, r in enumerate(ranked) if not r["baseline"]]
    index = {(int(a), int(b)): q for q, (a, b) in enumerate(zip(pairs.first, pairs.second))}
    one_sided, gaps = [], []
    for i in models:
        gaps.append(float((totals[i] - totals[floor]).sum() / weights.sum()))
        if pairs.n_subjects >= FLOOR_BOOT_MIN:
            one_sided.append(pairs.one_sided(index[(min(i, floor), max(i, floor))], first_better=i < floor))
            continue
        flips = stats.sign_flip_pvalue(totals[i] - totals[floor], exact_max=FLOOR_BOOT_MIN)
        one_sided.append(flips / 2 if gaps[-1] > 0 else 1.0)
    adjusted = stats.holm(list(one_sided))
    return {i: {"diff": d, "p": p, "p_holm": h} for i, d, p, h in zip(models, gaps, one_sided, adjusted)}


def floor_resolution(n_subjects: int, n_models: int) -> float:
    """The smallest Holm-adjusted one-sided p a model can reach against the floor, at best (subjects
    with no difference raise it): n_models x the smallest one-sided p, 1/2^n from the exact sign
    flips below ``FLOOR_BOOT_MIN`` subjects, else the bootstrap's 1 / (1 + N_SET)."""
    return min(1.0, n_models * (2.0**-n_subjects if n_subjects < FLOOR_BOOT_MIN else 1.0 / (1.0 + N_SET)))


def beats_floor(row: dict[str, Any]) -> bool | None:
    """True when the model is above the floor at the board's alpha after Holm; None: not tested."""
    test = row.get("vs_floor")
    return None if test is None else bool(test["diff"] > 0 and test["p_holm"] < ALPHA)


def settings() -> dict[str, Any]:
    """The statistics' settings, as the board's header records them."""
    return {"n_boot": N_BOOT, "n_set": N_SET, "alpha": ALPHA, "floor_boot_min": FLOOR_BOOT_MIN,
            "power": POWER, "seed": SEED, "min_ci_units": MIN_CI_UNITS}  # fmt: skip

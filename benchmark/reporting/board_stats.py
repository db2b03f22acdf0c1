"""The board's statistics on the ranked quantity, the image-weighted mean of post-processed Dice,
through per-subject TOTALS with the image counts fixed (issue 17): each model against the top, its
p-value corrected for every pair on the board and for the top being picked on the same data;
simultaneous rank intervals; the 95% confidence set for the best model (the all-empty floor is
tested but is not a contender); whether each model beats that floor (a paired sign-flip test,
Holm-adjusted over the models); and the smallest gap to the top that the corrected test detects
with 80% power. One seeded subject bootstrap serves the set, the rank intervals, the corrected
p-values and the power, so a board rebuilt from the same summaries is the same board."""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmark.scoring import ranking, stats

N_BOOT = 2000  # subject-bootstrap resamples (issue 11: at least 2,000, seeded)
N_PERM = 20_000  # Monte Carlo sign flips when there are more than EXACT_MAX subjects
EXACT_MAX = 20  # up to this many subjects the paired sign-flip test enumerates all 2^n flips
N_SET = 10_000  # subject-bootstrap resamples for the top group, the rank intervals and the power
ALPHA = 0.05
# Below this many units the subject bootstrap's 95% CI covers far less (tests/benchmark/
# test_stats_simulation.py: 0.94 with 10 subjects, 0.93 with 6, 0.47 with 2): no CI is shown.
MIN_CI_UNITS = 10
POWER = 0.8  # the power at which the detectable difference is stated
SEED = 0


def subject_totals(images: list[dict[str, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """(totals (models x subjects) of post-processed Dice, image count per subject) over the images
    every model scored (complete models all score the same ones)."""
    common = images[0]["index"]
    for other in images[1:]:
        common = np.intersect1d(common, other["index"], assume_unique=True)
    rows = []
    for im in images:
        at = np.searchsorted(im["index"], common)
        _, totals, counts = stats.subject_totals(im["dice"][at], im["unit"][at])  # linked subjects: one
        rows.append(totals)
    return np.vstack(rows), counts.astype(np.float64)


def paired_test(diffs: np.ndarray, weights: np.ndarray) -> dict[str, Any]:
    """(model - reference) per-subject totals: image-weighted gap and paired sign-flip p (one
    pre-specified comparison: the floor's, and vs_top's ``p_unadjusted``)."""
    p = stats.sign_flip_pvalue(diffs, n_resamples=N_PERM, seed=SEED, exact_max=EXACT_MAX)
    return {"diff": float(diffs.sum() / weights.sum()), "p": float(p), "n_subjects": int(diffs.size)}


def vs_top(diffs: np.ndarray, weights: np.ndarray, p: float, mde: float | None) -> dict[str, Any]:
    """The row's comparison with the top: the gap, its simultaneous p (``p``: corrected for every pair
    on the board and for the top being picked on these data), the plain paired p and the MDE."""
    single = paired_test(diffs, weights)
    return {"diff": single["diff"], "p": p, "p_unadjusted": single["p"], "n_subjects": single["n_subjects"],
            "mde": mde}  # fmt: skip


def _rank_key(row: dict[str, Any]) -> tuple[float, str]:
    return (-row["metrics"]["kaggle_dice"]["mean"], row["model"])


def rank_rows(rows: list[dict[str, Any]], images: dict[str, dict[str, np.ndarray]]) -> list[dict[str, Any]]:
    """Rank complete rows by OOF Kaggle Dice (ties: name); tests vs the top, rank intervals, the set."""
    ranked = sorted((r for r in rows if r["metrics"]["kaggle_dice"]["mean"] is not None), key=_rank_key)
    if not ranked:
        return []
    totals, weights = subject_totals([images[r["model"]] for r in ranked])
    boot = ranking.Resamples.draw(weights.size, N_SET, SEED)
    pairs = ranking.Pairs.compare(totals, weights, boot)
    lo, hi = ranking.rank_intervals(pairs, ALPHA)
    # The floor is shown and tested but is not a contender: it stays out of the confidence set.
    contenders = [i for i, r in enumerate(ranked) if not r["baseline"]]
    p_best = dict(zip(contenders, ranking.best_set(pairs, contenders).tolist()))
    power_boot = ranking.Resamples(boot.counts[:N_BOOT])  # enough for a power curve; 5x cheaper
    # pairs (0, i) come first in the pair order (upper triangle, row 0): the top against row i
    critical = ranking.simultaneous_criticals(pairs, ALPHA)[: len(ranked) - 1]
    mde = [None] + ranking.detectable_differences(
        totals[1:] - totals[0], weights, critical, POWER, power_boot
    )
    p_top = [None] + ranking.simultaneous_pvalues(pairs)[: len(ranked) - 1].tolist()
    vs_floor = floor_tests(ranked, totals, weights)
    for i, row in enumerate(ranked):
        row["vs_floor"] = vs_floor.get(i)
        row["rank"], row["rank_ci"] = i + 1, [int(lo[i]), int(hi[i])]
        top = {"diff": 0.0, "p": None, "p_unadjusted": None, "n_subjects": int(weights.size), "mde": None}
        row["vs_top"] = top if i == 0 else vs_top(totals[i] - totals[0], weights, p_top[i], mde[i])
        # below MIN_SUBJECTS p vs top and Set p are 1 without a test: say so to a reader of the JSON
        row["vs_top"]["tested"] = bool(weights.size >= ranking.MIN_SUBJECTS)
        row["p_best"] = p_best.get(i)
        row["top_group"] = None if i not in p_best else bool(p_best[i] >= ALPHA)
    return ranked


def floor_tests(ranked: list[dict[str, Any]], totals: np.ndarray, weights: np.ndarray) -> dict[int, dict]:
    """Row index -> (model - floor) gap, ONE-sided paired sign-flip p of "above the floor" and its Holm
    adjustment over the models ("clears the floor" is a directional claim about every model at once).

    The sign-flip null is symmetric, so for a positive gap the one-sided p is half the two-sided one
    (exactly so when all 2^n flips are enumerated); a gap <= 0 gets p = 1. Empty without a floor row."""
    floor = next((i for i, r in enumerate(ranked) if r["baseline"]), None)
    if floor is None:
        return {}
    models = [i for i, r in enumerate(ranked) if not r["baseline"]]
    tests = {i: paired_test(totals[i] - totals[floor], weights) for i in models}
    one_sided = [tests[i]["p"] / 2 if tests[i]["diff"] > 0 else 1.0 for i in models]
    adjusted = stats.holm(list(one_sided))
    return {
        i: {"diff": tests[i]["diff"], "p": p, "p_holm": q} for i, p, q in zip(models, one_sided, adjusted)
    }


def floor_resolution(n_subjects: int, n_models: int) -> float:
    """The smallest Holm-adjusted one-sided p a model can reach against the floor, at best (subjects
    with no difference raise it): n_models x the smallest one-sided sign-flip p, 1/2^n when all flips
    are enumerated, else 1/(2 (1 + N_PERM))."""
    exact = n_subjects <= EXACT_MAX
    return n_models * max(2.0**-n_subjects, 0.0 if exact else 1.0 / (2 * (1 + N_PERM)))


def beats_floor(row: dict[str, Any]) -> bool | None:
    """True when the model is above the floor at the board's alpha after Holm; None: not tested."""
    test = row.get("vs_floor")
    return None if test is None else bool(test["diff"] > 0 and test["p_holm"] < ALPHA)


def settings() -> dict[str, Any]:
    """The statistics' settings, as the board's header records them."""
    return {"n_boot": N_BOOT, "n_perm": N_PERM, "exact_max": EXACT_MAX, "n_set": N_SET, "alpha": ALPHA,
            "power": POWER, "seed": SEED, "min_ci_units": MIN_CI_UNITS}  # fmt: skip

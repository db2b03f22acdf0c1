"""What the leaderboard says, in words: the protocol and a one-line definition of every column.

Pure functions of the leaderboard dict (rendered into leaderboard.md and leaderboard.json). The
statistics' figures quoted here come from the seeded simulations in the test suite.
"""

from __future__ import annotations

from typing import Any

from benchmark.reporting import board_stats as bs
from benchmark.reporting.leaderboard import BASELINE
from benchmark.scoring import ranking
from datamodules.fingerprints import link_groups

PIXEL_ACCURACY_WARNING = (
    "Pixel accuracy is not reported as a ranking metric: an all-empty prediction already scores about "
    "0.98 because the nerve covers ~1-2% of the pixels."
)
_COST_DOCS = {
    "params": "trainable + frozen parameters, millions",
    "gflops": "forward-pass GFLOPs for one image at the network input size (image_size squared, or 448x608 "
    "in pad mode; 0 where the counter failed)",
    "train_time_s": "wall time of one training run (sum of its epoch times), seconds, mean over runs",
    "train_img_s": "training throughput during the run itself, images per second, mean over runs: under the "
    "recipe's settings (deterministic algorithms as configured) and on the share of the device the run had "
    "(runs packed onto one GPU by Ray, gpus_per_run < 1, report their share's rate; the run's summary.json "
    "says which: cost.measured.device_share); an external row's is the method's own figure (nnU-Net's: its "
    "training patches per second at its own patch size, one whole frame per patch under its default plans)",
    "infer_img_s": "inference throughput on random inputs at the network input size, batch 32 on GPU and 4 "
    "on CPU, images per second from 5 timed calls after 2 warm-up ones on GPU (2 after 1 on CPU: a rough "
    "figure there; speed measures properly), mean over runs; every inference column is measured with "
    "PyTorch's speed settings restored (deterministic algorithms off, cudnn.benchmark on, not training's) "
    "on a device no other run shares: runs that trained on a shared GPU are measured again on a whole one "
    "after the grid",
    "latency_ms": "batch-1 inference latency, milliseconds (median of timed calls), mean over runs; "
    "measured like infer_img_s",
    "peak_mem_mb": "the model's weights plus the peak CUDA memory allocated above the baseline during "
    "inference (so the run's GPU data cache and other leftovers are not counted), MiB; on CPU the growth "
    "of the process's peak RSS during inference (often 0, since training already reached the peak)",
}
_OOF = "out-of-fold (each image's score averaged over seeds first)"
# What the seeded simulations reached (tests/benchmark/test_stats_simulation.py and
# test_board_simulation.py: subjects of 5-80 frames whose effects grow with their size, exact
# image-weighted truths; the README's "Reading the results" lists every figure).
SIMULATED = {
    "ci": "in simulation it covered the exact image-weighted truth in 95.2% of data sets of 20-47 subjects "
    "and 94.0% with 10; bootstrapping the subject-weighted mean instead covered 63.2%",
    "p": "in simulation with 5 equal models and 10-47 subjects some row's p vs top was below 0.05 in 2.6% "
    "of data sets, where per-pair tests against the observed top reached 28.3% (Holm over them 8.5%)",
    "set": "in simulation it dropped one of 5 equal models in 2.7% of data sets of 10-47 subjects (the Holm "
    "rule it replaces: 16.2%), and was the better model alone in 100% of data sets with 40 subjects when "
    "that model was 0.05 better (78% at 0.03)",
    "rank_ci": "in simulation (40 subjects, 5 models 0.015 apart) all 5 true ranks were covered together in "
    "100% of data sets, 2.9 ranks long on average",
    "mde": "in simulation (40 subjects, 2 models) a new data set whose true gap was the stated one was "
    "detected 74.3% of the time; with fewer subjects and more rows it is detected less often",
    "seeds": "in simulation (2 equal architectures, 47 subjects, 5 folds x 3 seeds, each run shifting its "
    "fold by SD 0.04) they were called different in 4.8% of data sets, 31.3% with the trained networks "
    "held fixed, and the CI covered the truth in 94.9%; with 2 seeds in about 7%",
    "floor": "in simulation a model with the floor's exact mean was said to clear it in 3.8% of data sets of "
    "40 subjects (some one of 3 such models: 2.9%), and in 4.8% of 47 subjects when it failed badly on "
    "10% of them (a sign-flip test: 11.7%)",
}
_POOLED = "outer folds, post-processed, mean over runs (a pooled metric has no per-image value); no CI"
# The columns about the runs behind a row, after the comparisons.
_RUN_DOCS = {
    "missing": "what keeps an incomplete model off the ranking (absent folds; images scored twice, not "
    "scored, outside the data set or outside the run's own outer fold, named with the run and index)",
    "external": "(external): trained outside nerve-bench on the same folds (`benchmark import` / "
    "`benchmark nnunet`) and scored by the same code from its masks; its provenance is listed",
    "selection_kaggle_dice": "inner-set Kaggle Dice after post-processing, mean over runs: the score "
    "the epoch and post-processing were chosen on (optimistic; not used for ranking)",
}


def _external(board: dict[str, Any]) -> str:
    """The protocol's limit for rows trained outside nerve-bench (their masks are scored here alike)."""
    if not any(r.get("external") for r in board.get("rows", []) + board.get("incomplete", [])):
        return ""
    return (
        " Rows marked (external) were trained outside this loop: `benchmark nnunet` gave nnU-Net the "
        "inner set as its validation set; a row put on the board with `benchmark import` was trained and "
        "tuned as its authors state (listed under the table), which nerve-bench cannot check: only its "
        "scoring is the same."
    )


def protocol(board: dict[str, Any]) -> list[str]:
    """The protocol in plain words (the Markdown legend's first section)."""
    h = board["header"]
    k = h["n_folds"] or "K"
    return [
        f"Subjects are split into {k} outer folds (grouped by subject, balancing image counts and the "
        "positive fraction; `split_seed` fixes the split for the whole benchmark).",
        "Each run trains on the other folds minus an inner selection set of whole subjects "
        "(`inner_fraction`); the checkpoint epoch and the post-processing (threshold, minimum area, "
        "presence gate) are chosen on that inner set only.",
        "Each run's outer fold is scored once and never used for any decision. Across the folds of one "
        "seed every image is scored once by a model that never saw its subject; seeds change only "
        "initialisation and augmentation." + _external(board),
        "A model's score is the mean over all images of the per-image score averaged over its seeds: an "
        "image-weighted mean, in which a subject with more frames weighs more. Every CI, test, set and "
        "interval below is about that same quantity (per-subject totals, the image counts fixed), never "
        "about per-subject means.",
        "Frames of one patient are correlated, so the subject is the unit of independence: CIs, the top "
        "group, the rank intervals and p vs top resample whole subjects; the paired sign-flip tests (the "
        "floor's, and the plain p of a pre-chosen pair) flip the sign of whole subjects." + _linked(h),
        "The top group is a 95% confidence set for the best model (Hansen, Lunde & Nason's model "
        "confidence set, 2011): it allows for the top being picked on these same data, and holds every "
        "truly best model with probability at least 95%. Outside it: worse than the best, with 95% "
        "confidence. Inside it: not shown to be worse, which is not evidence of being as good.",
        "A model is incomplete, shown but neither ranked nor tested, unless for each seed its outer folds "
        "score exactly the data set's images (k-fold: all of them; hold-out: the hold-out set), each once.",
    ]


def _linked(header: dict[str, Any]) -> str:
    """The protocol's clause on subjects that share frames: kept together on a linked board; a
    warning on a board that split them apart (``link_subjects: false``); nothing for runs made
    before the field."""
    groups = link_groups(
        [link["subjects"] for links in header.get("linked_subjects") or [] for link in links or []]
    )
    named = "; ".join(_listed(g) for g in groups)
    if header.get("link_subjects") == [True]:
        return (
            " Subjects that share a frame, identical or re-encoded, are one patient (`link_subjects`): the "
            "split keeps them together and every statistic counts them as one"
            + (f" (here: {named})." if named else "; this data set has none.")
        )
    if named:
        return (
            f" Warning: subjects {named} share frames, identical or re-encoded, but were split as separate "
            "subjects (`link_subjects: false`): a model may have been scored on copies of frames it trained "
            "on."
        )
    return ""


def _listed(ids: list[int]) -> str:
    return " and ".join(map(str, ids)) if len(ids) <= 2 else ", ".join(map(str, ids[:-1])) + f" and {ids[-1]}"


def legend(board: dict[str, Any]) -> dict[str, str]:
    """One-line definition of every column (metric definitions come from benchmark.scoring.metrics)."""
    from benchmark.scoring.metrics import METRIC_DOCS

    docs = {**_ranking_docs(), **_comparison_docs(), **_floor_docs(), **_RUN_DOCS}
    for key in ("sensitivity", "precision", "presence_accuracy"):
        docs[key] = f"{METRIC_DOCS[key]} ({_POOLED})"
    docs.update(_COST_DOCS)
    docs["pixel_accuracy"] = PIXEL_ACCURACY_WARNING
    return docs


_BOOT = f"{bs.N_SET} seeded subject-bootstrap resamples, studentised (bootstrap-t)"
_FEW = f"fewer than {ranking.MIN_SUBJECTS} subjects tell nothing apart"


def _ranking_docs() -> dict[str, str]:
    """The ranked columns: rank, its interval, the score and its CI."""
    from benchmark.scoring.metrics import METRIC_DOCS

    return {
        "rank": "position among complete models by out-of-fold Kaggle Dice (ties: the floor below the "
        "models, then by model name)",
        "model": f"registry name; `{BASELINE}` predicts no nerve anywhere (the baseline); 'from truth': no "
        f"complete `{BASELINE}` runs, so its exact scores (1 on an empty truth, else 0) were computed",
        "rank_ci": "simultaneous 95% confidence intervals for the ranks of all rows (Mogstad, Romano, "
        "Shaikh & Wilhelm, Rev. Econ. Stud. 2024): a pair of rows differs when its p-value corrected over "
        f"all pairs (as p_vs_top) is below 0.05; rank from 1 + (rows significantly "
        "better) to the row count - (rows significantly worse); the floor is included. The top group is "
        "sharper (step-down), so a row can be outside it while its interval still reaches 1; "
        f"{_FEW}; {SIMULATED['rank_ci']}",
        "seeds": "number of training seeds (a complete model trained every outer fold once per seed)",
        "kaggle_dice": f"Kaggle Dice after post-processing, {_OOF}, mean over all images. "
        + METRIC_DOCS["kaggle_dice"],
        "ci": "[95% CI]: subject bootstrap (whole subjects resampled, image mean recomputed; expanded "
        "percentile interval, about as wide as a t interval when subjects are few); none when incomplete "
        f"or with fewer than {bs.MIN_CI_UNITS} subjects, where no bootstrap interval holds 95%. "
        "It covers the sampling of test subjects and, with two or more seeds (drawn with the subjects), "
        f"training randomness; {SIMULATED['ci']}",
    }


def _floor_docs() -> dict[str, str]:
    """The comparison of every model with the all-empty floor."""
    return {
        "diff_vs_floor": "this model's mean post-processed Dice minus the all-empty floor's, over all images "
        "(the floor's own row and boards without it: n/a)",
        "p_vs_floor": "one-sided p-value of 'no better than the floor', Holm-adjusted over the models: from "
        f"{bs.FLOOR_BOOT_MIN} subjects the pair's bootstrap-t (its studentised gap against its own "
        "resamples, seeds drawn as for p_vs_top), below that the exact paired sign flip of the per-subject "
        "totals of the seed-averaged differences (half the two-sided p for a positive gap, 1 otherwise; "
        "a bootstrap of fewer subjects is erratic); "
        f"{SIMULATED['floor']}; {bs.ALPHA} or more: not shown to beat predicting nothing (a note says so). "
        "In the JSON "
        "rows[].vs_floor.p_holm (.p: before Holm; .diff: diff_vs_floor)",
    }


def _comparison_docs() -> dict[str, str]:
    """The secondary scores and every comparison with the top model and the floor."""
    from benchmark.scoring.metrics import METRIC_DOCS

    return {
        "dice_positive": f"post-processed Dice over the images whose truth has a nerve, {_OOF}",
        "empty_correct": "share of empty-truth images predicted empty after post-processing (= their mean "
        f"Dice), {_OOF}",
        "iou": f"mean image IoU after post-processing, {_OOF}. " + METRIC_DOCS["iou"],
        "raw_kaggle_dice": f"Kaggle Dice at threshold 0.5 without post-processing, {_OOF}",
        "seed_sd": "(two or more seeds) standard deviation, ddof 1, of the model's per-seed out-of-fold mean "
        "Kaggle Dice: the training randomness, which the CIs and tests include by drawing each model's "
        "seeds with the subjects (with one seed none of them can)",
        "diff_vs_top": "this model's mean post-processed Dice minus the top model's, over all images (the "
        "ranked, image-weighted quantity)",
        "p_vs_top": "p-value of 'same image-weighted mean as the top model', corrected for every pair of "
        "rows and for the top being picked on these data: the pair's studentised gap (delta-method "
        f"standard error over subjects) is judged against its own resamples ({_BOOT}), and that p is "
        "multiplied by the number of pairs of rows (Bonferroni, valid whatever their dependence), so a "
        "pair of near-identical models weakens only its own verdict; "
        f"{SIMULATED['p']}. With two or more seeds each model's seeds are drawn inside every subject "
        "resample and their variance joins the standard error, so the test covers training randomness "
        f"too; {SIMULATED['seeds']}. leaderboard.csv and .json also give the pair's own p before the "
        "Bonferroni factor (p_vs_top_unadjusted; in the JSON rows[].vs_top.p_unadjusted), valid only for "
        "a comparison chosen before the board was seen. `untested` (here and in p_best_set): "
        f"fewer than {ranking.MIN_SUBJECTS} subjects, where no test is computed (the CSV leaves it blank)",
        "mde_vs_top": f"smallest true gap to the top that p_vs_top detects with {bs.POWER:.0%} probability "
        f"at alpha {bs.ALPHA}, for this board's subjects and the observed spread of this model's "
        "per-subject differences from the top (subjects resampled; the gap added to each subject in "
        f"proportion to its images); n/a when {_FEW} or when no gap within Dice's range would be seen (few "
        "subjects for many rows, or two models that differ on so few subjects that many resamples "
        "hold none of them); 0 when the two differ by the same amount everywhere; "
        f"{SIMULATED['mde']}",
        "p_best_set": "model confidence set p-value (Hansen, Lunde & Nason, Econometrica 2011; "
        "each step: the smallest p over the remaining pairs, each judged as for p_vs_top, times their "
        "number; the worst model removed "
        f"while it rejects; {_BOOT}): the smallest level at which this model leaves the set; none for the "
        "floor, which is not a contender",
        "top_group": f"`yes` when p_best_set >= {bs.ALPHA}: in the 95% confidence set for the best model; "
        f"`no`: worse than the best with 95% confidence; `floor`: the all-empty baseline, shown for "
        f"reference only. Not always the top rows: a small but consistent gap can be significant where a "
        f"larger, noisier one is not; {SIMULATED['set']}",
    }

"""Text renderings of the leaderboard (Markdown, CSV rows, LaTeX, legend) with fixed decimals.

Every string here is a pure function of the leaderboard dict, so equal summaries give equal bytes.
"""

from __future__ import annotations

from typing import Any

from benchmark.reporting import leaderboard as lb
from benchmark.reporting.leaderboard import BASELINE, COST, OOF_METRICS, RUN_MEANS

PIXEL_ACCURACY_WARNING = (
    "Pixel accuracy is not reported as a ranking metric: an all-empty prediction already scores about "
    "0.98 because the nerve covers ~1-2% of the pixels."
)
SYNTHETIC_NOTE = (
    "> **SYNTHETIC DATA.** These numbers come from the generated stand-in data set (CPU fallback), "
    "not from the Kaggle images; they test the pipeline, not the models."
)
TITLES = {
    "kaggle_dice": "Kaggle Dice", "dice_positive": "Dice+", "empty_correct": "Empty correct", "iou": "IoU",
    "raw_kaggle_dice": "Raw Dice", "selection_kaggle_dice": "Selection Dice (inner)",
    "sensitivity": "Sensitivity", "precision": "Precision", "presence_accuracy": "Presence acc",
}  # fmt: skip
_COST_TITLES = {
    "params": ("Params (M)", 1e-6, 2), "gflops": ("GFLOPs", 1.0, 2),
    "train_time_s": ("Train time (s)", 1.0, 1),
    "train_img_s": ("Train img/s", 1.0, 1), "infer_img_s": ("Infer img/s", 1.0, 1),
    "latency_ms": ("Latency b=1 (ms)", 1.0, 2), "peak_mem_mb": ("Peak mem (MiB)", 1.0, 0),
}  # fmt: skip
_COST_DOCS = {
    "params": "trainable + frozen parameters, millions",
    "gflops": "forward-pass GFLOPs for one image at the network input size (image_size squared, or 448x608 "
    "in pad mode; 0 where the counter failed)",
    "train_time_s": "wall time of one training run (sum of its epoch times), seconds, mean over runs",
    "train_img_s": "training throughput, images per second, mean over runs",
    "infer_img_s": "inference throughput on random inputs at the network input size, batch 32 on GPU and 4 "
    "on CPU, images per second, mean over runs",
    "latency_ms": "batch-1 inference latency, milliseconds (median of timed calls), mean over runs",
    "peak_mem_mb": "peak CUDA memory allocated during inference, MiB; on CPU the growth of the process's "
    "peak RSS during inference (often 0, since training already reached the peak)",
}
_OOF = "out-of-fold (each image's score averaged over seeds first)"
_POOLED = "outer folds, post-processed, mean over runs (a pooled metric has no per-image value); no CI"


def fmt(value: float | None, decimals: int = 3, scale: float = 1.0) -> str:
    return "n/a" if value is None else f"{value * scale:.{decimals}f}"


def fmt_ci(m: dict[str, Any], decimals: int = 3) -> str:
    if m["mean"] is None:
        return "n/a"
    if m["lo"] is None:
        return f"{m['mean']:.{decimals}f}"
    return f"{m['mean']:.{decimals}f} [{m['lo']:.{decimals}f}, {m['hi']:.{decimals}f}]"


def fmt_p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def name(row: dict[str, Any]) -> str:
    if row["derived"]:
        return f"{row['model']} (baseline, from truth)"
    return f"{row['model']} (baseline)" if row["baseline"] else row["model"]


def top_mark(row: dict[str, Any]) -> str:
    if row["rank"] == 1:
        return "top"
    return "floor" if row["top_group"] is None else ("yes" if row["top_group"] else "no")


def csv_table(board: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of leaderboard.csv (ranked, then incomplete rows): 6 decimals, "n/a" if missing."""
    columns = ["rank", "model", "baseline", "derived", "status", "missing", "n_runs", "n_seeds", "n_images"]
    for key, _, _ in OOF_METRICS:
        columns += [f"{key}_mean", f"{key}_ci_lo", f"{key}_ci_hi"]
    columns += ["diff_vs_top", "p_vs_top", "p_holm", "not_worse_than_top", "n_subjects_tested"]
    columns += [key for key, *_ in RUN_MEANS] + list(COST)
    rows = []
    for r in board["rows"] + board.get("incomplete", []):
        ranked = "rank" in r
        line = [str(r.get("rank", "")), r["model"], str(r["baseline"]).lower(), str(r["derived"]).lower()]
        line += ["ranked" if ranked else "incomplete", "; ".join(r["missing"])]
        line += [str(r["n_runs"]), str(len(r["seeds"])), str(r["n_images"])]
        for key, _, _ in OOF_METRICS:
            m = r["metrics"][key]
            line += [fmt(m["mean"], 6), fmt(m["lo"], 6), fmt(m["hi"], 6)]
        test = r.get("vs_top") or {}
        line += [fmt(test.get("diff"), 6), fmt(test.get("p"), 6), fmt(test.get("p_holm"), 6)]
        group = "" if not ranked or r["top_group"] is None else str(r["top_group"]).lower()
        line += [group, str(test.get("n_subjects", ""))]
        line += [fmt(r["run_means"][key], 6) for key, *_ in RUN_MEANS]
        line += [fmt(r["cost"][k], 0 if k == "params" else 6) for k in COST]
        rows.append(line)
    return columns, rows


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
        "initialisation and augmentation.",
        "A model's score is the mean over all images of the per-image score averaged over its seeds.",
        f"95% CIs resample subjects ({lb.N_BOOT} seeded resamples) and recompute the image mean: frames of "
        "one patient are correlated, so the subject is the unit of independence.",
        "Each ranked model is compared with the top one by a two-sided sign-flip test on per-subject mean "
        f"differences of post-processed Dice (exact over all 2^n sign patterns for n <= {lb.EXACT_MAX} "
        f"subjects, else {lb.N_PERM} seeded random flips), Holm-corrected across the compared models.",
        f"`yes` in the top-group column: Holm p >= {lb.ALPHA}, not significantly worse than the top "
        "(which does not show they are equal).",
        "A model is incomplete, shown but neither ranked nor tested, unless for each of its seeds all "
        "outer folds are present and cover every image exactly once.",
    ]


def legend(board: dict[str, Any]) -> dict[str, str]:
    """One-line definition of every column (metric definitions come from benchmark.scoring.metrics)."""
    from benchmark.scoring.metrics import METRIC_DOCS

    docs = {
        "rank": "position among complete models by out-of-fold Kaggle Dice (ties broken by model name)",
        "model": f"registry name; `{BASELINE}` predicts no nerve anywhere (the baseline); 'from truth': no "
        f"complete `{BASELINE}` runs, so its exact scores (1 on an empty truth, else 0) were computed",
        "seeds": "number of training seeds (a complete model trained every outer fold once per seed)",
        "kaggle_dice": f"Kaggle Dice after post-processing, {_OOF}, mean over all images. "
        + METRIC_DOCS["kaggle_dice"],
        "ci": "[95% CI]: subject bootstrap (whole subjects resampled, image mean recomputed; expanded "
        "percentile interval, about as wide as a t interval when subjects are few); none when incomplete",
        "dice_positive": f"post-processed Dice over the images whose truth has a nerve, {_OOF}",
        "empty_correct": "share of empty-truth images predicted empty after post-processing (= their mean "
        f"Dice), {_OOF}",
        "iou": f"mean image IoU after post-processing, {_OOF}. " + METRIC_DOCS["iou"],
        "raw_kaggle_dice": f"Kaggle Dice at threshold 0.5 without post-processing, {_OOF}",
        "diff_vs_top": "this model's mean post-processed Dice minus the top model's, over all images",
        "p_vs_top": "two-sided sign-flip p-value on per-subject mean differences vs the top model",
        "p_holm": "p_vs_top after Holm's correction across the models compared with the top (the all-empty "
        "floor is shown with its raw p only: it is not a contender, so it stays out of the family)",
        "top_group": f"yes when Holm p >= {lb.ALPHA}: not significantly worse than the top model; "
        "`floor` for the all-empty baseline",
        "missing": "what keeps an incomplete model off the ranking (absent folds, uncovered images)",
        "selection_kaggle_dice": "inner-set Kaggle Dice after post-processing, mean over runs: the score "
        "the epoch and post-processing were chosen on (optimistic; not used for ranking)",
    }
    for key in ("sensitivity", "precision", "presence_accuracy"):
        docs[key] = f"{METRIC_DOCS[key]} ({_POOLED})"
    docs.update(_COST_DOCS)
    docs["pixel_accuracy"] = PIXEL_ACCURACY_WARNING
    return docs


def _table(head: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(cells) + " |" for cells in body]


def _header_lines(h: dict[str, Any]) -> list[str]:
    lines = []
    for d in h["datasets"]:
        kind = "SYNTHETIC" if d.get("synthetic") else "real"
        lines.append(
            f"- **Dataset**: {d.get('name', 'unknown')} ({kind}) - {d.get('n_train', '?')} images, "
            f"{d.get('n_subjects', '?')} subjects, content hash `{d.get('content_hash', '?')}`"
        )
    join = lambda values: ", ".join(str(v) for v in values) or "n/a"  # noqa: E731
    soft = ", ".join(f"{k} {'/'.join(v)}" for k, v in sorted(h["software"].items()))
    lines += [
        f"- **Split**: {_outer(h)}, split_seed {join(h['split_seed'])}; inner "
        f"selection set {join(h['inner_fraction'])} of each training part's subjects; checkpoint: "
        f"{join(h['select'])}",
        f"- **Seeds**: {join(h['seeds'])}",
        f"- **Global batch**: {join(h['global_batch'])} (per-device batch x world size: devices x nodes)",
        f"- **Hardware**: {'; '.join(h['device'])} ({'; '.join(h['platform'])})",
        f"- **Software**: {soft}",
        f"- **Git**: `{'`, `'.join(h['git_sha'])}`",
        f"- **Benchmark config hash**: `{'`, `'.join(h['benchmark_hash'])}` (config without model, "
        "model_kwargs, fold, seed; per-run config hashes are in leaderboard.json)",
        f"- **Runs**: {h['n_runs']} over {len(h['models'])} models",
    ]
    return lines


def _outer(h: dict[str, Any]) -> str:
    if h.get("mode") == ["holdout"]:
        return "one subject-grouped hold-out set (fold 0; fold 1 is the training rest, never scored)"
    return f"{h['n_folds']} outer folds by subject"


def _fold_table(h: dict[str, Any]) -> list[str]:
    body = [
        [str(f["fold"]), ", ".join(str(s) for s in f["subjects"]), str(f["n_images"]),
         fmt(f.get("positive_fraction"))]
        for f in h["folds"]
    ]  # fmt: skip
    return _table(["Fold", "Subjects", "Images", "Positive fraction"], body) if body else ["(no fold table)"]


def _accuracy_table(board: dict[str, Any]) -> list[str]:
    keys = [key for key, _, _ in OOF_METRICS]
    head = [
        "Rank",
        "Model",
        "Seeds",
        *[TITLES[k] for k in keys],
        "Δ vs top",
        "p vs top",
        "Holm p",
        "Top group",
    ]
    body = []
    for r in board["rows"]:
        test = r["vs_top"]
        cells = [str(r["rank"]), name(r), str(len(r["seeds"]) or "-")]
        cells += [fmt_ci(r["metrics"][k]) for k in keys]
        diff = "-" if r["rank"] == 1 else f"{test['diff']:+.3f}"
        cells += [diff, fmt_p(test["p"]), fmt_p(test["p_holm"]), top_mark(r)]
        body.append(cells)
    return _table(head, body)


def _incomplete_table(board: dict[str, Any]) -> list[str]:
    body = []
    for r in board["incomplete"]:
        m = r["metrics"]["kaggle_dice"]
        partial = f"{fmt(m['mean'])} ({m['n_images']} images)"
        body.append([name(r), str(r["n_runs"]), "; ".join(r["missing"]), partial])
    return _table(["Model", "Runs", "Missing", "Partial Kaggle Dice (not comparable)"], body)


def _run_means_table(board: dict[str, Any]) -> list[str]:
    keys = [key for key, *_ in RUN_MEANS]
    body = [[name(r)] + [fmt(r["run_means"][k]) for k in keys] for r in board["rows"] + board["incomplete"]]
    return _table(["Model", *[TITLES[k] for k in keys]], body)


def _cost_table(board: dict[str, Any]) -> list[str]:
    body = [
        [name(r)] + [fmt(r["cost"][k], _COST_TITLES[k][2], _COST_TITLES[k][1]) for k in COST]
        for r in board["rows"] + board["incomplete"]
    ]
    return _table(["Model", *[_COST_TITLES[k][0] for k in COST]], body)


def resolution_note(board: dict[str, Any]) -> str | None:
    """Say so when too few subjects make a Holm-significant difference impossible, whatever the data.

    With n subjects the exact two-sided sign-flip test cannot go below 2 / 2^n, and Holm multiplies
    the smallest p by the number of comparisons; a board where even that is >= alpha can mark every
    model as "not significantly worse". The reader must see that this is a
    limit of the sample, not evidence that the models are equal.
    """
    tests = [r["vs_top"] for r in board["rows"] if r["vs_top"].get("p_holm") is not None]
    if not tests:
        return None
    n = min(int(t["n_subjects"]) for t in tests)
    if n > lb.EXACT_MAX:
        return None  # Monte Carlo p can go down to 1 / (1 + N_PERM): no such limit
    smallest = 2.0 / 2**n
    best_holm = min(1.0, len(tests) * smallest)
    if best_holm < lb.ALPHA:
        return None
    return (
        f"With {n} subjects no difference can be significant here: the smallest possible sign-flip p is "
        f"2/2^{n} = {smallest:.4f}, and Holm over {len(tests)} comparisons makes it at least "
        f"{best_holm:.4f} >= {lb.ALPHA}. Every model is in the top group by lack of subjects, not by merit."
    )


def console(board: dict[str, Any]) -> str:
    """The ranked accuracy table (and any incomplete models) for the terminal, after a `run`."""
    lines = ["Accuracy (out-of-fold, 420x580; mean [95% subject-bootstrap CI]):"] + _accuracy_table(board)
    note = resolution_note(board)
    lines += [f"Note: {note}"] if note else []
    if board["incomplete"]:
        lines += ["", "Incomplete (not ranked, not tested):"] + _incomplete_table(board)
    return "\n".join(lines)


def markdown(board: dict[str, Any]) -> str:
    h = board["header"]
    lines = ["# nerve-bench leaderboard", ""]
    if any(d.get("synthetic") for d in h["datasets"]):
        lines += [SYNTHETIC_NOTE, ""]
    lines += _header_lines(h) + ["", "### Outer folds", ""] + _fold_table(h)
    lines += ["", "## Accuracy (out-of-fold, 420x580)", ""] + _accuracy_table(board)
    note = resolution_note(board)
    lines += ["", f"**Note**: {note}"] if note else []
    if board["incomplete"]:
        lines += ["", "## Incomplete (not ranked, not tested)", ""] + _incomplete_table(board)
    lines += ["", "## Selection and pooled metrics (mean over runs; not used for ranking)", ""]
    lines += _run_means_table(board) + ["", "## Cost", ""] + _cost_table(board)
    lines += ["", "## Protocol", ""] + [f"- {line}" for line in protocol(board)]
    lines += ["", "## Columns", ""] + [
        f"- **{k}**: {v}" for k, v in legend(board).items() if k != "pixel_accuracy"
    ]
    lines += ["", f"**Note**: {PIXEL_ACCURACY_WARNING}", ""]
    if board["ignored_runs"]:
        n = len(board["ignored_runs"])
        lines += [f"{n} run(s) from another config or data set, or unfinished, were left out "
                  "(listed in leaderboard.json).", ""]  # fmt: skip
    return "\n".join(lines)


def _tex(text: str) -> str:
    """Escape the LaTeX specials that can occur in model names."""
    for char in ("\\", "&", "%", "$", "#", "_", "{", "}"):
        text = text.replace(char, "\\textbackslash{}" if char == "\\" else "\\" + char)
    return text


def _tex_ci(m: dict[str, Any]) -> str:
    return fmt_ci(m).replace("[", "{[}").replace("]", "{]}")  # brackets would read as \\ options


def latex(board: dict[str, Any]) -> str:
    """leaderboard.tex: a booktabs tabular of the ranked models, mean [95% CI], top group in bold."""
    keys = ("kaggle_dice", "dice_positive", "raw_kaggle_dice")
    lines = [
        "% nerve-bench leaderboard, written by `python -m benchmark report` (needs \\usepackage{booktabs}).",
        f"% Out-of-fold means over images; [95% CI] by subject bootstrap ({lb.N_BOOT} resamples);",
        "% Holm p of a sign-flip test on per-subject differences vs the top model;",
        f"% bold: not significantly worse than the top (Holm p >= {lb.ALPHA}).",
        "\\begin{tabular}{rl" + "l" * len(keys) + "rr}",
        "\\toprule",
        "Rank & Model & "
        + " & ".join(f"{TITLES[k]} [95\\% CI]" for k in keys)
        + " & $\\Delta$ & Holm $p$ \\\\",
        "\\midrule",
    ]
    for r in board["rows"]:
        model = _tex(name(r))
        cells = [str(r["rank"]), f"\\textbf{{{model}}}" if r["top_group"] else model]
        cells += [_tex_ci(r["metrics"][k]) for k in keys]
        cells += [f"${r['vs_top']['diff']:+.3f}$", "--" if r["rank"] == 1 else fmt_p(r["vs_top"]["p_holm"])]
        lines.append(" & ".join(cells).replace("<", "$<$") + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    if board["incomplete"]:
        lines.append(f"% {len(board['incomplete'])} incomplete model(s) not shown: see leaderboard.md.")
    return "\n".join(lines) + "\n"

"""Text renderings of the leaderboard (Markdown, CSV rows, LaTeX, console) with fixed decimals.

Every string here is a pure function of the leaderboard dict, so equal summaries give equal bytes.
What the words mean (protocol, every column) lives in ``benchmark.reporting.legend``.
"""

from __future__ import annotations

from typing import Any

from benchmark.reporting import board_stats as bs
from benchmark.reporting.cells import fmt, fmt_ci, fmt_p
from benchmark.reporting.leaderboard import COST, OOF_METRICS, RUN_MEANS
from benchmark.reporting.legend import PIXEL_ACCURACY_WARNING, legend, protocol
from benchmark.reporting.notes import notes
from benchmark.reporting.recipe import recipe_line
from benchmark.reporting.sources import source_lines

SYNTHETIC_NOTE = (
    "> **SYNTHETIC DATA.** These numbers come from a generated stand-in data set (the CPU fallback or "
    "`benchmark synth`), "
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


def name(row: dict[str, Any]) -> str:
    if row.get("external"):
        return f"{row['model']} (external)"
    if row["derived"]:
        return f"{row['model']} (baseline, from truth)"
    return f"{row['model']} (baseline)" if row["baseline"] else row["model"]


def fmt_cost(row: dict[str, Any], key: str, decimals: int, scale: float = 1.0) -> str:
    """A cost cell: "unknown" where an imported method could not report it (never 0), else :func:`fmt`."""
    value = row["cost"][key]
    return "unknown" if value is None and row.get("external") else fmt(value, decimals, scale)


def external_lines(board: dict[str, Any]) -> list[str]:
    """One line per external (imported) row: where its numbers come from."""
    rows = [r for r in board["rows"] + board.get("incomplete", []) if r.get("external")]
    return [f"- **{r['model']}** (external): {r['external']}" for r in rows]


def top_mark(row: dict[str, Any]) -> str:
    """`yes` / `no`: in the 95% confidence set for the best model or not; `floor`: not a contender."""
    return "floor" if row["top_group"] is None else ("yes" if row["top_group"] else "no")


def fmt_rank_ci(row: dict[str, Any]) -> str:
    lo, hi = row["rank_ci"]
    return f"[{lo}, {hi}]"


def several_seeds(board: dict[str, Any]) -> bool:
    return len(board["header"]["seeds"]) >= 2


def _p_cell(p: float | None, tested: bool) -> str:
    """A CSV p-value: blank where untested (its stored 1.0 is no result), n/a where there is none."""
    return fmt(p, 6) if tested or p is None else ""


def csv_table(board: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of leaderboard.csv (ranked, then incomplete rows): 6 decimals, "n/a" if missing."""
    columns = ["rank", "model", "baseline", "derived", "status", "missing", "n_runs", "n_seeds", "n_images"]
    for key, _, _ in OOF_METRICS:
        columns += [f"{key}_mean", f"{key}_ci_lo", f"{key}_ci_hi"]
    columns += ["diff_vs_top", "p_vs_top", "mde_vs_top", "p_best_set", "in_best_set", "n_subjects_tested"]
    columns += ["rank_ci_lo", "rank_ci_hi", "seed_sd"]
    columns += [key for key, *_ in RUN_MEANS] + list(COST) + ["external", "diff_vs_floor", "p_vs_floor"]
    columns += ["p_vs_top_unadjusted"]
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
        tested = test.get("tested", True)  # False: too few subjects, the 1.0 p-values were not computed
        line += [fmt(test.get("diff"), 6), _p_cell(test.get("p"), tested), fmt(test.get("mde"), 6)]
        group = "" if not ranked or r["top_group"] is None else str(r["top_group"]).lower()
        line += [_p_cell(r.get("p_best"), tested), group, str(test.get("n_subjects", ""))]
        rank_ci = r.get("rank_ci") or ["", ""]
        line += [str(rank_ci[0]), str(rank_ci[1]), fmt(r.get("seed_sd"), 6)]
        line += [fmt(r["run_means"][key], 6) for key, *_ in RUN_MEANS]
        line += [fmt_cost(r, k, 0 if k == "params" else 6) for k in COST]
        line.append(r.get("external") or "")
        floor = r.get("vs_floor") or {}
        line += [fmt(floor.get("diff"), 6), fmt(floor.get("p_holm"), 6)]
        line += [_p_cell(test.get("p_unadjusted"), tested)]
        rows.append(line)
    return columns, rows


def _table(head: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    # a "|" in a cell (a plugin's model name) would split it: the row would gain a column
    return lines + ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in body]


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
        f"- **Global batch**: {join(h['global_batch'])} (images per optimiser step on any number of "
        "devices; each of N devices takes 1/N)",
        f"- **Hardware**: {'; '.join(h['device'])} ({'; '.join(h['platform'])}); {_devices(h)}",
        f"- **Software**: {soft}",
        f"- **Git**: `{'`, `'.join(h['git_sha'])}`",
        *_scored_again(h.get("scored_again") or []),
        f"- **Benchmark config hash**: `{'`, `'.join(h['benchmark_hash'])}` (config without model, "
        "model_kwargs, fold, seed; per-run config hashes are in leaderboard.json)",
        f"- **Runs**: {h['n_runs']} over {len(h['models'])} models",
    ]
    return lines + [line for line in [recipe_line(h.get("shared_recipe") or {})] if line]


def _devices(h: dict[str, Any]) -> str:
    """Devices (DDP processes) per run: the training cost columns are per run, so they compare
    between rows only at one count (the recipe does not depend on it on GPUs: one global batch, one
    sample stream, SyncBatchNorm; CPU DDP runs are another benchmark, ``cpu_processes``)."""
    sizes = h.get("world_size") or []
    if len(sizes) <= 1:
        return f"{sizes[0] if sizes else 'n/a'} device(s) per run"
    return (
        f"{', '.join(map(str, sizes))} devices per run in different runs: the training time and img/s "
        "columns compare only between runs of one count"
    )


def _scored_again(where: list[str]) -> list[str]:
    if not where:
        return []
    return [f"- **Scored again** (after training; inference columns measured there): {'; '.join(where)}"]


def _outer(h: dict[str, Any]) -> str:
    if h.get("mode") == ["holdout"]:
        return "one subject-grouped hold-out set (fold 0; fold 1 is the training rest, never scored)"
    return f"{h['n_folds']} outer folds by subject"


def _fold_table(h: dict[str, Any]) -> list[str]:
    body = [
        [
            str(f["fold"]),
            ", ".join(str(s) for s in f["subjects"]),
            str(f["n_images"]),
            fmt(f.get("positive_fraction")),
            _inner(f.get("inner")),
        ]
        for f in h["folds"]
    ]
    head = ["Fold", "Subjects", "Images", "Positive fraction", "Selected on (inner subjects: images)"]
    return _table(head, body) if body else ["(no fold table)"]


def _inner(inner: dict | None) -> str:
    """A fold's inner selection set: the epoch and post-processing of its nerve-bench runs were
    chosen on these few images."""
    return "-" if not inner else f"{', '.join(str(s) for s in inner['subjects'])}: {inner['n_images']}"


def _accuracy_table(board: dict[str, Any]) -> list[str]:
    keys = [key for key, _, _ in OOF_METRICS]
    spread = several_seeds(board)
    head = ["Rank", "Model", "Rank 95% CI", "Seeds", *[TITLES[k] for k in keys]]
    head += ["Seed SD"] if spread else []
    head += ["Δ vs top", "p vs top", "MDE 80%", "Set p", "Top group", "p vs floor"]
    body = []
    for r in board["rows"]:
        test, first = r["vs_top"], r["rank"] == 1
        cells = [str(r["rank"]), name(r), fmt_rank_ci(r), str(len(r["seeds"]) or "-")]
        cells += [fmt_ci(r["metrics"][k]) for k in keys]
        cells += [fmt(r["seed_sd"])] if spread else []
        cells += [
            "-" if first else f"{test['diff']:+.3f}",
            fmt_p(test["p"], test.get("tested", True)),
            "-" if first else fmt(test["mde"]),
        ]
        floor = r.get("vs_floor")  # None: the floor itself, or a board without it
        cells += [fmt_p(r["p_best"], test.get("tested", True)), top_mark(r)]
        cells += ["-" if floor is None else fmt_p(floor["p_holm"])]
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
        [name(r)] + [fmt_cost(r, k, _COST_TITLES[k][2], _COST_TITLES[k][1]) for k in COST]
        for r in board["rows"] + board["incomplete"]
    ]
    return _table(["Model", *[_COST_TITLES[k][0] for k in COST]], body)


def console(board: dict[str, Any]) -> str:
    """The ranked accuracy table (and any incomplete models) for the terminal, after a `run`."""
    lines = ["Accuracy (out-of-fold, 420x580; mean [95% subject-bootstrap CI]):"] + _accuracy_table(board)
    lines += [f"Note: {note}" for note in notes(board)]
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
    for note in notes(board):
        lines += ["", f"**Note**: {note}"]
    external = external_lines(board)
    lines += (
        [
            "",
            "External entries (trained outside nerve-bench on the same folds, scored here by the same "
            "code; their cost columns show unknown where they did not report it):",
            "",
        ]
        + external
        if external
        else []
    )
    if board["incomplete"]:
        lines += ["", "## Incomplete (not ranked, not tested)", ""] + _incomplete_table(board)
    lines += ["", "## Selection and pooled metrics (mean over runs; not used for ranking)", ""]
    lines += _run_means_table(board) + ["", "## Cost", ""] + _cost_table(board)
    made_by = source_lines(h)
    lines += (
        ["", "## Models (paper; the package that registered each, and its version)", "", *made_by]
        if made_by
        else []
    )
    lines += ["", "## Protocol", ""] + [f"- {line}" for line in protocol(board)]
    docs = legend(board)
    shown = [k for k in docs if k != "pixel_accuracy" and (k != "seed_sd" or several_seeds(board))]
    lines += ["", "## Columns", ""] + [f"- **{k}**: {docs[k]}" for k in shown]
    lines += ["", f"**Note**: {PIXEL_ACCURACY_WARNING}", ""]
    return "\n".join(lines + _left_out(board))


def _left_out(board: dict[str, Any]) -> list[str]:
    """The runs the board left out, and the other benchmarks whose boards are one command away."""
    lines = []
    if board["ignored_runs"]:
        n = len(board["ignored_runs"])
        text = f"{n} run(s) from another config or data set, or unfinished, were left out "
        lines += [text + "(listed in leaderboard.json).", ""]
    if board.get("other_benchmarks"):
        others = ", ".join(f"`{h}` ({n} runs)" for h, n in board["other_benchmarks"].items())
        lines += [
            f"Complete runs of other benchmarks (config hashes): {others}; `report --benchmark HASH`.",
            "",
        ]
    return lines


# Every character a model name may hold that LaTeX reads as markup, or prints as another glyph in
# its default (OT1) font; one pass, so no replacement is escaped again.
_TEX = {c: "\\" + c for c in "&%$#_{}"} | {
    "\\": r"\textbackslash{}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "|": r"\textbar{}",
    "<": r"\textless{}", ">": r"\textgreater{}", '"': "{\\char34}",
}  # fmt: skip


def _tex(text: str) -> str:
    """A model name as LaTeX text."""
    return "".join(_TEX.get(char, char) for char in text)


def _tex_ci(m: dict[str, Any]) -> str:
    return fmt_ci(m).replace("[", "{[}").replace("]", "{]}")  # brackets would read as \\ options


def latex(board: dict[str, Any]) -> str:
    """leaderboard.tex: a booktabs tabular of the ranked models, mean [95% CI], top group in bold."""
    keys = ("kaggle_dice", "dice_positive", "raw_kaggle_dice")
    lines = [
        "% nerve-bench leaderboard, written by `python -m benchmark report` (needs \\usepackage{booktabs}).",
        f"% Out-of-fold means over images; [95% CI] by subject bootstrap ({bs.N_BOOT} resamples);",
        "% p: vs the top, corrected over all pairs and the top's pick; set p: model confidence set p-value;",
        f"% bold: in the 95% confidence set for the best model (set p >= {bs.ALPHA});",
        "% floor p: one-sided test of 'no better than the all-empty floor', Holm-adjusted over the models.",
        "\\begin{tabular}{rlc" + "l" * len(keys) + "rrrr}",
        "\\toprule",
        "Rank & Model & Rank CI & "
        + " & ".join(f"{TITLES[k]} [95\\% CI]" for k in keys)
        + " & $\\Delta$ & $p$ & Set $p$ & Floor $p$ \\\\",
        "\\midrule",
    ]
    for r in board["rows"]:
        model = _tex(name(r))
        cells = [str(r["rank"]), f"\\textbf{{{model}}}" if r["top_group"] else model]
        cells += [fmt_rank_ci(r).replace("[", "{[}").replace("]", "{]}")]
        cells += [_tex_ci(r["metrics"][k]) for k in keys]
        tested = r["vs_top"].get("tested", True)
        cells += [
            f"${r['vs_top']['diff']:+.3f}$",
            "--" if r["rank"] == 1 else fmt_p(r["vs_top"]["p"], tested),
        ]
        cells += ["--" if r["p_best"] is None else fmt_p(r["p_best"], tested)]
        cells += ["--" if r.get("vs_floor") is None else fmt_p(r["vs_floor"]["p_holm"])]
        lines.append(" & ".join(cells).replace("<", "$<$") + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    if board["incomplete"]:
        lines.append(f"% {len(board['incomplete'])} incomplete model(s) not shown: see leaderboard.md.")
    return "\n".join(lines) + "\n"

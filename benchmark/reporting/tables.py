"""Text renderings of the leaderboard (Markdown, CSV rows, legend) with fixed decimals."""

from __future__ import annotations

from typing import Any

from benchmark.reporting.leaderboard import BASELINE, COST, METRICS, N_BOOT

PIXEL_ACCURACY_WARNING = (
    "Pixel accuracy is not reported as a ranking metric: an all-empty prediction already scores about "
    "0.98 because the nerve covers ~1-2% of the pixels."
)
SYNTHETIC_NOTE = (
    "> **SYNTHETIC DATA.** These numbers come from the generated stand-in data set (CPU fallback), "
    "not from the Kaggle images; they test the pipeline, not the models."
)
_TITLES = {
    "kaggle_dice": "Kaggle Dice", "dice_positive": "Dice+", "iou": "IoU", "sensitivity": "Sensitivity",
    "precision": "Precision", "f1": "F1", "presence_accuracy": "Presence acc", "raw_kaggle_dice": "Raw Dice",
}  # fmt: skip
_COST_TITLES = {
    "params": ("Params (M)", 1e-6, 2), "gflops": ("GFLOPs", 1.0, 2),
    "train_time_s": ("Train time (s)", 1.0, 1),
    "train_img_s": ("Train img/s", 1.0, 1), "infer_img_s": ("Infer img/s", 1.0, 1),
    "latency_ms": ("Latency b=1 (ms)", 1.0, 2), "peak_mem_mb": ("Peak mem (MB)", 1.0, 0),
}  # fmt: skip
_COST_DOCS = {
    "params": "trainable + frozen parameters, millions",
    "gflops": "forward-pass GFLOPs for one image at the run's input size",
    "train_time_s": "wall time of one training run (fit incl. validation), seconds, mean over runs",
    "train_img_s": "training throughput, images per second",
    "infer_img_s": "inference throughput at the evaluation batch size, images per second",
    "latency_ms": "batch-1 inference latency, milliseconds (median)",
    "peak_mem_mb": "peak CUDA memory allocated during inference, MB; on CPU the growth of the process's "
    "peak RSS during inference (often 0, since training already reached the peak)",
}


def fmt(value: float | None, decimals: int = 3, scale: float = 1.0) -> str:
    return "n/a" if value is None else f"{value * scale:.{decimals}f}"


def fmt_ci(m: dict[str, Any], decimals: int = 3) -> str:
    if m["mean"] is None:
        return "n/a"
    if m["lo"] is None:
        return f"{m['mean']:.{decimals}f} (no CI)"
    return f"{m['mean']:.{decimals}f} [{m['lo']:.{decimals}f}, {m['hi']:.{decimals}f}]"


def fmt_p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def ci_label(row: dict[str, Any]) -> str:
    method = row["metrics"]["kaggle_dice"]["ci"]
    if method == "t":
        return f"t, {row['n_runs']} runs"
    if method == "bootstrap":
        return f"bootstrap, 1 run, {row['n_images']} images"
    return "none"


def _name(row: dict[str, Any]) -> str:
    return f"{row['model']} (baseline)" if row["baseline"] else row["model"]


def csv_table(board: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of leaderboard.csv: every number at 6 decimals, "n/a" when missing."""
    columns = ["rank", "model", "baseline", "n_runs", "n_images", "ci_method"]
    for col, _, _ in METRICS:
        columns += [f"{col}_mean", f"{col}_ci_lo", f"{col}_ci_hi"]
    columns += ["p_value_vs_top", "n_pairs", *COST]
    rows = []
    for r in board["rows"]:
        line = [str(r["rank"]), r["model"], str(r["baseline"]).lower(), str(r["n_runs"]), str(r["n_images"])]
        line.append(r["metrics"]["kaggle_dice"]["ci"])
        for col, _, _ in METRICS:
            m = r["metrics"][col]
            line += [fmt(m["mean"], 6), fmt(m["lo"], 6), fmt(m["hi"], 6)]
        line += [fmt(r["p_value"], 6), str(r["n_pairs"])]
        line += [fmt(r["cost"][k], 0 if k == "params" else 6) for k in COST]
        rows.append(line)
    return columns, rows


def legend(board: dict[str, Any]) -> dict[str, str]:
    """One-line definition of every column (metric definitions come from benchmark.metrics)."""
    from benchmark.scoring.metrics import METRIC_DOCS

    docs = {
        "rank": "position by mean post-processed kaggle_dice (ties broken by model name)",
        "model": f"registry name; `{BASELINE}` predicts no nerve anywhere (the baseline)",
        "ci": "95% CI: Student-t over (fold, seed) runs when a model has >1 run; with a single run a "
        f"per-image percentile bootstrap ({N_BOOT} resamples) of that run's validation images",
        "p_vs_top": "two-sided paired bootstrap p-value (mean difference of per-image post-processed Dice vs "
        f"the top model, {N_BOOT} resamples), pairs = (fold, seed, image index) present in both",
        "n_pairs": "number of paired images in the test",
    }
    for col, block, name in METRICS:
        what = METRIC_DOCS.get(name, name)
        stage = "raw: threshold 0.5, no post-processing" if block == "raw" else "after post-processing"
        docs[col] = f"{what} ({stage})"
    docs.update(_COST_DOCS)
    docs["pixel_accuracy"] = PIXEL_ACCURACY_WARNING
    return docs


def _header_lines(h: dict[str, Any]) -> list[str]:
    lines = []
    for d in h["datasets"]:
        kind = "SYNTHETIC" if d.get("synthetic") else "real"
        lines.append(
            f"- **Dataset**: {d.get('name', 'unknown')} ({kind}) - {d.get('n_train', '?')} images, "
            f"{d.get('n_subjects', '?')} subjects, content hash `{d.get('content_hash', '?')}`"
        )
    soft = ", ".join(f"{k} {'/'.join(v)}" for k, v in sorted(h["software"].items()))
    lines += [
        f"- **Hardware**: {'; '.join(h['device'])} ({'; '.join(h['platform'])})",
        f"- **Software**: {soft}",
        f"- **Git**: `{'`, `'.join(h['git_sha'])}`",
        f"- **Benchmark config hash**: `{'`, `'.join(h['benchmark_hash'])}` (config without model, "
        "model_kwargs, fold, seed; per-run config hashes are in leaderboard.json)",
        f"- **Runs**: {h['n_runs']} over {len(h['models'])} models",
    ]
    return lines


def _accuracy_table(board: dict[str, Any]) -> list[str]:
    cols = [c for c, _, _ in METRICS]
    head = ["Rank", "Model", "Runs", "CI"] + [_TITLES[c] for c in cols] + ["p vs top", "pairs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in board["rows"]:
        cells = [str(r["rank"]), _name(r), str(r["n_runs"]), ci_label(r)]
        cells += [fmt_ci(r["metrics"][c]) for c in cols]
        cells += ["top" if r["rank"] == 1 else fmt_p(r["p_value"]), str(r["n_pairs"])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _cost_table(board: dict[str, Any]) -> list[str]:
    head = ["Model"] + [_COST_TITLES[k][0] for k in COST]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in board["rows"]:
        cells = [_name(r)] + [fmt(r["cost"][k], _COST_TITLES[k][2], _COST_TITLES[k][1]) for k in COST]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(board: dict[str, Any]) -> str:
    h = board["header"]
    synthetic = any(d.get("synthetic") for d in h["datasets"])
    lines = ["# nerve-bench leaderboard", ""]
    if synthetic:
        lines += [SYNTHETIC_NOTE, ""]
    lines += _header_lines(h) + ["", "## Accuracy (validation folds, 420x580)", ""]
    lines += _accuracy_table(board) + ["", "## Cost", ""] + _cost_table(board) + ["", "## Legend", ""]
    lines += [f"- **{k}**: {v}" for k, v in legend(board).items() if k != "pixel_accuracy"]
    lines += ["", f"**Note**: {PIXEL_ACCURACY_WARNING}", ""]
    if board["ignored_runs"]:
        lines += [
            f"{len(board['ignored_runs'])} run(s) from another config or data set were left out "
            "(listed in leaderboard.json).",
            "",
        ]
    return "\n".join(lines)

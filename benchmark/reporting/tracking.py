"""Experiment tracking: W&B summaries of finished runs and of the leaderboard (the training-time
Lightning logger is benchmark/training/logger.py).

W&B runs offline unless ``WANDB_API_KEY`` is set (an explicit ``WANDB_MODE`` always wins), so a
benchmark never needs the network; offline runs land in ``<dir>/wandb/offline-run-*`` and can be
uploaded later with ``wandb sync``. One W&B *group* collects every run of one benchmark (its config
hash), whichever command trained it, and one run per distinct board (its report id).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from benchmark.core.config import TrainConfig
from benchmark.reporting.inputs import overlay_problem, overlays_of
from benchmark.training.logger import wandb_env, wandb_mode, wandb_run_id

# Metrics logged as the run's final summary (post-processed unless prefixed raw/).
_FINAL_METRICS = (
    "kaggle_dice", "dice_positive", "iou", "sensitivity", "precision", "f1", "presence_accuracy",
)  # fmt: skip


def _attach_run(summary: dict[str, Any], run_dir: Path) -> Any:
    """The still-open W&B run of this training run, or a resumed one with the same id."""
    wandb_env()
    import wandb

    cfg = summary.get("config", {})
    name = summary["run"]
    if wandb.run is not None and wandb.run.name == name:
        return wandb.run
    if wandb.run is not None:
        wandb.finish()
    return wandb.init(
        project=cfg.get("wandb_project", "nerve-bench"),
        group=cfg.get("wandb_group"),
        name=name,
        id=wandb_run_id(name, cfg.get("wandb_group")),
        resume="allow",
        dir=str(run_dir),
        config=cfg,
        mode=wandb_mode(),
        job_type="train",
    )


def overlay_images(npz_path: Path, limit: int = 8) -> list[Any]:
    """``wandb.Image`` per overlay image, with truth and prediction as segmentation masks."""
    import wandb

    if not npz_path.is_file():
        return []
    with np.load(npz_path, allow_pickle=False) as data:
        stems, images, truth, pred = data["stem"], data["image"], data["truth"], data["pred"]
    labels = {1: "nerve"}
    return [
        wandb.Image(
            images[i],
            caption=str(stems[i]),
            masks={
                "truth": {"mask_data": truth[i].astype(np.uint8), "class_labels": labels},
                "prediction": {"mask_data": pred[i].astype(np.uint8), "class_labels": labels},
            },
        )
        for i in range(min(limit, len(stems)))
    ]


def log_run_summary(summary: dict[str, Any], run_dir: str | Path) -> None:
    """Log final metrics and validation overlays of a finished run to its W&B run, then close it."""
    if summary.get("config", {}).get("logger") != "wandb":
        return
    wandb_env()
    import wandb

    run_dir = Path(run_dir)
    run = _attach_run(summary, run_dir)
    metrics = summary.get("metrics", {})
    final = {f"final/{k}": metrics.get("post", {}).get(k) for k in _FINAL_METRICS}
    final["final/raw_kaggle_dice"] = metrics.get("raw", {}).get("kaggle_dice")
    final["final/train_time_s"] = summary.get("train_time_s")
    for key, value in (summary.get("cost") or {}).items():
        final[f"cost/{key}"] = value
    final.update(_selected(summary))
    final = {k: v for k, v in final.items() if v is not None}
    run.summary.update(final)
    overlays = overlays_of(run_dir, summary)
    images = [] if overlay_problem(overlays) else overlay_images(overlays)  # report names a damaged one
    if images:
        run.log({"outer/overlays": images})  # frames of the scored outer fold, not of validation
    wandb.finish()


def _selected(summary: dict[str, Any]) -> dict[str, Any]:
    """What the run's scores rest on: the selected epoch and its inner-set score (W&B's summary of
    val/* is the last epoch's), the tuned post-processing, the data and the code."""
    post = {f"selection/postprocess/{k}": v for k, v in (summary.get("postprocess") or {}).items()}
    inner = ((summary.get("selection") or {}).get("metrics") or {}).get("post") or {}
    return {
        "selection/best_epoch": summary.get("best_epoch"),
        "selection/kaggle_dice": inner.get("kaggle_dice"),
        **post,
        "data/content_hash": (summary.get("dataset") or {}).get("content_hash"),
        "code/git_sha": (summary.get("environment") or {}).get("git_sha"),
    }


def benchmark_group(config_hash: str) -> str:
    """The W&B group of a benchmark's runs and boards: its config hash, as the board's header names it."""
    return f"benchmark-{config_hash}"


def log_leaderboard(
    board: dict[str, Any], cfg: TrainConfig, out_dir: str | Path, plot: Path | None = None
) -> None:
    """One group-level W&B run holding the leaderboard as a ``wandb.Table`` (and its bar chart)."""
    if cfg.logger != "wandb":
        return
    wandb_env()
    import wandb

    if wandb.run is not None:
        wandb.finish()
    from benchmark.reporting.notes import notes

    columns, rows = leaderboard_table(board)
    name = f"{cfg.wandb_group or 'benchmark'}-leaderboard"
    run = wandb.init(
        project=cfg.wandb_project,
        group=cfg.wandb_group,
        name=name,
        id=wandb_run_id(f"{name}-{board.get('report_id')}", cfg.wandb_group),  # one W&B run per board
        resume="allow",
        dir=str(out_dir),
        mode=wandb_mode(),
        job_type="leaderboard",
        # the notes qualify the ranking (floor, seeds, power): a board cited from W&B carries them
        config={"header": board["header"], "report_id": board.get("report_id"), "notes": notes(board)},
    )
    table = wandb.Table(columns=columns, data=rows)
    payload: dict[str, Any] = {"leaderboard": table}
    if plot is not None and plot.is_file():
        payload["leaderboard_plot"] = wandb.Image(str(plot))
    run.log(payload)
    wandb.finish()


def leaderboard_table(board: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """leaderboard.csv's columns and rows (its ``report_id`` too), each column typed as a whole: a
    column of numbers as numbers, so W&B sorts and plots it (it holds a column to one type); of
    true/false as bools; else text; "n/a" and an empty cell as None."""
    from benchmark.reporting.tables import csv_table

    columns, rows = csv_table(board)
    typed = [_typed_column([row[i] for row in rows]) for i in range(len(columns))]
    report_id = board.get("report_id") or ""
    return [*columns, "report_id"], [[*(col[j] for col in typed), report_id] for j in range(len(rows))]


def _typed_column(cells: list[str]) -> list[Any]:
    given = [c for c in cells if c not in ("", "n/a")]
    kind = _column_type(given)
    return [None if c in ("", "n/a") else kind(c) for c in cells]


def _column_type(given: list[str]) -> Any:
    """The one type every given cell of a column reads as: bool, int, float, else str."""
    if not given:
        return str
    if all(c in ("true", "false") for c in given):
        return "true".__eq__
    for number in (int, float):
        try:
            [number(c) for c in given]
        except ValueError:
            continue
        return number
    return str

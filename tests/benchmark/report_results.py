"""The small results directory the report tests share: hand-made summaries (tests/benchmark/summaries.py)
with overlays.npz beside them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmark.core.summary import write_summary
from tests.benchmark.summaries import empty_runs, model_runs

PLOTS = ("plots/leaderboard.png", "plots/overlays.png", "plots/curves.png")
UNET = {0: [1.0, 0.8, 1.0, 0.6, 0.7, 1.0, 0.5, 0.0], 1: [1.0, 0.6, 0.0, 0.8, 0.9, 1.0, 0.7, 1.0]}
SK = {0: [1.0, 0.4, 1.0, 0.2, 0.5, 1.0, 0.3, 1.0], 1: [1.0, 0.4, 1.0, 0.2, 0.5, 1.0, 0.3, 1.0]}


def write_run(results, summary, overlays=True):
    run_dir = results / "runs" / summary["run"]
    write_summary(run_dir, summary)
    if overlays:
        yy, xx = np.mgrid[:32, :44]
        truth = np.stack([((yy - 16) ** 2 + (xx - 20) ** 2 < 40 + 10 * i).astype(np.uint8) for i in range(3)])
        pred = np.zeros_like(truth) if summary["model"] == "empty" else np.roll(truth, 2, axis=2)
        image = (np.arange(3 * 32 * 44) % 251).astype(np.uint8).reshape(3, 32, 44)
        stems = np.array(["1_1", "1_2", "2_1"])
        np.savez(run_dir / "overlays.npz", stem=stems, image=image, truth=truth, pred=pred)


def write_results(tmp_path: Path) -> Path:
    """unet and the floor complete with overlays; sk_unet missing a fold, without overlays."""
    for summary in model_runs("unet", UNET) + empty_runs(seeds=(0, 1)):
        write_run(tmp_path, summary)
    for summary in model_runs("sk_unet", SK, skip={(1, 1)}, cost=False):  # incomplete: a fold missing
        write_run(tmp_path, summary, overlays=False)
    return tmp_path

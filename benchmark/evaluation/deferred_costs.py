"""Inference costs of runs that trained beside others on one device, measured on a device of their own.

A run that the Ray executor packed onto a shared GPU (``gpus_per_run < 1``), or a CPU-only Ray task
sharing its node's cores, cannot time inference alone: its neighbours are training. It writes its
``summary.json`` complete, with the inference columns ``null`` and ``cost.measured.inference``
``"pending"``. Once the grid's tasks are done the executor runs :func:`measure_pending` in one task
holding a whole device, which fills the columns in place (atomically; nothing else in the summary
changes). One device for all of them also makes the columns comparable across models. If that step
fails or is interrupted, the runs stay complete with their columns pending (``n/a`` on the board)
and the next ``run`` of the grid measures them; finished work is never lost.
"""

from __future__ import annotations

from pathlib import Path

from benchmark.core.config import TrainConfig
from benchmark.core.summary import read_summary, write_summary
from benchmark.evaluation.costs import device_label, run_inference_costs
from benchmark.training.checkpoint import BEST, load_checkpoint_module
from benchmark.training.device import resolve_device
from datamodules.errors import DataError

PENDING = "pending"
REMEASURED = "exclusive, after the grid"


def is_pending(run_dir: Path) -> bool:
    """True when ``run_dir`` holds a readable summary whose inference columns wait for a measurement."""
    try:
        summary = read_summary(run_dir)
    except DataError:
        return False
    return ((summary.get("cost") or {}).get("measured") or {}).get("inference") == PENDING


def measure_one(run_dir: Path, device: str = "auto") -> str:
    """Measure one pending run's inference columns on ``device`` and rewrite its summary; one line."""
    import torch

    summary = read_summary(run_dir)
    if ((summary.get("cost") or {}).get("measured") or {}).get("inference") != PENDING:
        return f"{run_dir.name}: inference costs already measured"
    cfg = TrainConfig(**summary["config"])
    # A CPU run is timed on the CPU, as it ran: Ray leaves the GPUs visible to a task without a share.
    dev = resolve_device("cpu" if cfg.accelerator == "cpu" else device)
    module, _ = load_checkpoint_module(Path(run_dir) / "checkpoints" / BEST)
    measured = run_inference_costs(module.model, cfg, dev)
    share = 1.0 if dev.type == "cuda" else None
    summary["cost"].update(measured)
    summary["cost"]["measured"] = {
        "device": device_label(dev),
        "device_share": share,
        "inference": REMEASURED,
    }
    write_summary(run_dir, summary)
    del module
    if dev.type == "cuda":
        torch.cuda.empty_cache()  # the next model's peak starts from a clean allocator
    return f"{run_dir.name}: inference {measured['infer_img_s']:.1f} img/s on {device_label(dev)}"


def measure_pending(run_dirs: list[Path], device: str = "auto") -> list[str]:
    """:func:`measure_one` for each run, one line each; a run that fails keeps its columns pending."""
    lines = []
    for run_dir in map(Path, run_dirs):
        try:
            lines.append(measure_one(run_dir, device))
        except Exception as exc:  # noqa: BLE001 - one unreadable run must not stop the others
            reason = " ".join(str(exc).split())[:200]
            lines.append(f"{run_dir.name}: inference costs still pending ({type(exc).__name__}: {reason})")
    return lines

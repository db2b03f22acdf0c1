"""How long the full default benchmark would take on this box, from the rates the doctor measured.

The plan is ``default.yaml``'s: its models x folds x seeds, its epochs and image size, on all 5,635
Kaggle training frames. Per run of a model: ``epochs`` passes over the fit part at the suite's
measured training rate, one validation pass over the inner set per epoch and the final inner and
outer passes at the measured inference rate, and decoding the data set once; plus what the doctor's
short fit of the model spent beyond those rates (set-up, finalize's tuning and scoring: a low and a
high reading, :func:`overhead_s`). Runs spread over the devices one per device (gpu.yaml's Ray
executor at ``gpus_per_run: 1``), as many at once as the box's CPUs allow at its ``cpus_per_run``
(:func:`runs_at_once`), so the wall time is the total over the runs at once, but never shorter than
the longest run. The assumptions travel with the figure (``assumptions``), since a rate
measured at a small size or on a tiny model scales poorly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KAGGLE_TRAIN_FRAMES = 5635


@dataclass(frozen=True)
class Plan:
    models: tuple[str, ...]
    runs_per_model: int  # folds x seeds
    epochs: int
    image_size: int
    n_folds: int
    inner_fraction: float
    frames: int = KAGGLE_TRAIN_FRAMES
    cpus_per_run: float = 2.0  # gpu.yaml's: the Ray executor's CPUs per run

    def split(self) -> tuple[float, float, float]:
        """Frames per run in the (fit, inner, outer) parts, on average."""
        outer = self.frames / self.n_folds
        inner = (self.frames - outer) * self.inner_fraction
        return self.frames - outer - inner, inner, outer


def default_plan(config: Path | None = None) -> Plan:
    """The plan of ``default.yaml`` (or ``config``) with the Kaggle data, executed as ``gpu.yaml``
    executes it (or as ``config`` does)."""
    from benchmark.core.config import load_benchmark_config
    from benchmark.doctor.settings import CONFIGS

    bench = load_benchmark_config(config or CONFIGS / "default.yaml")
    execution = bench if config else load_benchmark_config(CONFIGS / "gpu.yaml")
    t = bench.train
    runs = len(bench.folds) * len(bench.seeds)
    return Plan(
        bench.models, runs, t.epochs, t.image_size, t.n_folds, t.inner_fraction,
        cpus_per_run=execution.cpus_per_run,
    )  # fmt: skip


def runs_at_once(devices: int, cpus: int | None, cpus_per_run: float) -> int:
    """Runs the Ray executor trains at once on one box: one per device, as many as ``cpus`` allow at
    ``cpus_per_run`` each (8 GPUs and 8 CPUs at 2 each: 4), at least one; ``cpus`` None: no cap."""
    by_cpus = math.floor(cpus / cpus_per_run + 1e-9) if cpus is not None else devices
    return max(min(devices, by_cpus), 1)


def run_seconds(plan: Plan, train_img_s: float | None, infer_img_s: float, scale: float) -> float:
    """One run: training and per-epoch validation (none without trainable parameters), final passes."""
    fit, inner, outer = plan.split()
    trains = train_img_s is not None
    train = plan.epochs * fit / train_img_s if trains else 0.0
    validate = plan.epochs * inner / infer_img_s if trains else 0.0
    return scale * (train + validate + (inner + outer) / infer_img_s)


def overhead_s(plan: Plan, figures: dict[str, Any]) -> tuple[float, float] | None:
    """A run's time outside the measured rates as (low, high), from the doctor's short fit of its model
    (:func:`benchmark.doctor.model_checks.phases`); None when no fit was measured.

    The set-up and the Trainer's time around its epochs count once per run. Finalize's time beyond
    its inference passes (tuning, post-processing at 420x580, costs, overlays, writes) counts once
    (low), or grows with the frames scored (high): the doctor's fit scores a few hundred inner and
    outer frames, a run of the plan a fold and an inner set of the Kaggle frames. Part of it is fixed
    (costs, overlays), part per frame, and one fit cannot tell them apart."""
    if figures.get("finalize_s") is None or not figures.get("scored_frames"):
        return None
    _, inner, outer = plan.split()
    passes = figures["scored_frames"] / figures["infer_img_s"]
    extra = max(figures["finalize_s"] - passes, 0.0)
    once = figures["setup_s"] + figures["outside_epochs_s"]
    return once + extra, once + extra * (inner + outer) / figures["scored_frames"]


def estimate(
    plan: Plan,
    rates: dict[str, dict[str, Any]],
    measured_size: int,
    devices: int,
    decode_s_per_frame: float,
    tiny: bool = False,
    cpus: int | None = None,
) -> dict[str, Any]:
    """Wall time of ``plan`` from per-model ``{"suite_train_img_s", "infer_img_s"}`` rates, and each
    model's fit phases where measured: ``wall_s`` counts the low reading of the per-run overhead,
    ``wall_s_high`` the high one (:func:`overhead_s`), an upper bound rather than a forecast: it
    scales the fixed part of scoring with the frames too (about 6x at the GPU sizes). ``cpus``: the
    box's, which cap the runs at once (:func:`runs_at_once`)."""
    scale = (plan.image_size / measured_size) ** 2
    measured = [m for m in plan.models if m in rates and rates[m].get("infer_img_s")]
    overhead = {m: overhead_s(plan, rates[m]) for m in measured}
    per_run, per_run_high = {}, {}
    for m in measured:
        compute = run_seconds(plan, rates[m].get("suite_train_img_s"), rates[m]["infer_img_s"], scale)
        low, high = overhead[m] or (0.0, 0.0)
        per_run[m], per_run_high[m] = compute + low, compute + high
    missing = [m for m in plan.models if m not in per_run]
    decode = decode_s_per_frame * plan.frames
    at_once = runs_at_once(devices, cpus, plan.cpus_per_run)
    wall, total = _wall(per_run, plan.runs_per_model, at_once, decode)
    wall_high, _ = _wall(per_run_high, plan.runs_per_model, at_once, decode)
    return {
        "wall_s": wall,
        "wall_s_high": wall_high,
        "device_hours": total / 3600,
        "per_run_s": per_run,
        "overhead_s": {m: list(o) for m, o in overhead.items() if o is not None},
        "missing": missing,
        "runs_at_once": at_once,
        "assumptions": _assumptions(plan, len(per_run), (devices, cpus, at_once), scale, measured_size, tiny)
        + _gaps(missing, [m for m, o in overhead.items() if o is None]),
    }


def _wall(per_run: dict[str, float], runs_per_model: int, at_once: int, decode: float) -> tuple[float, float]:
    """(wall time, device seconds): the total over the runs at once, never shorter than the longest run."""
    total = sum(per_run.values()) * runs_per_model
    return decode + max(total / max(at_once, 1), max(per_run.values(), default=0.0)), total


def _assumptions(
    plan: Plan, n_models: int, box: tuple[int, int | None, int], scale: float, measured_size: int, tiny: bool
) -> list[str]:
    devices, cpus, at_once = box
    capped = f", as {cpus} CPUs allow at cpus_per_run: {plan.cpus_per_run:g}" if at_once < devices else ""
    lines = [
        f"{n_models * plan.runs_per_model} runs ({plan.runs_per_model} per model), "
        f"{plan.epochs} epochs at {plan.image_size}x{plan.image_size}, {plan.frames} frames",
        f"{at_once} run(s) at once on {max(devices, 1)} device(s){capped} (Ray, gpus_per_run: 1)",
        "training at the suite's measured rate (deterministic on, as in the recipe); validation and the "
        "final passes at the measured inference rate; the data decoded once",
        "per run, what the short fit spent beyond those rates: set-up (as a warm process has it; a Ray "
        "GPU task starts a fresh one and adds its imports and CUDA start) and the Trainer's time around "
        "its epochs (checkpoint writes, loader start: counted once, not per epoch); finalize's tuning, "
        "post-processing, costs and writes once, or, for the upper bound, grown with the frames scored",
    ]
    if scale != 1.0:
        kind = "tiny models" if tiny else "the full models"
        lines.append(
            f"rates measured at {measured_size}x{measured_size} with {kind}, scaled by pixel count "
            f"(x{scale:g}), the per-run overhead not: a rough guide only"
        )
    return lines


def _gaps(missing: list[str], no_fit: list[str]) -> list[str]:
    lines = []
    if missing:
        lines.append(f"leaves out {len(missing)} model(s) without a measured rate: {', '.join(missing)}")
    if no_fit:
        lines.append(f"no per-run overhead for {', '.join(no_fit)}: their fit was not measured")
    return lines


def clock(seconds: float) -> str:
    """``1h02m`` / ``12m05s``."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"

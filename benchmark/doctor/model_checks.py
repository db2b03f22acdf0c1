"""Every model end to end on this box, with the recipe's features on.

Per model: a short fit through ``pipeline.fit`` (train, select, tune, score, summary.json), then
its training again with the same seed, the weights compared tensor for tensor (this is how "is a rerun or a
resume bit-identical here?" is answered per model and per box); then ``speed``'s figures (suite vs
plain loop vs ceiling, inference) and the suite's training rate with ``deterministic: false``
beside ``true``: what the recipe's determinism costs. Each step is guarded on its own, so a model
whose speed measurement fails still reports its fit.

On a GPU the recipe's determinism is torch's warn mode (``training.trainer.determinism``): an op
without a deterministic CUDA kernel warns instead of stopping the run. The fits record those
warnings, so each model's row names the ops that make its reruns differ on this box.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import torch
from lightning.pytorch.callbacks import Callback

from benchmark.doctor.report import FAIL, OK, WARN, Finding, one_line
from benchmark.doctor.settings import DoctorSettings, model_kwargs, train_config
from benchmark.training.device import release_run_memory

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from benchmark.core.config import TrainConfig
    from datamodules.gpu_augment import GpuCache


def compare_weights(a: Path, b: Path) -> tuple[bool, float]:
    """(every tensor of the two checkpoints' state dicts bit-equal, the largest absolute difference)."""
    from benchmark.training.checkpoint import load_plain

    sa, sb = load_plain(a)["state_dict"], load_plain(b)["state_dict"]
    if sorted(sa) != sorted(sb):
        raise RuntimeError(f"{a} and {b} hold different tensors")
    equal = all(torch.equal(sa[k], sb[k]) for k in sa)
    diffs = [float((sa[k].double() - sb[k].double()).abs().max()) for k in sa if sa[k].numel()]
    return equal, max(diffs, default=0.0)


class PhaseClock(Callback):
    """When the Trainer's fit started and ended (no hook fires for a model with nothing to train)."""

    def __init__(self) -> None:
        self.fit_start: float | None = None
        self.fit_end: float | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.fit_start = time.perf_counter()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning has moved the module to the CPU by now, which waited for the GPU's last steps.
        self.fit_end = time.perf_counter()


def fit_twice(model: str, s: DoctorSettings, dev: torch.device, data_dir: Path, work: Path) -> dict[str, Any]:
    """A short fit of ``model`` and its training repeated with the same seed: the fit's time, its
    phases (:func:`phases`) and Dice, and whether the two trained weights agree bit for bit."""
    import benchmark.training.trainer  # noqa: F401 - its warning filters, before determinism_alerts
    from benchmark.pipeline import fit
    from benchmark.runner import outer_dice
    from benchmark.speed import restore_global_torch_state
    from benchmark.training.checkpoint import BEST

    cfg = train_config(model, s, dev)
    first, again = PhaseClock(), PhaseClock()
    # The Trainer's deterministic switch must not reach the timings.
    with restore_global_torch_state(), determinism_alerts() as ops:
        start = time.perf_counter()
        summary = fit(cfg, data_dir, work / "fit-a", callbacks=[first])
        end = time.perf_counter()
        train_again(cfg, data_dir, work / "fit-b", [again])
        again_end = time.perf_counter()
    # One epoch, so best.ckpt holds the trained weights (a finished fit deletes its last.ckpt).
    equal, diff = compare_weights(
        work / "fit-a" / "checkpoints" / BEST, work / "fit-b" / "checkpoints" / BEST
    )
    return {
        "fit_s": end - start,
        **phases(summary, (start, first.fit_start, first.fit_end, end), (end, again.fit_start, again_end)),
        "outer_dice": outer_dice(summary),
        "bit_identical": equal,
        "max_abs_diff": diff,
        "nondeterministic_ops": ops,
    }


def phases(
    summary: dict[str, Any],
    first: tuple[float, float | None, float | None, float],
    again: tuple[float, float | None, float],
) -> dict[str, Any]:
    """Where a short fit's time went beyond its epochs, which the estimate takes from the measured rates.

    ``first``: (call, fit start, fit end, return) of the fit; ``again``: (call, fit start, return) of
    the training repeated. ``setup_s`` is the repeat's set-up (seeding, data from the warm decoded
    cache, model, Trainer), as every run but a node's first has it; ``outside_epochs_s`` the Trainer's
    time around its epochs (end-of-fit checkpoints); ``finalize_s`` selection, tuning and scoring of
    the ``scored_frames`` inner and outer frames, costs, overlays and the summary. With nothing to
    train no fit hook fires: the repeat is all set-up, and the fit's set-up is taken to be as long."""
    call, fit_start, fit_end, done = first
    again_call, again_start, again_done = again
    setup = (again_start or again_done) - again_call
    if fit_start is None or fit_end is None:
        outside, finalize = 0.0, done - call - setup
    else:
        outside, finalize = fit_end - fit_start - float(summary["train_time_s"]), done - fit_end
    data = summary["dataset"]
    return {
        "setup_s": setup,
        "outside_epochs_s": max(outside, 0.0),
        "finalize_s": max(finalize, 0.0),
        "scored_frames": int(data["n_inner"]) + int(data["n_outer"]),
    }


ALERT = " does not have a deterministic implementation"  # torch's words (ATen's alertNotDeterministic)


def alerted_ops(messages: Iterable[str]) -> list[str]:
    """The ops named by torch's determinism alerts among ``messages``, each once, sorted."""
    return sorted({m.split(ALERT, 1)[0].strip() for m in messages if ALERT in m})


@contextlib.contextmanager
def determinism_alerts() -> Iterator[list[str]]:
    """Yield a list that holds, once the block is over (or has raised), the ops whose determinism
    alert (warn mode) the block raised. Alerts are taken every time (a filter may have shown one
    already) and not printed; every other warning goes through the filters and is shown as before.
    The block must not import a module that installs warning filters: they are reset on exit."""
    ops: list[str] = []
    messages: list[str] = []
    with warnings.catch_warnings():  # restores the filters and showwarning afterwards
        warnings.filterwarnings("always", message=".*" + re.escape(ALERT))
        shown = warnings.showwarning

        def show(
            message: Warning | str,
            category: type[Warning],
            filename: str,
            lineno: int,
            file: TextIO | None = None,
            line: str | None = None,
        ) -> None:
            if ALERT in str(message):
                messages.append(str(message))
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        try:
            yield ops
        finally:
            ops.extend(alerted_ops(messages))


def train_again(cfg: TrainConfig, data_dir: Path, out_dir: Path, callbacks: list | None = None) -> None:
    """``pipeline.fit`` up to the end of training (seeding, data, module, Trainer), without scoring:
    the weights are all a rerun is compared on, and scoring costs more than the short training."""
    from lightning import seed_everything

    from benchmark.training.module import SegModule
    from benchmark.training.trainer import make_datamodule, train

    seed_everything(cfg.seed, workers=True, verbose=False)
    train(cfg, SegModule(cfg.to_dict()), make_datamodule(cfg, data_dir), out_dir, callbacks)


def speed_figures(
    model: str, s: DoctorSettings, dev: torch.device, data_dir: Path, cache: GpuCache, work: Path
) -> dict[str, Any]:
    """``speed``'s row for ``model``, plus the suite's rate with determinism off over on."""
    from benchmark import speed

    settings = speed.SpeedSettings(
        image_size=s.image_size,
        batch_size=s.batch_size,
        steps=s.steps,
        warmup=s.warmup,
        device=dev.type,
        model_kwargs=model_kwargs(s),
    )
    row = speed.measure_model(model, data_dir, cache, settings, work / "speed")
    row["deterministic_speedup"] = None
    if row["suite_train_img_s"] is not None:
        off = dataclasses.replace(settings, deterministic=False)
        free = speed.suite_train_img_s(model, data_dir, off, dev, work / "speed-nondeterministic")
        row["suite_train_img_s_nondeterministic"] = free
        row["deterministic_speedup"] = speed.ratio(free, row["suite_train_img_s"])
    return row


def _detail(f: dict[str, Any]) -> str:
    parts = []
    if "fit_s" in f:
        dice = "n/a" if f["outer_dice"] is None else f"{f['outer_dice']:.3f}"
        same = (
            "bit-identical"
            if f["bit_identical"]
            else f"NOT bit-identical (max |diff| {f['max_abs_diff']:.1e})"
        )
        parts.append(
            f"fit {f['fit_s']:.1f} s (set-up {f['setup_s']:.1f} s, scoring {f['finalize_s']:.1f} s), "
            f"outer Dice {dice}; same-seed rerun {same}"
        )
        if f["nondeterministic_ops"]:
            parts.append(f"no deterministic kernel: {', '.join(f['nondeterministic_ops'])}")
    if f.get("suite_train_img_s") is not None:
        parts.append(f"suite {f['suite_train_img_s']:.1f} img/s ({f['ratio_suite_vs_plain']:.2f}x plain)")
    elif "infer_img_s" in f:
        parts.append("nothing to train: inference only")
    return "; ".join(parts)


def model_check(
    model: str, s: DoctorSettings, dev: torch.device, data_dir: Path, cache: GpuCache, work: Path
) -> Finding:
    """The fit, rerun and speed steps of one model; FAIL names the step that broke."""
    figures: dict[str, Any] = {"model": model}
    problems = []
    steps = (
        ("fit", lambda: fit_twice(model, s, dev, data_dir, work / "fits")),
        ("speed", lambda: speed_figures(model, s, dev, data_dir, cache, work)),
    )
    for name, step in steps:
        try:
            figures.update(step())
        except Exception as exc:  # noqa: BLE001 - the other step still reports
            problems.append(f"{name}: {one_line(exc)}")
        finally:
            release_run_memory(compiled=False)
    if problems:
        return Finding("; ".join(problems), figures, FAIL)
    status = OK if figures.get("bit_identical", True) else WARN
    return Finding(_detail(figures), figures, status)

"""One doctor session: every check in order, each guarded, then the report (tables or JSON).

Order: the device and its features first (cheap, and they explain later failures), then the data,
the first model, the multi-process checks (before the other models, so that ``--budget-s`` cuts a
model rather than them) and the wall-time estimate from the measured rates. Work
files live in a temporary directory that is removed afterwards; nothing is written elsewhere
unless ``--json PATH`` asks for it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from benchmark.core.environ import environ
from benchmark.doctor import device_checks, estimate, model_checks, parallel_checks
from benchmark.doctor.report import (
    FAIL,
    SKIP,
    CheckResult,
    Finding,
    Skip,
    checks_table,
    exit_code,
    models_table,
    run_check,
)
from benchmark.doctor.settings import SUBJECTS, DoctorSettings, per_subject, resolve
from benchmark.training.device import resolve_device


@dataclasses.dataclass
class Context:
    """What the checks share: the device, the resolved settings, the data and its device cache."""

    dev: torch.device
    s: DoctorSettings
    work: Path
    data_dir: Path | None = None
    cache: Any = None
    decode_s_per_frame: float | None = None
    results: list[CheckResult] = dataclasses.field(default_factory=list)
    cut: list[str] = dataclasses.field(default_factory=list)  # checks --budget-s left out

    def need_data(self) -> Path:
        if self.data_dir is None:
            raise Skip("no data (the data check failed or was skipped)")
        return self.data_dir


def prepare_data(ctx: Context) -> Finding:
    """The doctor's data (the given Kaggle layout, or synthetic), decoded once and cached on the device."""
    from benchmark.speed import build_cache
    from datamodules.kaggle import load_train

    frames = per_subject(ctx.s.batch_size)
    if ctx.s.data_dir is not None:
        data, what = Path(ctx.s.data_dir), f"{ctx.s.data_dir}"
    else:
        from benchmark.doctor.data import generate_layout

        data = generate_layout(ctx.work / "data", SUBJECTS, frames)
        what = f"synthetic, {SUBJECTS} subjects x {frames} frames"
    start = time.perf_counter()
    n = len(load_train(data))
    ctx.decode_s_per_frame = (time.perf_counter() - start) / n
    rate = 1 / ctx.decode_s_per_frame
    what = f"{what}: {n} frames, decoded and validated at {rate:.0f} frames/s"
    figures = {"frames": n}
    if ctx.s.data_dir is not None:  # the fits' share: whole subjects, as many frames as synthetic
        from benchmark.doctor.data import first_subjects

        data, k, m = first_subjects(data, ctx.work / "fit-data", SUBJECTS * frames, SUBJECTS)
        what += f"; the fits use its first {k} subjects ({m} frames)"
        figures.update(fit_subjects=k, fit_frames=m)
    ctx.cache = build_cache(data, ctx.s.image_size, ctx.dev)
    ctx.data_dir = data
    return Finding(what, figures)


def estimate_check(ctx: Context) -> Finding:
    """The full default benchmark's wall time from the models' measured rates."""
    rates = {r.figures["model"]: r.figures for r in ctx.results if r.name.startswith("model ") and r.figures}
    if not any(f.get("infer_img_s") for f in rates.values()) or ctx.decode_s_per_frame is None:
        raise Skip("no model was measured")
    plan = estimate.default_plan()
    devices = torch.cuda.device_count() if ctx.dev.type == "cuda" else 1
    est = estimate.estimate(
        plan, rates, ctx.s.image_size, devices, ctx.decode_s_per_frame, tiny=bool(ctx.s.tiny),
        cpus=os.cpu_count() if ctx.dev.type == "cuda" else None,
    )  # fmt: skip
    n_measured = len(plan.models) - len(est["missing"])
    scope = (
        "full default benchmark"
        if not est["missing"]
        else f"default benchmark's {n_measured} measured model(s)"
    )
    low, high = estimate.clock(est["wall_s"]), estimate.clock(est["wall_s_high"])
    detail = f"{scope} here: about {low} wall time" + ("" if low == high else f", at most {high}")
    detail += f" ({est['device_hours']:.1f} device-hours)"
    if est["missing"]:
        detail += f"; {len(est['missing'])} model(s) not measured, not counted"
    return Finding(detail, est)


def _plan(ctx: Context) -> list[tuple[str, str, Callable[[], Finding]]]:
    """(check name, --skip key, function) in running order."""
    s, dev, w = ctx.s, ctx.dev, ctx.work
    batch = s.batch_size or 1
    checks = [
        ("device", "device", lambda: device_checks.device_info(dev)),
        ("idle", "idle", lambda: device_checks.idle(dev)),
        ("data", "data", lambda: prepare_data(ctx)),
        ("bf16", "bf16", lambda: device_checks.bf16(dev)),
        ("compile", "compile", lambda: device_checks.compile_works(dev, s.compile_backend)),
        ("channels_last", "channels_last", lambda: device_checks.channels_last(dev)),
        (
            "gpu_cache",
            "gpu_cache",
            lambda: device_checks.gpu_cache(dev, ctx.need_data(), s.image_size, batch),
        ),
    ]
    models = [(f"model {m}", "models", lambda m=m: _model(ctx, m, w / m.replace(":", "-"))) for m in s.models]
    parallel = [
        ("ddp", "ddp", lambda: parallel_checks.ddp_step(s, dev, ctx.need_data(), w)),
        ("ray", "ray", lambda: parallel_checks.ray_grid_check(s, dev, ctx.need_data(), w)),
    ]
    # The multi-process paths right after the first model: the other models share its code path,
    # so a --budget-s that runs out should cut a model's row, not the only DDP and Ray checks.
    return (
        checks + models[:1] + parallel + models[1:] + [("estimate", "estimate", lambda: estimate_check(ctx))]
    )


def _model(ctx: Context, model: str, work: Path) -> Finding:
    return model_checks.model_check(model, ctx.s, ctx.dev, ctx.need_data(), ctx.cache, work)


@contextlib.contextmanager
def _decoded_cache_in(work: Path) -> Iterator[None]:
    """The fits' decoded frames are cached under ``work`` and go with it: the doctor's layouts are
    temporary, and their entries (~0.35 GB at the GPU sizes) would stay in the user's cache for the
    14 days before it prunes them."""
    from datamodules.decoded_cache import CACHE_ENV

    with environ({CACHE_ENV: str(work / "decoded-cache")}):
        yield


clock = time.perf_counter  # the session's clock (--budget-s, seconds); a test advances its own


def run_doctor(
    settings: DoctorSettings,
    progress: Callable[[str], None] | None = None,
    after_each: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Every check; the report dict (``checks``, ``settings``, ``seconds``, ``ok``, ``complete``).
    ``after_each`` gets the report so far before the first check and after every check
    (``--json PATH`` keeps it on disk, so a doctor killed at a time limit still leaves the figures
    it measured, and an unwritable path is found before any work)."""
    say = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    # A deterministic Trainer sets this (Lightning), but torch reads it once, at the process's first
    # cuBLAS call, which the device checks make before any Trainer: every later deterministic fit
    # would warn that cuBLAS is not deterministic.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    dev = resolve_device(settings.device)
    s = resolve(settings, dev)
    start = clock()
    with tempfile.TemporaryDirectory(prefix="nerve-bench-doctor-") as tmp, _decoded_cache_in(Path(tmp)):
        ctx = Context(dev, s, Path(tmp))
        keep = after_each or (lambda report: None)
        keep(_report(ctx, start, done=False))
        longest: dict[str, float] = {}  # per --skip key: the models apart from the one-off checks
        for name, key, fn in _plan(ctx):
            why = _not_run(s, key, clock() - start, _pace(longest, key))
            if why:
                ctx.results.append(CheckResult(name, SKIP, why, 0.0))
                if why.startswith("--budget-s"):
                    ctx.cut.append(name)
                continue
            say(f"doctor: {name} ...")
            with contextlib.redirect_stdout(sys.stderr):  # Lightning and runner chatter, not the table
                result = run_check(name, fn)
            ctx.results.append(result)
            longest[key] = max(longest.get(key, 0.0), result.seconds)
            say(f"doctor: {name} {result.status} ({result.seconds:.1f} s) {result.detail}")
            keep(_so_far(ctx, start))
    return _report(ctx, start, done=True)


def _so_far(ctx: Context, start: float) -> dict[str, Any]:
    """The report so far, with the estimate from the models measured so far: a doctor killed at a
    time limit in a slow model's check (its start was within --budget-s) still leaves one."""
    report = _report(ctx, start, done=False)
    names = [r.name for r in ctx.results]
    if "estimate" not in ctx.s.skip + tuple(names) and any(n.startswith("model ") for n in names):
        provisional = run_check("estimate", lambda: estimate_check(ctx))
        if provisional.status != SKIP:
            provisional.detail = f"so far: {provisional.detail}"
            report["checks"].append(provisional.to_dict())
    return report


def _pace(longest: dict[str, float], key: str) -> float:
    """How long the next check is taken to last: a model as long as the longest model so far (the
    Ray check's minute says nothing of a model's), any other check as the longest check so far."""
    if key == "models" and "models" in longest:
        return longest["models"]
    return max(longest.values(), default=0.0)


def _not_run(s: DoctorSettings, key: str, elapsed: float, longest: float) -> str:
    """Why a check is skipped: ``--skip``, or ``--budget-s``: at the pace of the longest check so far
    it would end after the budget (the estimate, which only reads the figures measured, always runs)."""
    if key in s.skip:
        return "--skip"
    if s.budget_s is not None and key != "estimate" and elapsed + longest > s.budget_s:
        return (
            f"--budget-s {s.budget_s:g}: no time left ({elapsed:.0f} s spent, longest check {longest:.0f} s)"
        )
    return ""


def _report(ctx: Context, start: float, done: bool) -> dict[str, Any]:
    """The report so far; ``complete`` only once every check ran or was skipped for a reason other
    than the time budget."""
    return {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(ctx.s).items()},
        "device": str(ctx.dev),
        "checks": [r.to_dict() for r in ctx.results],
        "seconds": clock() - start,
        "ok": exit_code(ctx.results) == 0,
        "complete": done and not ctx.cut,
        "finished": done,  # false in the copies --json keeps while checks run (a killed doctor's last)
        "cut": list(ctx.cut),
    }


def results_of(report: dict[str, Any]) -> list[CheckResult]:
    return [CheckResult(**c) for c in report["checks"]]


def format_report(report: dict[str, Any]) -> str:
    """The checks table, the per-model figures, the estimate's assumptions and a one-line verdict."""
    results = results_of(report)
    s = report["settings"]
    lines = [f"nerve-bench doctor on {report['device']}", "", checks_table(results)]
    models = [r for r in results if r.name.startswith("model ") and r.status != SKIP]
    if models:
        lines += [
            "",
            f"per model at {s['image_size']}x{s['image_size']}, batch {s['batch_size']}, {s['steps']} timed "
            f"steps after {s['warmup']} warm-up ({'tiny' if s['tiny'] else 'full'} models):",
            models_table(models),
            "suite: the benchmark's own training (Trainer, recipe precision and data path, deterministic "
            "on); plain: PyTorch-default fp32 loop (TF32 convolutions on a GPU) with tif-decoding DataLoader "
            "workers; ceiling: device-resident batches, "
            "no augmentation; det off/on: suite img/s with deterministic false over true; rerun identical: "
            "a second fit with the same seed gives bit-identical weights; ops warned: ops without a "
            "deterministic kernel here, which torch only warns about on a GPU (strict on CPU).",
        ]
    est = next((r for r in results if r.name == "estimate" and r.status != SKIP and r.figures), None)
    if est is not None:
        lines += ["", "estimate assumes: " + "; ".join(est.figures["assumptions"])]
    counts = {k: sum(r.status == k for r in results) for k in ("OK", "WARN", "SKIP", FAIL)}
    verdict = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
    cut = report.get("cut") or []
    incomplete = f" -- INCOMPLETE: --budget-s left out {', '.join(cut)}" if cut else ""
    if not report.get("finished", True):
        last = results[-1].name if results else "none"
        incomplete += f" -- INCOMPLETE: stopped after check '{last}' (the report it kept while running)"
    lines += [
        "",
        f"doctor: {verdict} in {report['seconds']:.0f} s"
        + (" -- FAILED" if counts[FAIL] else "")
        + incomplete,
    ]
    return "\n".join(lines)

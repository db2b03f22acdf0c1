"""`doctor`: prove this box can run the benchmark: device features, every model, DDP, Ray, an estimate."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

HELP = "check this box end to end (device, every model, DDP, Ray) and estimate the full benchmark's time"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from benchmark.doctor.settings import CHECKS

    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--models", default=None, help="comma-separated registry names (default: all)")
    parser.add_argument("--image-size", type=int, default=None, help="default 256 on a GPU, 64 on CPU")
    parser.add_argument("--batch-size", type=int, default=None, help="default 64 on a GPU, 4 on CPU")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per speed path (10 GPU, 2 CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps before each timing (3, 1)")
    parser.add_argument("--fit-batches", type=int, default=None, help="training batches per short fit (4, 2)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--tiny", dest="tiny", action="store_true", default=None, help="small U-Net widths")
    size.add_argument("--full", dest="tiny", action="store_false", help="the benchmark's model widths")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend to check")
    parser.add_argument("--skip", default="", help=f"comma-separated checks to skip: {', '.join(CHECKS)}")
    parser.add_argument("--data-dir", type=Path, default=None, help="a Kaggle layout (default: synthetic)")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="start no check after this many seconds (they are SKIP; the table and estimate still come)",
    )
    parser.add_argument(
        "--show",
        type=Path,
        default=None,
        metavar="PATH",
        help="print the tables of a report --json wrote (also of a doctor killed midway), run nothing",
    )
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        default=None,
        metavar="PATH",
        help="write the figures as JSON to PATH (and print the table), or to stdout instead of the table",
    )


def _names(text: str | None) -> tuple[str, ...]:
    return tuple(t.strip() for t in (text or "").split(",") if t.strip())


def show(path: Path) -> int:
    """The tables of a saved report, and its exit code (3: cut short, by --budget-s or a kill)."""
    import json

    from benchmark.core.config import ConfigError
    from benchmark.core.files import os_error_line
    from benchmark.doctor.report import exit_code
    from benchmark.doctor.session import format_report, results_of

    try:
        report = json.loads(path.read_text())
        text, code, complete = format_report(report), exit_code(results_of(report)), report["complete"]
    except OSError as exc:
        raise ConfigError(os_error_line(exc)) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not a doctor report ({type(exc).__name__}: {exc})") from None
    print(text)
    return 3 if code == 0 and not complete else code


def run(args: argparse.Namespace) -> int:
    from benchmark.core.config import ConfigError
    from benchmark.core.model_kwargs import check_model_kwargs
    from benchmark.core.summary import dumps
    from benchmark.doctor.report import exit_code
    from benchmark.doctor.session import format_report, results_of, run_doctor
    from benchmark.doctor.settings import DoctorSettings

    if args.show is not None:
        return show(args.show)
    try:
        settings = DoctorSettings(
            device=args.device,
            models=_names(args.models),
            image_size=args.image_size,
            batch_size=args.batch_size,
            steps=args.steps,
            warmup=args.warmup,
            fit_batches=args.fit_batches,
            tiny=args.tiny,
            compile_backend=args.compile_backend,
            skip=_names(args.skip),
            data_dir=args.data_dir,
            budget_s=args.budget_s,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if settings.data_dir is not None and not settings.data_dir.is_dir():  # was a FAIL check: exit 1
        raise ConfigError(f"{settings.data_dir}: --data-dir is not a directory (a Kaggle layout: train/)")
    if settings.models:
        from benchmark.core.config import TrainConfig

        check_model_kwargs(TrainConfig(model=m) for m in settings.models)  # a typo: one line, exit 2
    keep = _json_writer(args.json)
    report = run_doctor(settings, after_each=keep)
    if args.json == "-":
        print(dumps(report), end="")
    else:
        print(format_report(report))
    if keep is not None:
        keep(report, final=True)
        print(f"doctor: figures written to {args.json}", file=sys.stderr)
    code = exit_code(results_of(report))
    return 3 if code == 0 and not report["complete"] else code  # 3: as `run`, work left undone


def _json_writer(path: str | None) -> Callable[..., None] | None:
    """``--json PATH``: the report so far, written atomically before the first check (an unwritable
    path is one line before any work) and after every check (a later failure: one warning, and the
    checks go on); the ``final`` write at the end is tried again and raises."""
    if path in (None, "-"):
        return None
    from benchmark.core.config import ConfigError
    from benchmark.core.files import atomic_write, os_error_line
    from benchmark.core.summary import dumps

    failed: list[OSError] = []

    def keep(report: dict, final: bool = False) -> None:
        if failed and not final:
            return
        try:
            atomic_write(Path(str(path)), dumps(report))
        except OSError as exc:
            if not final and not report["checks"]:  # before any work: the path given is at fault
                raise ConfigError(f"--json: {os_error_line(exc)}") from None
            if final:
                raise
            failed.append(exc)
            print(f"warning: {os_error_line(exc)}; the figures so far are not on disk", file=sys.stderr)

    return keep

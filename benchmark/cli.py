"""``python -m benchmark`` / ``nerve-bench``: one sub-command per module in benchmark/commands.

Each command module defines ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int`` and
keeps heavy imports (torch, lightning) inside ``run`` so ``--help`` stays fast.

The exit status is what a scheduler or a ``make benchmark && upload`` script acts on (README
"Exit codes"): 0 everything done; 1 a run failed or a runtime error (full disk, read-only
directory, a failed DDP rank); 2 bad input (one line naming the file); 3 the leaderboard is
incomplete because runs held by other processes are missing; 130 Ctrl-C; 143 SIGTERM; 138 SIGUSR1
under SLURM (the job was requeued); 141 the reader of the output went away (``| head``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import select
import signal
import subprocess
import sys
from typing import Any

from benchmark.core import stop
from benchmark.core.files import os_error_line

# Order here is the order in --help.
COMMANDS: tuple[str, ...] = (
    "synth",
    "data",
    "models",
    "fit",
    "evaluate",
    "run",
    "report",
    "predict",
    "export",
    "speed",
    "doctor",
)
COMMANDS += ("folds", "import", "nnunet")  # outside methods on the board (benchmark/external/)
_MODULES = {"import": "import_"}  # a command named like a Python keyword lives in <name>_.py
INTERRUPTED = "finished runs are kept; re-run the same command to resume"
# Commands that train nothing: their outputs are replaced atomically, so there is nothing to resume.
INTERRUPTED_OTHER = "no file was left half-written; re-run the same command"
TRAINING_COMMANDS = ("run", "fit", "nnunet")
# 128 + the signal number, as a shell reports a command killed by it.
EXIT_SIGINT, EXIT_SIGTERM, EXIT_REQUEUED = 130, 143, 128 + int(signal.SIGUSR1)
EXIT_SIGPIPE = 128 + int(signal.SIGPIPE)
DESCRIPTION = (
    "nerve-bench: train, score and rank segmentation models on the Kaggle ultrasound nerve data, every "
    "model the same way, on subject-grouped folds (README.md)"
)


class Terminated(BaseException):
    """SIGTERM (SLURM, Kubernetes, ``docker stop``), raised in the main thread so the command unwinds
    as on Ctrl-C: run locks are released and the run in flight keeps its last checkpoint. Not an
    ``Exception``: a run's failure handler must not mistake it for that run's own failure."""


class Requeued(Terminated):
    """SIGUSR1 under SLURM (``#SBATCH --signal=USR1@120``): the job was requeued, this one stops."""

    def __init__(self, job: str, outcome: str) -> None:
        super().__init__(f"SLURM job {job} {outcome}")


_MAIN_PID = os.getpid()
_terminating = False


def _first_signal(signum: int) -> bool:
    """True in the main process on the first interrupt; a forked loader worker dies quietly instead
    (the main process reports), and a second signal must not break the clean-up of the first."""
    global _terminating
    if os.getpid() != _MAIN_PID:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return False
    first, _terminating = not _terminating, True
    return first


def _on_sigterm(signum: int, frame: Any) -> None:
    if _first_signal(signum):
        raise stop.request(Terminated())  # raised again at a safe point if a finalizer drops it


def slurm_job() -> str | None:
    """This SLURM job's id as ``scontrol requeue`` takes it (array jobs: ``<array id>_<task id>``)."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")


def _on_requeue_signal(signum: int, frame: Any) -> None:
    """Requeue the job (from rank 0 only), then stop as on SIGTERM; the requeued job resumes. It
    replaces Lightning's own SIGUSR1 handler, which is only installed while a ``fit`` runs: between
    runs the signal's default action would end the job with no requeue."""
    if not _first_signal(signum):
        return
    job = slurm_job() or "?"
    if os.environ.get("SLURM_PROCID", "0") != "0":
        raise stop.request(Requeued(job, "is requeued by rank 0"))
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
        outcome = (
            "requeued" if done.returncode == 0 else f"NOT requeued (scontrol: {done.stderr.strip()[:120]})"
        )
    except (OSError, subprocess.SubprocessError) as exc:
        outcome = f"NOT requeued ({exc})"
    raise stop.request(Requeued(job, outcome))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nerve-bench", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"benchmark.commands.{_MODULES.get(name, name)}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    from datamodules.errors import NerveBenchError
    from models.registry import ModelError

    return (NerveBenchError, ModelError)


def offline_defaults() -> None:
    """Nothing leaves the machine unless the user asks (README "Network"), set before any library
    reads it: no albumentations version check, the Hugging Face hub from its cache only, no
    onnxruntime telemetry (it queues device id, OS, CPU and memory in ~/.cache/Microsoft for upload),
    and W&B offline without telemetry unless a key or a mode is given (:func:`wandb_env`)."""
    from benchmark.training.logger import wandb_env

    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    wandb_env()


def interrupt_code(exc: BaseException) -> int | None:
    """130 (Ctrl-C) or 143 (SIGTERM) when ``exc`` is, or was raised while handling, an interrupt.

    Lightning turns a KeyboardInterrupt inside ``fit`` into ``sys.exit(1)`` (its ``SystemExit``
    carries the KeyboardInterrupt as ``__context__``), and its own SIGTERM handling raises
    ``SIGTERMException``, a ``SystemExit`` too.
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return EXIT_SIGINT
        if isinstance(seen, Requeued):
            return EXIT_REQUEUED
        if isinstance(seen, Terminated) or type(seen).__name__ == "SIGTERMException":
            return EXIT_SIGTERM
        seen = seen.__context__
    return None


def _interrupted_by(exc: BaseException, code: int) -> str:
    seen: BaseException | None = exc
    while seen is not None and not isinstance(seen, Requeued):
        seen = seen.__context__
    if seen is not None:
        return f" by SIGUSR1 ({seen})"
    return " by SIGTERM" if code == EXIT_SIGTERM else ""


def _run(args: argparse.Namespace) -> int:
    from benchmark.ddp_stop import GridStopped, end_job

    try:
        code = int(args._run(args) or 0)
        if sys.stdout is not None:  # None when started with stdout closed (`>&-`)
            sys.stdout.flush()  # a closed pipe shows here, not as a second error at interpreter exit
        return code
    except GridStopped as exc:  # a DDP rank failed: the job ends here, the finished runs stay
        print(f"error: {exc}", file=sys.stderr, flush=True)
        end_job()
        return 1
    except _user_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError as exc:
        if not _stdout_reader_gone():  # another pipe (a socket, a child's): a runtime failure
            print(f"error: {os_error_line(exc)}", file=sys.stderr)
            return 1
        # `run --dry-run | head -1`: the reader has what it wanted; no second error at exit.
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
        return EXIT_SIGPIPE
    except OSError as exc:  # read-only or full disk, a directory where a file goes: a runtime failure
        print(f"error: {os_error_line(exc)}", file=sys.stderr)
        return 1


def _stdout_reader_gone() -> bool:
    """Whether standard output is a pipe whose reading end was closed (poll reports an error)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no stdout, no fd, or no poll on this platform
        return False


def main(argv: list[str] | None = None) -> int:
    stop.clear()  # a stop an earlier command of this process kept (a signal in its clean-up) is not ours
    offline_defaults()
    args = build_parser().parse_args(argv)
    handlers: dict[int, Any] = {signal.SIGTERM: _on_sigterm}
    if os.environ.get("SLURM_JOB_ID"):  # README "Exit codes": #SBATCH --signal=USR1@120 requeues
        handlers[signal.SIGUSR1] = _on_requeue_signal
    previous = stop.install(handlers)
    try:
        status = _run(args)
        stop.raise_pending()  # a signal whose exception a finalizer dropped: the status still says so
        return status
    except (KeyboardInterrupt, Terminated, SystemExit) as exc:
        code = interrupt_code(exc)
        if code is None:
            raise
        what = INTERRUPTED if args.command in TRAINING_COMMANDS else INTERRUPTED_OTHER
        print(f"interrupted{_interrupted_by(exc, code)}: {what}", file=sys.stderr, flush=True)
        return code
    finally:
        global _terminating
        stop.clear()
        _terminating = False
        stop.install(previous)


if __name__ == "__main__":
    sys.exit(main())

"""The exit status tells the truth: SIGTERM is 143 and Ctrl-C 130, each with its line, and the run in
flight resumes from its checkpoint; runs left to a process that did not finish them are named and
make the exit status 3 (or are taken over when their holder is gone). Real ``benchmark run``
subprocesses wait on events (a file appearing) with bounds of minutes, never on fixed sleeps."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import benchmark.reporting.report as report_module
from benchmark import grid_configs, runner
from benchmark.cli import EXIT_SIGINT, EXIT_SIGTERM, interrupt_code, main
from benchmark.core import lock
from benchmark.core.config import load_benchmark_config
from benchmark.core.overrides import apply_benchmark_overrides
from tests.benchmark.summaries import summary_fit
from tests.benchmark.test_runner import SMOKE, fake_fit

ROOT = Path(__file__).resolve().parents[2]
BOUND_S = 600  # minutes, not seconds: the suite runs on busy 2-core machines

# `benchmark run` whose training holds at the start of epoch NB_HOLD_EPOCH (the previous epoch's
# last.ckpt is on disk) until the test's signal arrives; every epoch start is logged.
HOLDING = """
import os, signal, sys, time
from pathlib import Path
from lightning.pytorch.callbacks import Callback
import benchmark.pipeline as pipeline
from benchmark.cli import main

# Ctrl-C as at a terminal. A test session started in the background by a non-interactive shell
# (`make test &`) ignores SIGINT, every child inherits that, and Python then installs no
# KeyboardInterrupt handler: the signal would vanish and the run hold for ten minutes.
signal.signal(signal.SIGINT, signal.default_int_handler)

log, hold = Path(os.environ["NB_EPOCH_LOG"]), int(os.environ["NB_HOLD_EPOCH"])
real_fit = pipeline.fit


class Hold(Callback):
    def on_train_epoch_start(self, trainer, module):
        with open(log, "a") as fh:
            fh.write(f"{trainer.current_epoch}\\n")
        if trainer.current_epoch == hold:
            (log.parent / "holding").write_text(str(os.getpid()))
            for _ in range(6000):  # until the signal; ten minutes at most
                time.sleep(0.1)


def fit(cfg, data_dir, out_dir, callbacks=None, preloaded=None):
    return real_fit(cfg, data_dir, out_dir, callbacks=[*(callbacks or []), Hold()], preloaded=preloaded)


pipeline.fit = fit
sys.exit(main(sys.argv[1:]))
"""


def _wait(done, what: str, timeout_s: float = BOUND_S) -> None:
    end = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.1)


def _start(tmp_path: Path, data: Path, hold: int) -> subprocess.Popen:
    script = tmp_path / "holding.py"
    script.write_text(HOLDING)
    (tmp_path / "holding").unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NB_EPOCH_LOG": str(tmp_path / "epochs.log"),
           "NB_HOLD_EPOCH": str(hold), "OMP_NUM_THREADS": "1"}  # fmt: skip
    args = ["run", "--config", str(SMOKE), "--data-dir", str(data), "--results-dir", str(tmp_path / "res"),
            "--models", "empty,unet", "--set", "epochs=3", "--no-report", "--min-free-gb", "0"]  # fmt: skip
    return subprocess.Popen([sys.executable, str(script), *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def _interrupt(tmp_path: Path, data: Path, hold: int, sig: int) -> tuple[int, str, str]:
    proc = _start(tmp_path, data, hold)
    try:
        _wait(lambda: (tmp_path / "holding").exists() or proc.poll() is not None, f"epoch {hold}")
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=BOUND_S)
    finally:
        proc.kill()
    return proc.returncode, out, err


@pytest.mark.slow
def test_sigterm_is_143_ctrl_c_is_130_and_the_run_in_flight_resumes(tmp_path, synthetic_dir):
    bench = apply_benchmark_overrides(load_benchmark_config(SMOKE), {"epochs": "3"})
    grid = grid_configs.build_grid(bench, models=["empty", "unet"])
    empty, unet = (tmp_path / "res" / "runs" / c.run_name() for c in grid)
    last = unet / "checkpoints" / "last.ckpt"
    # SIGTERM (SLURM, Kubernetes, docker stop) while epoch 1 trains: it used to exit 0, silently.
    code, out, err = _interrupt(tmp_path, synthetic_dir, 1, signal.SIGTERM)
    assert code == EXIT_SIGTERM, err[-3000:]
    assert "interrupted by SIGTERM: finished runs are kept; re-run the same command to resume" in err
    assert f"interrupted {unet.name}: re-running the same command resumes from {last}" in out
    assert (empty / "summary.json").is_file() and last.is_file() and not (unet / "summary.json").exists()
    assert not list((tmp_path / "res").rglob(lock.LOCK_NAME))  # the interrupted run's lock is released
    # Ctrl-C while epoch 2 trains: Lightning's own handler used to make it exit 1, with no line.
    code, out, err = _interrupt(tmp_path, synthetic_dir, 2, signal.SIGINT)
    assert code == EXIT_SIGINT, err[-3000:]
    assert "interrupted: finished runs are kept; re-run the same command to resume" in err
    assert f"interrupted {unet.name}: re-running the same command resumes from {last}" in out
    proc = _start(tmp_path, synthetic_dir, -1)
    out, err = proc.communicate(timeout=BOUND_S)
    assert proc.returncode == 0, err[-3000:]
    assert "1/2 runs already complete (skipped)" in out  # empty was not run again
    # Each run resumed where the last finished epoch left it: only the interrupted epochs ran twice.
    assert (tmp_path / "epochs.log").read_text().split() == ["0", "1", "1", "2", "2"]
    assert json.loads((unet / "summary.json").read_text())["history"]["epoch"] == [0, 1, 2]


def test_interrupt_code_sees_through_lightnings_sys_exit():
    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            sys.exit(1)  # what Lightning's fit does on Ctrl-C
    except SystemExit as exc:
        assert interrupt_code(exc) == EXIT_SIGINT
    assert interrupt_code(SystemExit(0)) is None and interrupt_code(SystemExit(2)) is None


def test_slurms_requeue_signal_requeues_the_job_and_stops_like_sigterm(tmp_path, capsys, monkeypatch):
    """`#SBATCH --signal=USR1@120`: SIGUSR1 arrives while a run is in flight (here, in its fit); the job
    is requeued through scontrol and the command stops with 138; the requeued job resumes."""
    import benchmark.pipeline as pipeline

    scontrol = tmp_path / "bin" / "scontrol"
    scontrol.parent.mkdir()
    scontrol.write_text(f'#!/bin/sh\necho "$@" > {tmp_path / "scontrol.args"}\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{scontrol.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_PROCID", raising=False)

    def signalled(cfg, data_dir, out_dir):
        os.kill(os.getpid(), signal.SIGUSR1)
        raise AssertionError("the signal did not stop the run")

    monkeypatch.setattr(pipeline, "fit", signalled)
    # No --data-dir: the default data/ultrasound-nerve-segmentation is relative to the working
    # directory, which must not be a checkout holding (part of) the Kaggle data, so the smoke
    # config's synthetic fallback runs whatever the repository holds.
    monkeypatch.chdir(tmp_path)
    args = ["run", "--config", str(SMOKE), "--results-dir", str(tmp_path / "res"), "--models", "empty",
            "--no-report", "--min-free-gb", "0"]  # fmt: skip
    assert main(args) == 138
    assert (tmp_path / "scontrol.args").read_text().split() == ["requeue", "4242"]
    err = capsys.readouterr().err
    assert "interrupted by SIGUSR1 (SLURM job 4242 requeued): finished runs are kept" in err
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # restored when the command ends


def _holder() -> subprocess.Popen:
    """A live process to hold a lock (it never trains): another `benchmark run` on the same results."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])


def _hold(run_dir: Path, pid: int) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    now = time.time()
    info = {"host": socket.gethostname(), "pid": pid, "start": now, "heartbeat": now, "token": "other"}
    (run_dir / lock.LOCK_NAME).write_text(json.dumps(info))


def test_a_run_left_to_another_process_is_named_and_the_exit_status_is_3(
    tmp_path, synthetic_dir, capsys, monkeypatch
):
    import benchmark.pipeline as pipeline
    from datamodules.kaggle import check_dataset

    calls: list[str] = []
    monkeypatch.setattr(pipeline, "fit", summary_fit(check_dataset(synthetic_dir)["content_hash"], calls))
    grid = grid_configs.build_grid(load_benchmark_config(SMOKE), models=["unet", "empty"])
    held = tmp_path / "res" / "runs" / grid[0].run_name()
    args = ["run", "--config", str(SMOKE), "--data-dir", str(synthetic_dir), "--results-dir",
            str(tmp_path / "res"), "--models", "unet,empty", "--no-report", "--min-free-gb", "0"]  # fmt: skip
    holder = _holder()
    try:
        _hold(held, holder.pid)
        assert main(args) == 3  # it used to exit 0 with unet missing from the board
        out = capsys.readouterr().out
        assert calls == [grid[1].run_name()]
        holder_id = f"{socket.gethostname()}:{holder.pid}"
        assert (
            "incomplete: 1 run(s) missing from the leaderboard, skipped because another process held" in out
        )
        assert f"held them: {grid[0].run_name()} (held by {holder_id}" in out
        assert "Re-run the same command to complete them" in out
    finally:
        holder.kill()
        holder.wait()
    assert main(args) == 0  # the holder is gone: its stale lock is taken over and the run trained
    assert calls == [grid[1].run_name(), grid[0].run_name()]


def test_a_run_the_board_leaves_out_makes_the_status_1(tmp_path, synthetic_dir, capsys, monkeypatch):
    """A complete run whose summary is damaged (a Dice of 5.0) is left out of the board with a warning:
    `run` skipped it as complete and exited 0, as if the board held every run of the grid. Not 3 (run
    it again): the next run skips it again."""
    import benchmark.pipeline as pipeline
    from datamodules.kaggle import check_dataset

    monkeypatch.setattr(pipeline, "fit", summary_fit(check_dataset(synthetic_dir)["content_hash"], []))
    grid = grid_configs.build_grid(load_benchmark_config(SMOKE), models=["unet", "empty"])
    args = ["run", "--config", str(SMOKE), "--data-dir", str(synthetic_dir), "--results-dir",
            str(tmp_path / "res"), "--models", "unet,empty", "--min-free-gb", "0"]  # fmt: skip
    assert main(args) == 0
    path, other = (tmp_path / "res" / "runs" / c.run_name() / "summary.json" for c in grid)
    _dice_of_5(path)
    capsys.readouterr()
    assert main(args) == 1 and main(args) == 1  # the same again: a re-run does not repair it
    out, err = capsys.readouterr()
    assert f"warning: {path}: per_image.dice should be" in err
    assert out.splitlines()[-1].startswith("error: 1 run(s) left out of the leaderboard")
    assert "but leaves one that parses with wrong contents: repair or delete it" in out
    kept = other.read_text()
    _dice_of_5(other)  # every run damaged: no board at all, the same status
    assert main(args) == 1
    assert "no complete run summaries to build a leaderboard from; 2 damaged" in capsys.readouterr().out
    assert main(["report", "--results", str(tmp_path / "res")]) == 2
    other.write_text(kept)
    path.write_text(kept[:40])  # cut short, no longer JSON: the next run scores it again, as it says
    assert main(args) == 0 and json.loads(path.read_text())["run"] == grid[0].run_name()
    path.unlink()  # scored again from what the fake fit left; the disk then fills while the board is written
    monkeypatch.setattr(report_module, "build_report", _disk_full)
    assert main(args) == 1  # exit 0 said "the leaderboard was rebuilt"
    assert f"no leaderboard: {tmp_path}: No space left on device" in capsys.readouterr().out


def _dice_of_5(path: Path) -> None:
    summary = json.loads(path.read_text())
    summary["per_image"]["dice"] = [5.0] * len(summary["per_image"]["dice"])
    path.write_text(json.dumps(summary))


def _disk_full(results_dir, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(results_dir.parent))


def test_a_held_run_finished_while_the_board_is_built_still_makes_the_status_3(
    tmp_path, synthetic_dir, monkeypatch
):
    """The status describes the board this command wrote: the run was not on it."""
    import benchmark.commands.run as run_command
    import benchmark.pipeline as pipeline
    from datamodules.kaggle import check_dataset

    finish, calls = summary_fit(check_dataset(synthetic_dir)["content_hash"], []), []
    monkeypatch.setattr(pipeline, "fit", finish)
    grid = grid_configs.build_grid(load_benchmark_config(SMOKE), models=["unet", "empty"])
    held = tmp_path / "res" / "runs" / grid[0].run_name()

    def report(bench, results_dir, missing, own):  # the holder finishes its run while this board is built
        calls.append("report")
        finish(grid[0], synthetic_dir, held)
        return 0

    monkeypatch.setattr(run_command, "_report", report)
    args = ["run", "--config", str(SMOKE), "--data-dir", str(synthetic_dir), "--results-dir",
            str(tmp_path / "res"), "--models", "unet,empty", "--min-free-gb", "0"]  # fmt: skip
    holder = _holder()
    try:
        _hold(held, holder.pid)
        assert main(args) == 3 and calls == ["report"]
    finally:
        holder.kill()
        holder.wait()


def test_a_holder_that_dies_during_the_grid_leaves_its_run_to_be_taken_over(tmp_path, capsys):
    """Process A skips a run held by B; B is killed while A trains; A takes the run over at the end."""
    grid = grid_configs.build_grid(load_benchmark_config(SMOKE), models=["unet", "empty"])
    holder, calls = _holder(), []
    _hold(tmp_path / "runs" / grid[0].run_name(), holder.pid)
    train = fake_fit(calls)

    def fit(cfg, data_dir, out_dir):
        if cfg.model == "empty":
            holder.kill()  # B dies while A trains its second run
            holder.wait()
        return train(cfg, data_dir, out_dir)

    outcomes = runner.run_grid(grid, tmp_path, tmp_path, fit=fit)
    assert [o.status for o in outcomes] == ["trained", "trained"] and calls == [
        grid[1].run_name(),
        grid[0].run_name(),
    ]
    out = capsys.readouterr().out
    assert f"[1/2] skipped {grid[0].run_name()}: held by" in out
    assert f"[retry] {grid[0].run_name()}: its holder stopped without finishing it; taking it over" in out
    assert runner.missing_runs(grid, outcomes, tmp_path) == []


@pytest.mark.parametrize("data", [False, True])
def test_a_reader_that_closed_its_pipe_ends_the_command_quietly_with_141(data: bool, synthetic_dir, tmp_path):
    """`run --dry-run | head -1`: the reader is gone before the first line (with and without the
    fallback's flushed line), so the command stops as a shell reports SIGPIPE, with nothing on stderr
    (it said "error: Broken pipe" and exited 1)."""
    read, write = os.pipe()
    os.close(read)
    args = ["run", "--config", str(SMOKE), "--dry-run", "--results-dir", str(tmp_path / "r")]
    args += ["--data-dir", str(synthetic_dir)] if data else []
    try:
        command = [sys.executable, "-m", "benchmark", *args]
        done = subprocess.run(command, stdout=write, stderr=subprocess.PIPE, text=True, timeout=600)
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (141, "")


def test_a_broken_pipe_elsewhere_is_a_runtime_error_and_a_closed_stdout_is_no_error(capsys):
    """Only standard output's own reader going away is the quiet 141: a broken socket or child pipe
    is one error line and 1; a command started with stdout closed (`>&-`) still ends 0."""
    from argparse import Namespace

    from benchmark import cli

    def broken(args):
        raise BrokenPipeError(32, "Broken pipe", "worker.sock")

    assert cli._run(Namespace(_run=broken)) == 1
    assert capsys.readouterr().err == "error: worker.sock: Broken pipe\n"
    command = [sys.executable, "-m", "benchmark", "run", "--config", str(SMOKE), "--dry-run"]
    done = subprocess.run(
        command, preexec_fn=lambda: os.close(1), stderr=subprocess.PIPE, text=True, timeout=600
    )
    assert (done.returncode, done.stderr) == (0, "")


def test_an_interrupted_fit_names_what_resumes_it(synthetic_dir, tmp_path, capsys, monkeypatch):
    """`fit` said only the generic line; like `run` it now names the run and its checkpoint."""
    from benchmark import pipeline

    def interrupted(cfg, data_dir, out):
        (out / "checkpoints").mkdir(parents=True)
        (out / "checkpoints" / "last.ckpt").write_bytes(b"an epoch's state")
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "fit", interrupted)
    out = tmp_path / "run"
    args = ["fit", "--model", "empty", "--data-dir", str(synthetic_dir), "--out", str(out), "--n-folds", "3"]
    assert main(args) == 130
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("interrupted empty__f0__s0__") and err[0].endswith(
        f": re-running the same command resumes from {out / 'checkpoints' / 'last.ckpt'}"
    )


def test_an_interrupted_command_that_trains_nothing_does_not_talk_of_runs(tmp_path, capsys, monkeypatch):
    """`report` interrupted said "finished runs are kept; ... to resume", which it has none of."""
    from benchmark.commands import report

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "run", interrupted)
    assert main(["report", "--results", str(tmp_path)]) == 130
    assert capsys.readouterr().err == "interrupted: no file was left half-written; re-run the same command\n"


@pytest.mark.parametrize(
    ("files", "then"),
    [((), "starts it again (no epoch had finished)"), (("last.ckpt",), "resumes from {d}/last.ckpt"),
     (("best.ckpt", "trained.json"), "scores it again from {d}/best.ckpt (if the record still matches)")],
)  # fmt: skip
def test_an_interrupt_says_what_the_next_invocation_does_with_the_run(tmp_path, files, then):
    from benchmark.core.config import TrainConfig

    cfg = TrainConfig(model="empty")
    ckpts = tmp_path / cfg.run_name() / "checkpoints"
    ckpts.mkdir(parents=True)
    for name in files:
        (ckpts / name).write_text("x")
    line = runner.interrupted_line(cfg, tmp_path / cfg.run_name())
    assert line == f"interrupted {cfg.run_name()}: re-running the same command {then.format(d=ckpts)}"

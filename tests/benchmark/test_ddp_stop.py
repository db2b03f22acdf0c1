"""A run that fails on one DDP rank ends the job cleanly: one line, exit 1, finished runs kept, no
rank left waiting in a collective (they used to wait for the 30-minute gloo/NCCL timeout).

The end-to-end test is a real 2-process gloo DDP ``benchmark run`` on CPU with Lightning's own
launcher (``devices=2``: the command is re-run for rank 1, exactly as on a GPU box)."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark import ddp_stop, grid_configs, runner
from benchmark.core import lock
from benchmark.core.config import load_benchmark_config
from benchmark.core.overrides import apply_benchmark_overrides
from tests.benchmark.test_runner import SMOKE, fake_fit

ROOT = Path(__file__).resolve().parents[2]
BOUND_S = 600  # the broken behaviour is a hang: any bound of minutes tells them apart

# `benchmark run` in which the run of seed NB_FAIL_SEED raises on DDP rank NB_FAIL_RANK at its first
# training step; Lightning re-runs this very script for rank 1.
FAILING = """
import os, sys
import benchmark.ddp_stop
from benchmark.cli import main
from benchmark.training.module import SegModule

# the failed rank waits this long for rank 0's watcher (a thread) to end the job: minutes, as every
# wait in the suite, so a starved watcher on a loaded machine does not make rank 1 stop alone
benchmark.ddp_stop.WAIT_S = 600.0

rank, seed = int(os.environ["NB_FAIL_RANK"]), int(os.environ["NB_FAIL_SEED"])
real = SegModule.training_step


def training_step(self, batch, batch_idx):
    if self.trainer.global_rank == rank and self.cfg.seed == seed:
        raise RuntimeError(f"injected failure on rank {rank}")
    return real(self, batch, batch_idx)


SegModule.training_step = training_step
sys.exit(main(sys.argv[1:]))
"""
ARGS = ["--models", "unet", "--seeds", "0,1,2", "--set", "devices=2"]


def _job_processes(script: Path) -> list[int]:
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if str(script).encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.slow
def test_a_failure_on_rank_1_ends_the_job_with_one_line_and_keeps_finished_runs(tmp_path, synthetic_dir):
    script = tmp_path / "failing.py"
    script.write_text(FAILING)
    results = tmp_path / "res"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "NB_FAIL_RANK": "1",
        "NB_FAIL_SEED": "1",
        "OMP_NUM_THREADS": "1",
    }
    cmd = [sys.executable, str(script), "run", "--config", str(SMOKE), "--data-dir", str(synthetic_dir),
           "--results-dir", str(results), "--no-report", "--min-free-gb", "0", *ARGS]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=BOUND_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the DDP job hung after one rank failed:\n{out[-2000:]}\n{err[-2000:]}")
    bench = apply_benchmark_overrides(load_benchmark_config(SMOKE), {"devices": "2"})
    grid = grid_configs.build_grid(bench, seeds=[0, 1, 2])
    runs = [results / "runs" / c.run_name() for c in grid]
    assert proc.returncode == 1, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err[-3000:]
    assert errors[0].startswith(
        f"error: {runs[1].name} failed on DDP rank 1 of 2: RuntimeError: injected failure"
    )
    assert "finished runs are kept, re-run the same command to resume" in errors[0]
    assert (runs[0] / "summary.json").is_file()  # finished before the failure: kept
    assert "injected failure on rank 1" in (runs[1] / "error.txt").read_text()  # rank 1's own traceback
    assert not (runs[1] / "summary.json").exists() and not runs[2].exists()  # the grid stopped there
    assert not list(results.rglob(lock.LOCK_NAME)) and not list(results.rglob(f"{ddp_stop.NOTE_PREFIX}*"))
    assert _job_processes(script) == []  # no rank left behind


def test_a_failure_on_rank_0_stops_the_grid_and_names_run_and_rank(tmp_path, monkeypatch):
    """In-process: rank 0 (this process) fails its second run of a 2-device grid."""
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    grid = grid_configs.build_grid(load_benchmark_config(SMOKE), models=["unet", "sk_unet", "empty"])
    grid = [dataclasses.replace(c, devices=2) for c in grid]
    calls: list[str] = []
    with pytest.raises(ddp_stop.GridStopped) as stopped:
        runner.run_grid(grid, tmp_path, tmp_path, fit=fake_fit(calls, fail={"sk_unet"}))
    message = str(stopped.value)
    error_txt = tmp_path / "runs" / grid[1].run_name() / "error.txt"
    assert message.startswith(
        f"{grid[1].run_name()} failed on DDP rank 0 of 2: RuntimeError: sk_unet exploded"
    )
    assert f"(traceback in {error_txt})" in message and "\n" not in message
    assert calls == [grid[0].run_name(), grid[1].run_name()]  # empty never started
    assert (tmp_path / "runs" / grid[0].run_name() / "summary.json").is_file()
    assert "sk_unet exploded" in error_txt.read_text()
    assert not list(tmp_path.rglob(lock.LOCK_NAME))


def test_a_failed_follower_stops_by_itself_when_rank_0_does_not(tmp_path, monkeypatch):
    """A rank > 0 leaves its note for rank 0 and waits; with no rank 0 to act, it gives up in time."""
    monkeypatch.setattr(ddp_stop, "WAIT_S", 1.0)
    monkeypatch.setenv(lock.OWNER_ENV, "elsewhere:1")
    stopped = ddp_stop.follower_failed(tmp_path, 1, "run x failed on DDP rank 1 of 2: boom")
    assert isinstance(stopped, ddp_stop.GridStopped) and "boom" in str(stopped)
    assert not list(tmp_path.glob(f"{ddp_stop.NOTE_PREFIX}*"))
    # rank 0's view: a note of its own job is found, one of another job or an older one is not
    note = ddp_stop.write_note(tmp_path, 1, "the message")
    assert [n["message"] for n in ddp_stop.pending_notes(tmp_path, 0.0)] == ["the message"]
    monkeypatch.setenv(lock.OWNER_ENV, "another:2")
    assert ddp_stop.pending_notes(tmp_path, 0.0) == []
    note.unlink()

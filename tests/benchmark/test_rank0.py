"""Rank 0's record of a DDP grid: ranks that srun or torchrun start beside it make its decisions."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from benchmark import grid_configs, runner
from benchmark.core import lock, rank0
from benchmark.core.config import load_benchmark_config
from datamodules.errors import NerveBenchError
from tests.benchmark.test_lock import ROOT, _write_lock
from tests.benchmark.test_runner import SMOKE, fake_fit

LAUNCH = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "SLURM_JOB_ID", "SLURM_STEP_ID",
          "SLURM_RESTART_COUNT", "SLURM_NTASKS", "SLURM_NTASKS_PER_NODE", "SLURM_JOB_NAME",
          "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "MASTER_ADDR", "MASTER_PORT",
          lock.OWNER_ENV, rank0.GRID_ENV)  # fmt: skip


@pytest.fixture
def srun(monkeypatch):
    """This process as task 1 of an srun step: nothing inherited from rank 0. Each variable is set,
    then removed, so that teardown removes what the code under test writes to os.environ too."""
    for var in LAUNCH:
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    monkeypatch.setattr(rank0, "_ADOPTED", [])
    step = {"SLURM_JOB_ID": "77", "SLURM_STEP_ID": "0", "SLURM_PROCID": "1", "SLURM_NTASKS": "2",
            "SLURM_NTASKS_PER_NODE": "2", "SLURM_JOB_NAME": "bench"}  # fmt: skip
    for var, value in step.items():
        monkeypatch.setenv(var, value)
    return monkeypatch


def test_launch_keys_name_one_launch(srun):
    assert rank0.launch_key() == "slurm-77-0-0"
    srun.setenv("SLURM_RESTART_COUNT", "2")  # a requeued job is another launch
    assert rank0.launch_key() == "slurm-77-0-2"
    srun.setenv("SLURM_JOB_NAME", "interactive")  # Lightning starts the ranks: its own names them
    assert rank0.launch_key() is None
    srun.delenv("SLURM_NTASKS")
    srun.setenv("TORCHELASTIC_RUN_ID", "job5")
    srun.setenv("MASTER_ADDR", "node/7")
    srun.setenv("MASTER_PORT", "29500")
    assert rank0.launch_key() == "elastic-job5-node_7-29500-0"  # a file name


def test_an_srun_rank_trains_exactly_the_runs_its_rank0_holds(srun, tmp_path, capsys):
    """It trained every open run before: one that rank 0 skipped (held by another job) it trained
    alone, in one process group with rank 0's next run."""
    grid = grid_configs.build_grid(
        load_benchmark_config(SMOKE), models=["unet", "empty", "sk_unet"], folds=[0]
    )
    runs, owner = tmp_path / "runs", lock.owner_id()  # this test process also plays rank 0
    record = rank0.publish(tmp_path, owner)
    srun.delenv(rank0.GRID_ENV)  # rank 0's process set it, not this one's
    assert record.path == tmp_path / ".grid" / "slurm-77-0-0.json"
    _write_lock(runs / grid[2].run_name(), "other-host", 1, time.time())
    calls, train = [], None

    def fit(cfg, data_dir, out_dir):
        rank0.withdraw(record)  # meanwhile rank 0 ends its loop without taking run 2 over
        return train(cfg, data_dir, out_dir)

    train = fake_fit(calls)
    with lock.claim(runs / grid[1].run_name()):
        outcomes = runner.run_grid(grid, tmp_path, tmp_path, fit=fit)
    assert [o.status for o in outcomes] == ["skipped", "trained", "skipped"] and calls == [grid[1].run_name()]
    assert capsys.readouterr().out == ""  # ranks > 0 print nothing


@pytest.mark.parametrize("launch", ["slurm-77-0-0", "elastic-job5-node0-29500-0"])
def test_a_record_of_an_earlier_launch_is_not_rank0s(srun, tmp_path, launch):
    """A name can be an earlier launch's: torchrun relaunched with the same --rdzv-id, or two
    `benchmark run` in one srun step. Its rank 0 killed (its lock still on a run: this rank trained
    that run alone), ended (this rank skipped every run while the new rank 0 waited in a collective),
    or still scoring its last run (it began long before this rank)."""
    srun.setenv(rank0.GRID_ENV, launch)
    path = rank0.record_path(tmp_path, launch)
    path.parent.mkdir()
    now = time.time()
    for record in (
        {"owner": "killed:1", "start": now - 600, "beat": now - 30},
        {"owner": "ended:1", "start": now - 5, "beat": now - 2, "ended": True},
        {"owner": "scoring:1", "start": now - rank0.SKEW_S - 60, "beat": now},
    ):
        path.write_text(json.dumps(record))
        with pytest.raises(NerveBenchError, match=f"{launch}.json: rank 0 of this launch wrote no record"):
            rank0.wait_for_owner(tmp_path, wait_s=0.05, poll_s=0.01, born=now - 1)
    now = time.time()
    path.write_text(json.dumps({"owner": "node0:12", "start": now - 5, "beat": now, "ended": False}))
    assert rank0.follower_owner(tmp_path) == "node0:12"
    assert rank0.ended(tmp_path, "node0:12") is False
    with pytest.raises(rank0.OwnerChanged) as changed:  # node0:13 was not this launch's rank 0
        rank0.ended(tmp_path, "node0:13")
    assert changed.value.owner == "node0:12"
    path.write_text(json.dumps({"owner": "node0:12", "start": now - 5, "beat": now, "ended": True}))
    assert rank0.ended(tmp_path, "node0:12") is True
    path.unlink()
    assert rank0.ended(tmp_path, "node0:12") is True  # gone: nothing left to wait for


@pytest.mark.parametrize("launch", ["slurm-77-0-0", "elastic-job5-node0-29500-0"])
def test_a_rank_that_comes_after_its_rank0_ended_skips_its_runs(srun, tmp_path, launch):
    """This rank listed a run that another job finished before rank 0 looked: rank 0 found nothing to
    train and ended its record at once, which this rank ignored as an earlier launch's; it waited
    the full 30 minutes for a rank 0 and then failed the job."""
    grid = grid_configs.build_grid(load_benchmark_config(SMOKE), models=["unet"], folds=[0])
    srun.setattr(rank0, "process_start", lambda: time.time() - 60)  # this rank began before rank 0's end
    srun.setenv(rank0.GRID_ENV, launch)
    rank0.withdraw(rank0.publish(tmp_path, "node0:12"))  # rank 0's grid loop: nothing to do
    srun.setattr(rank0, "WAIT_S", 20.0)  # fails here, not after 30 minutes, if ignored
    calls: list[str] = []
    outcomes = runner.run_grid(grid, tmp_path, tmp_path, fit=fake_fit(calls))
    assert [o.status for o in outcomes] == ["skipped"] and calls == []


def test_a_rank_that_read_another_rank0_follows_this_launchs_once_it_writes(srun, tmp_path):
    """Should a rank read another launch's record (a clock far off between nodes), it took the change
    of owner for the end of the grid and skipped the run that rank 0 then trained alone (a hang until
    the NCCL timeout)."""
    grid = grid_configs.build_grid(load_benchmark_config(SMOKE), models=["unet"], folds=[0])
    record = rank0.publish(tmp_path, lock.owner_id())  # this launch's rank 0: this test process
    srun.setenv(lock.OWNER_ENV, "deadhost:1")  # what this rank read first: the killed launch's owner
    calls: list[str] = []
    try:
        with lock.claim(tmp_path / "runs" / grid[0].run_name()):
            outcomes = runner.run_grid(grid, tmp_path, tmp_path, fit=fake_fit(calls))
    finally:
        rank0.withdraw(record)
    assert [o.status for o in outcomes] == ["trained"] and calls == [grid[0].run_name()]
    assert os.environ[lock.OWNER_ENV] == lock.owner_id()
    with pytest.raises(rank0.GridStopped, match=r"slurm-77-0-0.json: names rank 0 .*, then other:2: two"):
        rank0.adopt(tmp_path, "other:2")  # a second change: two launches rewrite one record


def test_process_start_is_this_processs(tmp_path):
    """Read from /proc: a child began after this test's clock read, and before it imported rank0 (2.5 s
    later, which is the fallback's answer: a broken parse fell back to it unseen)."""
    if not os.path.exists("/proc/self/stat"):
        pytest.skip("no /proc: process_start is the import time here")
    before = time.time()
    script = "import time; time.sleep(2.5); from benchmark.core import rank0 as r; print(r.process_start(), "
    script += "r._IMPORTED)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    began, imported = map(float, out.stdout.split())
    assert before - 0.5 <= began < imported - 1.0, out.stderr[-2000:]


def test_no_beat_lands_after_the_end(srun, tmp_path):
    """withdraw marked the record ended while a beat could still be writing: the beat landed after it,
    the record read as live again, and the other ranks waited 5 minutes and stopped with exit 1."""
    srun.setattr(rank0, "BEAT_S", 0.0)  # beats back to back
    for _ in range(100):
        record = rank0.publish(tmp_path, "node0:12")
        time.sleep(0.002)
        rank0.withdraw(record)
        time.sleep(0.005)
        assert json.loads(record.path.read_text())["ended"] is True


def test_a_rank_stops_waiting_for_a_rank0_that_died(srun, tmp_path):
    """A rank 0 killed between runs (while it scored one alone) never marks its record ended: the
    other nodes' ranks waited for it forever. Its record is rewritten every BEAT_S while it lives."""
    from tests.benchmark.test_lock import _dead_pid

    record = rank0.publish(tmp_path, lock.owner_id())
    assert rank0.ended(tmp_path, lock.owner_id()) is False  # alive, beating
    body = json.loads(record.path.read_text())
    record.done.set()  # the beat stops, as in a killed process
    record.path.write_text(json.dumps({**body, "beat": time.time() - 3600}))  # another node's view
    with pytest.raises(
        rank0.GridStopped,
        match=r"rank 0 \(.*\) stopped without ending its grid: its record not rewritten for 36\d\d s",
    ):
        rank0.ended(tmp_path, lock.owner_id())
    dead = f"{socket.gethostname()}:{_dead_pid()}"  # on this host, in this pid space: asked directly
    record.path.write_text(json.dumps({**body, "owner": dead, "beat": time.time()}))
    with pytest.raises(rank0.GridStopped, match="its process is gone"):
        rank0.ended(tmp_path, dead)


def test_a_live_record_is_rewritten_and_marked_ended_at_the_end(srun, tmp_path, monkeypatch):
    monkeypatch.setattr(rank0, "BEAT_S", 0.05)
    record = rank0.publish(tmp_path, "node0:12")
    first = json.loads(record.path.read_text())["beat"]
    deadline = time.time() + 600  # a thread on a loaded machine: minutes, not one
    while json.loads(record.path.read_text())["beat"] == first and time.time() < deadline:
        time.sleep(0.02)
    assert json.loads(record.path.read_text())["beat"] > first  # beating
    rank0.withdraw(record)
    assert json.loads(record.path.read_text())["ended"] is True and record.done.is_set()


def test_two_srun_tasks_skip_the_run_another_job_holds_together(tmp_path):
    """Two processes as srun starts them (SLURM_PROCID 0 and 1, nothing inherited), gloo DDP: rank
    0 skips the run another job holds and rank 1 with it; rank 1 used to train it alone, and wait in
    its collective for a rank 0 that never came. Also: rank 1 waits for rank 0's synthetic data."""
    import os
    import random
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    results = tmp_path / "res"
    from benchmark import fallback
    from benchmark.core.overrides import apply_benchmark_overrides

    bench = fallback.synthetic_benchmark(load_benchmark_config(SMOKE), str(SMOKE))  # no --data-dir
    bench = apply_benchmark_overrides(bench, {"devices": 2})
    grid = grid_configs.build_grid(bench, models=["unet", "empty"], folds=[0])
    held = lock.claim(results / "runs" / grid[0].run_name())  # another job's, alive
    job = str(random.randrange(1000, 9000))
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH}
    port = _free_port()  # Lightning's SLURM port (15000 + the job id) may be a Ray worker's (10002-19999)
    env.update(SLURM_JOB_ID=job, SLURM_STEP_ID="0", SLURM_NTASKS="2", SLURM_NTASKS_PER_NODE="2",
               SLURM_NNODES="1", SLURM_NODELIST="localhost", SLURM_JOB_NAME="bench", SLURM_NODEID="0",
               OMP_NUM_THREADS="1", PYTHONPATH=str(root), MASTER_PORT=port)  # fmt: skip
    argv = [sys.executable, "-m", "benchmark", "run", "--config", str(SMOKE), "--models", "unet,empty",
            "--folds", "0", "--results-dir", str(results), "--set", "devices=2", "--no-report"]  # fmt: skip
    try:
        procs = [
            subprocess.Popen(
                argv,
                cwd=tmp_path,
                env={**env, "SLURM_PROCID": r, "SLURM_LOCALID": r},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )  # fmt: skip
            for r in ("0", "1")
        ]
        outs = [p.communicate(timeout=900)[0] for p in procs]
    finally:
        held.release()
        for p in locals().get("procs", []):  # a rank left waiting after the other timed out
            p.kill()
    assert [p.returncode for p in procs] == [3, 0], outs  # rank 0: incomplete, the held run named
    assert "1 trained, 0 skipped, 1 held by another process" in outs[0]
    assert not (results / "runs" / grid[0].run_name() / "summary.json").exists()
    assert (results / "runs" / grid[1].run_name() / "summary.json").is_file()
    assert json.loads(next((results / rank0.GRID_DIR).glob("slurm-*.json")).read_text())["ended"] is True


def _free_port() -> str:
    """A port the kernel hands out: free now, and outside the ports Ray's workers take."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])

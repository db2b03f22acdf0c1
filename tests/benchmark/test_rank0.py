"""Rank 0's record of a DDP grid: ranks that srun or torchrun start beside it make its decisions."""

from __future__ import annotations

import json
import time

import pytest

from benchmark import grid_configs, runner
from benchmark.core import lock, rank0
from benchmark.core.config import load_benchmark_config
from datamodules.errors import NerveBenchError
from tests.benchmark.test_lock import _write_lock
from tests.benchmark.test_runner import SMOKE, fake_fit

LAUNCH = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "SLURM_JOB_ID", "SLURM_STEP_ID",
          "SLURM_RESTART_COUNT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "MASTER_ADDR",
          "MASTER_PORT", lock.OWNER_ENV, rank0.GRID_ENV)  # fmt: skip


@pytest.fixture
def srun(monkeypatch):
    """This process as task 1 of an srun step: nothing inherited from rank 0."""
    for var in LAUNCH:
        monkeypatch.delenv(var, raising=False)
    for var, value in {"SLURM_JOB_ID": "77", "SLURM_STEP_ID": "0", "SLURM_PROCID": "1"}.items():
        monkeypatch.setenv(var, value)
    return monkeypatch


def test_launch_keys_name_one_launch(srun):
    assert rank0.launch_key() == "slurm-77-0-0"
    srun.setenv("SLURM_RESTART_COUNT", "2")  # a requeued job is another launch
    assert rank0.launch_key() == "slurm-77-0-2"
    for var in ("SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_RESTART_COUNT", "SLURM_PROCID"):
        srun.delenv(var)
    assert rank0.launch_key() is None
    srun.setenv("MASTER_ADDR", "node/7")
    srun.setenv("MASTER_PORT", "29500")
    assert rank0.launch_key() == "elastic-0-node_7-29500-0"  # a file name


def test_an_srun_rank_trains_exactly_the_runs_its_rank0_holds(srun, tmp_path, capsys):
    """It trained every open run before: one that rank 0 skipped (held by another job) it trained
    alone, in one process group with rank 0's next run."""
    grid = grid_configs.build_grid(
        load_benchmark_config(SMOKE), models=["unet", "empty", "sk_unet"], folds=[0]
    )
    runs, owner = tmp_path / "runs", lock.owner_id()  # this test process also plays rank 0
    record = rank0.publish(tmp_path, owner)
    srun.delenv(rank0.GRID_ENV)  # rank 0's process set it, not this one's
    assert record == tmp_path / ".grid" / "slurm-77-0-0.json"
    _write_lock(runs / grid[2].run_name(), "other-host", 1, time.time())
    calls = []
    with lock.claim(runs / grid[1].run_name()):
        rank0.withdraw(record)  # rank 0 ends its loop without taking run 2 over
        outcomes = runner.run_grid(grid, tmp_path, tmp_path, fit=fake_fit(calls))
    assert [o.status for o in outcomes] == ["skipped", "trained", "skipped"] and calls == [grid[1].run_name()]
    assert capsys.readouterr().out == ""  # ranks > 0 print nothing


def test_a_record_of_an_earlier_launch_is_not_rank0s(srun, tmp_path):
    path = rank0.record_path(tmp_path, "slurm-77-0-0")
    path.parent.mkdir()
    path.write_text(json.dumps({"owner": "gone:1", "start": time.time() - rank0.FRESH_S - 60}))
    with pytest.raises(
        NerveBenchError, match="slurm-77-0-0.json: rank 0 of this launch wrote no record within"
    ):
        rank0.wait_for_owner(tmp_path, time.time(), wait_s=0.05, poll_s=0.01)
    path.write_text(json.dumps({"owner": "node0:12", "start": time.time() - 5, "ended": False}))
    assert rank0.follower_owner(tmp_path, time.time()) == "node0:12"
    assert rank0.ended(tmp_path, "node0:12") is False and rank0.ended(tmp_path, "node0:13") is True
    rank0.withdraw(path)
    assert rank0.ended(tmp_path, "node0:12") is True and json.loads(path.read_text())["owner"] == "node0:12"
    path.unlink()
    assert rank0.ended(tmp_path, "node0:12") is True  # gone: nothing left to wait for

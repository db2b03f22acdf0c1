"""Run locks: exclusive claims, heartbeats, stale takeover (dead pid, old heartbeat), racing takeovers,
DDP followers, and two real `benchmark run` processes sharing one results directory."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from benchmark import grid_configs, runner
from benchmark.cli import main
from benchmark.core import lock, rank0, ranks
from benchmark.core.config import load_benchmark_config
from tests.benchmark.test_runner import SMOKE, fake_fit

ROOT = Path(__file__).resolve().parents[2]


def _write_lock(
    run_dir: Path, host: str, pid: int, heartbeat: float, token: str = "old", pids: str | None = None
) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / lock.LOCK_NAME
    info = {"host": host, "pid": pid, "start": heartbeat, "heartbeat": heartbeat, "token": token}
    if pids is not None:  # absent: a lock written before the field
        info["pids"] = pids
    path.write_text(json.dumps(info))
    return path


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the pid no longer exists
    return proc.pid


def test_claim_is_exclusive_until_released(tmp_path):
    held = lock.claim(tmp_path / "run")
    assert held is not None and held.took_over is None
    info = lock.read_lock(tmp_path / "run")
    assert (info.host, info.pid) == (socket.gethostname(), os.getpid()) and info.token == held.info.token
    assert lock.claim(tmp_path / "run") is None  # this process is alive: no takeover
    assert lock.is_held(tmp_path / "run").token == held.info.token
    held.release()
    held.release()  # idempotent
    assert not (tmp_path / "run" / lock.LOCK_NAME).exists() and lock.is_held(tmp_path / "run") is None
    with lock.claim(tmp_path / "run") as again:
        assert again is not None and again.info.token != held.info.token
    assert not (tmp_path / "run" / lock.LOCK_NAME).exists()


def test_lock_of_a_dead_pid_on_this_host_is_taken_over(tmp_path):
    pid = _dead_pid()
    _write_lock(tmp_path, socket.gethostname(), pid, time.time())  # fresh heartbeat, but the pid is gone
    taken = lock.claim(tmp_path, stale_after_s=3600)
    assert taken is not None and f"{pid} is gone" in taken.took_over
    assert lock.read_lock(tmp_path).pid == os.getpid()
    taken.release()


def test_a_pid_is_asked_only_in_its_own_pid_space(tmp_path):
    """Two containers on one node may share the hostname but not their pids: a live holder in the
    other one looked gone, and its run was taken over and trained twice at once."""
    pid, host = _dead_pid(), socket.gethostname()
    _write_lock(tmp_path / "other", host, pid, time.time(), pids="another-boot/4026531836")
    assert lock.claim(tmp_path / "other", stale_after_s=3600) is None  # its fresh heartbeat decides
    _write_lock(tmp_path / "mine", host, pid, time.time(), pids=lock.pid_space())
    taken = lock.claim(tmp_path / "mine", stale_after_s=3600)
    assert taken is not None and f"{pid} is gone" in taken.took_over
    assert lock.read_lock(tmp_path / "mine").pids == lock.pid_space() != ""
    taken.release()


def test_old_heartbeat_is_taken_over_and_a_fresh_one_is_not(tmp_path):
    _write_lock(tmp_path / "fresh", "other-host", 1, time.time() - 10)
    assert lock.claim(tmp_path / "fresh", stale_after_s=60) is None
    assert lock.read_lock(tmp_path / "fresh").token == "old"  # untouched
    _write_lock(tmp_path / "old", "other-host", 1, time.time() - 120)
    taken = lock.claim(tmp_path / "old", stale_after_s=60)
    # 120 s, or more when this process stalls between the write and the claim (a loaded machine)
    assert taken is not None and re.search(r"no heartbeat from other-host:1 for 1[2-9]\d s", taken.took_over)
    taken.release()
    assert not list((tmp_path / "old").iterdir())  # no lock and no renamed-aside leftovers


def test_unreadable_lock_is_held_until_its_mtime_is_old(tmp_path):
    path = tmp_path / lock.LOCK_NAME
    path.write_bytes(b"")  # a claimer died between create and write
    assert lock.claim(tmp_path, stale_after_s=60) is None
    held = lock.read_lock(tmp_path)
    assert held is not None and held.describe().startswith("an unreadable lock file (written ")  # was "?:0"
    os.utime(path, (time.time() - 120, time.time() - 120))
    taken = lock.claim(tmp_path, stale_after_s=60)
    assert taken is not None and taken.took_over.startswith("an unreadable lock file, written 12")
    taken.release()


def test_heartbeat_is_refreshed_while_held(tmp_path):
    held = lock.claim(tmp_path, stale_after_s=60, heartbeat_s=0.05)
    first = lock.read_lock(tmp_path).heartbeat
    deadline = time.time() + 300  # a bound of minutes: a loaded machine may delay the thread
    while lock.read_lock(tmp_path).heartbeat == first and time.time() < deadline:
        time.sleep(0.02)
    beat = lock.read_lock(tmp_path)
    assert beat.heartbeat > first and beat.token == held.info.token and beat.start == held.info.start
    held.release()


def test_racing_takeovers_of_one_stale_lock_have_exactly_one_winner(tmp_path):
    for round_ in range(15):
        run_dir = tmp_path / f"r{round_}"
        _write_lock(run_dir, "other-host", 1, time.time() - 1000)
        barrier, won = threading.Barrier(6), []

        def contend(run_dir=run_dir, barrier=barrier, won=won):
            barrier.wait()
            got = lock.claim(run_dir, stale_after_s=60, heartbeat_s=60)
            if got is not None:
                won.append(got)

        threads = [threading.Thread(target=contend) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1, f"round {round_}: {len(won)} winners"
        assert lock.read_lock(run_dir).token == won[0].info.token and not won[0].lost
        won[0].release()
        assert not list(run_dir.iterdir())


def test_a_takeover_never_deletes_a_lock_claimed_meanwhile(tmp_path):
    """A racer that judged an old lock stale, but finds a fresh claim at the path, leaves it alone."""
    fresh = lock.claim(tmp_path, heartbeat_s=60)
    judged = lock.LockInfo("other-host", 1, 0.0, 0.0, "old")
    assert lock._remove_stale(tmp_path / lock.LOCK_NAME, judged, 60) is True
    assert lock.read_lock(tmp_path).token == fresh.info.token and not fresh.lost
    assert sorted(p.name for p in tmp_path.iterdir()) == [lock.LOCK_NAME]  # mutex removed
    fresh.release()


def test_takeover_waits_for_a_live_taker_and_clears_a_dead_one(tmp_path):
    _write_lock(tmp_path, "other-host", 1, time.time() - 1000)
    mutex = _write_lock(tmp_path / "m", "other-host", 1, time.time())
    os.replace(mutex, tmp_path / f"{lock.LOCK_NAME}.takeover")  # another host is taking over now
    assert lock.claim(tmp_path, stale_after_s=60) is None
    assert lock.read_lock(tmp_path).token == "old"
    _write_lock(tmp_path / "m", socket.gethostname(), _dead_pid(), time.time())
    os.replace(tmp_path / "m" / lock.LOCK_NAME, tmp_path / f"{lock.LOCK_NAME}.takeover")  # died in it
    taken = lock.claim(tmp_path, stale_after_s=60)
    assert taken is not None and not (tmp_path / f"{lock.LOCK_NAME}.takeover").exists()
    taken.release()


def test_bad_stale_setting_is_one_clear_error(monkeypatch):
    monkeypatch.setenv(lock.STALE_ENV, "soon")
    with pytest.raises(lock.NerveBenchError, match="NERVE_BENCH_LOCK_STALE_S='soon'"):
        lock.stale_after_default()
    monkeypatch.setenv(lock.STALE_ENV, "90")
    assert lock.stale_after_default() == 90.0


def test_ddp_follower_makes_rank0s_decision(tmp_path):
    owner = lock.owner_id()
    mine, other, later = tmp_path / "mine", tmp_path / "other", tmp_path / "later"
    with lock.claim(mine):
        assert lock.follow(mine, owner, [later], lambda: False, poll_s=0.01) is True
    # Another process has it: rank 0 judges that holder (stale or alive), so the rank waits for rank
    # 0's decision (here: its grid loop ends after 5 looks) instead of judging it a moment apart
    _write_lock(other, "other-host", 1, time.time())
    looks = []
    assert (
        lock.follow(other, owner, [later], lambda: False, lambda: looks.append(1) or len(looks) == 5) is False
    )
    assert len(looks) == 5
    assert lock.follow(tmp_path / "done", owner, [later], lambda: True, poll_s=0.01) is False
    with lock.claim(later):  # rank 0 already moved on to a later run
        assert lock.follow(tmp_path / "free", owner, [later], lambda: False, poll_s=0.01) is False


def test_runner_skips_a_held_run_and_takes_over_a_stale_one(tmp_path, capsys):
    grid = grid_configs.build_grid(
        load_benchmark_config(SMOKE), models=["unet", "empty", "sk_unet"], folds=[0]
    )
    runs = tmp_path / "runs"
    _write_lock(runs / grid[0].run_name(), "other-host", 1, time.time())
    _write_lock(runs / grid[2].run_name(), "other-host", 1, time.time() - 1000)
    calls = []
    outcomes = runner.run_grid(grid, tmp_path, tmp_path, fit=fake_fit(calls), stale_after_s=60)
    assert [o.status for o in outcomes] == ["held", "trained", "trained"]
    assert calls == [c.run_name() for c in grid[1:]]
    out = capsys.readouterr().out
    assert f"[1/3] skipped {grid[0].run_name()}: held by other-host:1" in out
    assert "taking over a stale lock (no heartbeat from other-host:1" in out
    assert (runs / grid[0].run_name() / lock.LOCK_NAME).exists()  # the other process's lock is kept
    assert not (runs / grid[2].run_name() / lock.LOCK_NAME).exists()  # ours is released


def test_a_run_whose_lock_was_taken_over_writes_nothing_more(tmp_path, capsys):
    """A holder paused past the stale age (SIGSTOP, a suspended VM) went on training when it woke, beside
    the process that took its lock over: both wrote the run's checkpoints and summary (a review)."""
    from benchmark.core.files import WRITE_GUARDS, atomic_write

    grid = grid_configs.build_grid(load_benchmark_config(SMOKE), models=["unet", "empty"], folds=[0])
    runs, calls = tmp_path / "runs", []
    plain = fake_fit(calls)

    def paused(cfg, data_dir, out_dir):
        if cfg.model == "unet":  # the other process takes the lock over while this one sleeps
            (out_dir / lock.LOCK_NAME).unlink()
            _write_lock(out_dir, "other-host", 1, time.time())
            atomic_write(out_dir / "notes.txt", "")  # into the run: refused, as the summary is below
        return plain(cfg, data_dir, out_dir)

    outcomes = runner.run_grid(grid, tmp_path, tmp_path, fit=paused, stale_after_s=60)
    assert [o.status for o in outcomes] == ["held", "trained"] and "taken over by another" in outcomes[
        0
    ].error
    unet = runs / grid[0].run_name()
    assert (
        sorted(p.name for p in unet.iterdir()) == [lock.LOCK_NAME]
        and lock.read_lock(unet).host == "other-host"
    )
    assert (runs / grid[1].run_name() / "summary.json").is_file() and not WRITE_GUARDS  # ours went with it
    assert f"warning: {unet / lock.LOCK_NAME}: taken over by another process while" in capsys.readouterr().out


def test_a_holder_that_finished_its_run_is_not_said_to_have_stopped_without_finishing(tmp_path, capsys):
    """ "[retry] X: its holder stopped without finishing it" came right before "skipped X: completed by
    another process" (a review)."""
    grid = grid_configs.build_grid(load_benchmark_config(SMOKE), models=["unet", "empty"], folds=[0])
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    _write_lock(tmp_path / "runs" / grid[0].run_name(), socket.gethostname(), holder.pid, time.time())
    train = fake_fit([])

    def fit(cfg, data_dir, out_dir):
        if cfg.model == "empty":  # the holder finishes its run, then ends, while this one trains
            train(grid[0], data_dir, tmp_path / "runs" / grid[0].run_name())
            holder.kill()
            holder.wait()
        return train(cfg, data_dir, out_dir)

    try:
        outcomes = runner.run_grid(grid, tmp_path, tmp_path, fit=fit)
    finally:
        holder.kill()
        holder.wait()
    assert [o.status for o in outcomes] == ["skipped", "trained"]
    out = capsys.readouterr().out
    assert "[retry]" in out and f"[retry] {grid[0].run_name()}: its holder stopped" not in out


WORKER = r"""
import os, sys, time
from pathlib import Path
import benchmark.pipeline as pipeline
from benchmark.cli import main
from benchmark.core.summary import write_summary
from tests.benchmark.summaries import make_summary

marker, barrier, content = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
first = []

def fake_fit(cfg, data_dir, out_dir):
    with open(marker, "a") as fh:
        fh.write(f"{os.getpid()} {cfg.run_name()}\n")
    if not first:  # both processes hold a run at once before either finishes one
        first.append(1)
        (barrier / str(os.getpid())).touch()
        deadline = time.time() + 600
        while len(list(barrier.iterdir())) < 2 and time.time() < deadline:
            time.sleep(0.02)
    summary = make_summary(cfg.model, cfg.fold, cfg.seed, [0.5, 1.0], n_folds=cfg.n_folds, content=content)
    summary.update(run=cfg.run_name(), config=cfg.to_dict(), config_hash=cfg.hash())
    write_summary(out_dir, summary)
    return summary

pipeline.fit = fake_fit
sys.exit(main(sys.argv[4:]))
"""


@pytest.mark.slow
def test_two_processes_on_one_results_dir_train_every_run_exactly_once(tmp_path, synthetic_dir, monkeypatch):
    from datamodules.kaggle import check_dataset

    script, marker, barrier = tmp_path / "worker.py", tmp_path / "trained.txt", tmp_path / "barrier"
    script.write_text(WORKER)
    barrier.mkdir()
    content = check_dataset(synthetic_dir)["content_hash"]
    args = ["run", "--config", str(SMOKE), "--data-dir", str(synthetic_dir), "--results-dir",
            str(tmp_path / "results"), "--seeds", "0,1", "--no-report", "--min-free-gb", "0"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(script), str(marker), str(barrier), content, *args]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]  # fmt: skip
    results = [p.communicate(timeout=900) for p in procs]
    # The one that ends first may still see a run the other holds, unfinished: it says so and exits
    # 3 (README "Exit codes"). Which one, if either, depends on the box's load.
    codes = sorted(p.returncode for p in procs)
    assert codes in ([0, 0], [0, 3]), [err[-2000:] for _, err in results]
    for proc, (out, _) in zip(procs, results):
        assert proc.returncode == 0 or "Re-run the same command to complete them" in out, out[-2000:]
    grid = {c.run_name() for c in grid_configs.build_grid(load_benchmark_config(SMOKE), seeds=[0, 1])}
    trained = Counter(line.split()[1] for line in marker.read_text().splitlines())
    assert set(trained) == grid and set(trained.values()) == {1}, trained  # every run exactly once
    pids = Counter(line.split()[0] for line in marker.read_text().splitlines())
    assert len(pids) == 2  # both processes trained (the barrier makes them overlap)
    stdout = "".join(out for out, _ in results)
    assert stdout.count(": outer Kaggle Dice 0.7500") == len(grid) and "held by" in stdout
    assert not list((tmp_path / "results").rglob(lock.LOCK_NAME))  # every lock released
    # A third invocation finds the whole grid complete and trains nothing.
    import benchmark.pipeline as pipeline

    monkeypatch.setattr(pipeline, "fit", lambda *a, **k: pytest.fail("a finished run was retrained"))
    assert main(args) == 0


def test_ddp_rank_above_zero_trains_exactly_the_runs_rank0_holds(tmp_path, monkeypatch, capsys):
    grid = grid_configs.build_grid(
        load_benchmark_config(SMOKE), models=["unet", "empty", "sk_unet"], folds=[0]
    )
    runs = tmp_path / "runs"
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv(lock.OWNER_ENV, lock.owner_id())  # this test process plays rank 0
    monkeypatch.delenv(rank0.GRID_ENV, raising=False)
    rank0.withdraw(rank0.publish(tmp_path, lock.owner_id()))  # its grid loop has ended
    _write_lock(runs / grid[2].run_name(), "other-host", 1, time.time())
    calls = []
    with lock.claim(runs / grid[1].run_name()):
        outcomes = runner.run_grid(grid, tmp_path, tmp_path, fit=fake_fit(calls))
    # run 0: rank 0 already holds a later run; run 1: rank 0 holds it; run 2: another job has it,
    # and rank 0 ended its loop without taking it over
    assert [o.status for o in outcomes] == ["skipped", "trained", "skipped"] and calls == [grid[1].run_name()]
    assert capsys.readouterr().out == ""  # ranks > 0 print nothing
    assert lock.read_lock(runs / grid[2].run_name()).host == "other-host"  # followers never claim


@pytest.mark.parametrize(
    ("env", "rank"),
    [({}, 0), ({"RANK": "3"}, 3), ({"LOCAL_RANK": "1"}, 1), ({"NODE_RANK": "1"}, 1024),
     ({"NODE_RANK": "1", "LOCAL_RANK": "0"}, 1024), ({"SLURM_PROCID": "0", "LOCAL_RANK": "0"}, 0),
     ({"SLURM_PROCID": "5"}, 5),  # an srun task
     ({"SLURM_PROCID": "0", "LOCAL_RANK": "2"}, 2)],  # a rank Lightning started inside srun --pty
)  # fmt: skip
def test_global_rank_is_nonzero_off_node_zero(monkeypatch, env, rank):
    for var in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert ranks.global_rank() == rank

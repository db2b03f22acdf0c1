"""The Ray executor on a real local Ray (2 CPUs, one CPU per run, so two runs at a time).

Real training on the smoke grid's synthetic data, with tiny models: the Ray leaderboard equals the
local executor's, tasks read the driver's shared arrays (the tifs are moved away), a failing run is
recorded while the others finish, a killed driver and a killed worker lose no finished work and
train no epoch twice. The fits the workers run are in ray_fits.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from benchmark import fallback as fb
from benchmark import grid_configs, ray_grid, ray_storage, runner
from benchmark.core.config import load_benchmark_config
from benchmark.core.lock import is_held
from benchmark.core.preflight import OutOfSpace
from benchmark.ray_resources import RayExecutorError
from tests.benchmark.ray_fits import RELEASE, dying_fit, epoch_log, full_disk_fit, logging_fit, probe_fit

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "benchmark" / "configs" / "smoke.yaml"
TINY = {"base_width": 4, "depth": 2}
TOL = 1e-4  # per-image Dice, local vs Ray: same machine and thread count, different processes
ONE_CPU = ray_grid.RaySettings(gpus_per_run=0.0, cpus_per_run=1.0)


def smoke_grid(models: tuple[str, ...], epochs: int = 1, folds=(0,)) -> list:
    """The smoke config's synthetic (CPU) grid for ``models``, tiny U-Nets, one W&B group name."""
    bench = fb.synthetic_benchmark(load_benchmark_config(SMOKE))
    train = dataclasses.replace(bench.train, epochs=epochs, wandb_group="smoke-ray-test")
    kwargs = {m: dict(TINY) for m in ("unet", "attention_unet", "sk_unet")}
    bench = dataclasses.replace(bench, models=models, folds=tuple(folds), train=train, model_kwargs=kwargs)
    return grid_configs.build_grid(bench)


@pytest.fixture(scope="module")
def ray_cluster():
    """A real local Ray for this module with 2 CPUs and 2 declared (fake) GPUs, its session in a temp
    directory of its own; the executor reuses it and does not shut it down."""
    with pytest.MonkeyPatch.context() as env:  # the user's setting is back after the module
        env.setenv("RAY_USAGE_STATS_ENABLED", "0")
        env.setenv("RAY_worker_register_timeout_seconds", "600")  # workers import torch first: not 60 s
        ray = pytest.importorskip("ray")
        temp = tempfile.mkdtemp(prefix="nb-ray-", dir="/tmp")  # short: Ray's socket paths live under it
        ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                 _temp_dir=temp)  # fmt: skip
        try:
            yield ray
        finally:
            ray.shutdown()
            shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """The smoke config's synthetic data set (its `synthetic.generator` section)."""
    from datamodules.synth import generate

    out = tmp_path_factory.mktemp("ray_data")
    generate(out, **load_benchmark_config(SMOKE).synthetic["generator"])
    return out


def _summaries(results: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (results / "runs").glob("*/summary.json")}


def _board(results: Path) -> dict:
    from benchmark.reporting import leaderboard
    from benchmark.reporting.report import load_summaries

    return leaderboard.build([s for _, s in load_summaries(results)])


# ----------------------------------------------------------------------------- on a real local Ray
def test_unshared_results_directory_fails_in_one_line(ray_cluster, tmp_path):
    token = ray_storage.write_marker(tmp_path)
    ray_storage.check_shared(ray_cluster, tmp_path, token)  # this node sees the marker
    with pytest.raises(RayExecutorError) as err:
        ray_storage.check_shared(ray_cluster, tmp_path / "elsewhere", token)
    message = str(err.value)
    assert "not shared with Ray node" in message and "elsewhere" in message and "\n" not in message


def test_a_live_drivers_marker_is_not_pruned_as_a_killed_ones(ray_cluster, tmp_path, monkeypatch):
    """A later driver prunes markers untouched for a week: a live grid of over a week lost its own."""
    monkeypatch.setattr(ray_storage, "TOUCH_S", 0.05)
    with ray_storage.shared_marker(ray_cluster, tmp_path) as token:
        path, week = ray_storage.marker_path(tmp_path, token), time.time() - ray_storage.KEEP_S - 60
        os.utime(path, (week, week))
        deadline = time.monotonic() + 300  # the toucher's thread, on a busy machine
        while path.stat().st_mtime < week + 60 and time.monotonic() < deadline:
            time.sleep(0.05)
        ray_storage.write_marker(tmp_path)  # another driver starts: it prunes killed drivers' markers
        assert ray_storage.read_marker(tmp_path, token) == ""


def test_two_drivers_on_one_results_directory_keep_their_own_markers(ray_cluster, tmp_path):
    """With one marker file the second driver's token failed every task the first had not started."""
    first = ray_storage.write_marker(tmp_path)
    with ray_storage.shared_marker(ray_cluster, tmp_path) as second:
        assert ray_storage.read_marker(tmp_path, first) == ray_storage.read_marker(tmp_path, second) == ""
    assert ray_storage.read_marker(tmp_path, first) == ""  # the second driver's end leaves it
    assert not ray_storage.marker_path(tmp_path, second).exists()
    assert "cannot read it" in ray_storage.read_marker(tmp_path, second)


def test_ray_grid_matches_local_and_reads_only_shared_arrays(ray_cluster, data, tmp_path, capsys):
    from datamodules.kaggle import load_train

    grid = smoke_grid(("unet", "sk_unet", "empty"))
    with _threads(1):  # as a Ray task with num_cpus=1
        local = runner.run_grid(grid, data, tmp_path / "local")
    assert [o.status for o in local] == ["trained"] * 3
    broken = dataclasses.replace(
        smoke_grid(("attention_unet",))[0], model_kwargs={**TINY, "no_such_kwarg": 1}
    )
    train_set = load_train(data)
    (data / "train").rename(data / "train.hidden")  # a task that opens a tif now fails
    try:
        outcomes = ray_grid.run_grid([*grid, broken], data, tmp_path / "ray", ONE_CPU, train_set=train_set)
    finally:
        (data / "train.hidden").rename(data / "train")
    status = {o.run: o.status for o in outcomes}
    assert status == {**{c.run_name(): "trained" for c in grid}, broken.run_name(): "failed"}
    out = capsys.readouterr().out
    assert f"FAILED {broken.run_name()}" in out and "outer Kaggle Dice" in out and "4/4 done" in out
    assert "no_such_kwarg" in (tmp_path / "ray" / "runs" / broken.run_name() / "error.txt").read_text()
    local_s, ray_s = _summaries(tmp_path / "local"), _summaries(tmp_path / "ray")
    assert sorted(local_s) == sorted(ray_s) == sorted(c.run_name() for c in grid)
    for run, ours in ray_s.items():
        theirs = local_s[run]
        assert ours["per_image"]["index"] == theirs["per_image"]["index"]
        for key in ("dice_raw", "dice"):
            np.testing.assert_allclose(ours["per_image"][key], theirs["per_image"][key], atol=TOL, rtol=0)
        assert ours["config"]["wandb_group"] == "smoke-ray-test"  # the driver's group reached the task
        # CPU tasks share the node: inference costs measured after the grid, by one task holding it all
        assert (
            ours["cost"]["measured"]["inference"] == "exclusive, after the grid"
            and ours["cost"]["latency_ms"] > 0
        )
        assert theirs["cost"]["measured"]["inference"] == "exclusive"  # the local executor: one run at a time
    ray_board, local_board = _board(tmp_path / "ray"), _board(tmp_path / "local")
    assert sorted(r["run"] for r in ray_board["runs"]) == sorted(r["run"] for r in local_board["runs"])
    models = [r["model"] for r in ray_board["rows"] + ray_board["incomplete"]]
    assert "attention_unet" not in models
    assert models == [r["model"] for r in local_board["rows"] + local_board["incomplete"]]


def test_gpu_tasks_get_fresh_workers_and_exactly_their_gpu(ray_cluster, data, tmp_path, capsys):
    """Ray's fake GPUs (``num_gpus=2``): 4 one-GPU runs never share a worker process, each sees only
    the GPU Ray gave it; CPU runs see no GPU at all (Ray left CUDA_VISIBLE_DEVICES as inherited),
    also beside GPU runs in one grid (a model_train entry's accelerator: cpu), whichever comes first."""
    grid = smoke_grid(("unet",), folds=(0, 1, 2))
    gpu = [dataclasses.replace(c, accelerator="gpu", seed=s) for c in grid[:1] for s in range(4)]
    mixed = [dataclasses.replace(grid[0], accelerator="cpu", seed=4), *gpu]
    settings = ray_grid.RaySettings(gpus_per_run=1.0, cpus_per_run=0.5)
    outcomes = ray_grid.run_grid(mixed, data, tmp_path / "gpu", settings, fit=probe_fit)
    assert [o.status for o in outcomes] == ["trained"] * 5
    out = capsys.readouterr().out
    assert "(cpu runs: 0.5 CPU, 0 GPU each; gpu runs: 0.5 CPU, 1 GPU each)" in out
    assert ray_cluster._private.worker._global_node.get_logs_dir_path() in out
    runs = tmp_path / "gpu" / "runs"
    probes = {c.seed: json.loads((runs / c.run_name() / "probe.json").read_text()) for c in mixed}
    cpu_run = probes.pop(4)
    assert cpu_run["visible"] == "" and cpu_run["ids"] == [] and len(probes) == 4
    assert len({p["pid"] for p in probes.values()}) == 4  # max_calls=1: one worker process per GPU task
    assert all(p["visible"] == str(p["ids"][0]) in ("0", "1") for p in probes.values()), probes
    outcomes = ray_grid.run_grid(grid, data, tmp_path / "cpu", ONE_CPU, fit=probe_fit)
    probes = [json.loads(p.read_text()) for p in (tmp_path / "cpu" / "runs").glob("*/probe.json")]
    assert len(probes) == 3 and all(p["visible"] == "" and p["ids"] == [] for p in probes), probes


def test_killed_worker_is_retried_once_and_resumes(ray_cluster, data, tmp_path):
    grid = smoke_grid(("unet",), epochs=2)
    outcomes = ray_grid.run_grid(grid, data, tmp_path, ONE_CPU, fit=dying_fit)
    assert [o.status for o in outcomes] == ["trained"]
    assert (tmp_path / "died-once").is_file()  # the first attempt really died
    run = grid[0].run_name()
    assert epoch_log(tmp_path) == [f"{run}@0", f"{run}@1"]  # epoch 0 was not trained again


KILL_MODELS = ("unet", "sk_unet", "attention_unet")  # two start together; the third waits for a slot
DRIVER = """
import sys
from pathlib import Path
from benchmark import ray_grid
from tests.benchmark.ray_fits import logging_fit
from tests.benchmark.test_ray_grid import KILL_MODELS, smoke_grid
grid = smoke_grid(KILL_MODELS, epochs=2)
settings = ray_grid.RaySettings(0.0, 1.0, sys.argv[3])
ray_grid.run_grid(grid, Path(sys.argv[1]), Path(sys.argv[2]), settings, fit=logging_fit)
"""


def test_killed_driver_leaves_finished_runs_and_rerun_trains_nothing_twice(ray_cluster, data, tmp_path):
    grid = smoke_grid(KILL_MODELS, epochs=2)
    runs = tmp_path / "runs"
    address = ray_cluster.get_runtime_context().gcs_address
    cmd = [sys.executable, "-c", DRIVER, str(data), str(tmp_path), address]
    with open(tmp_path / "driver.log", "w") as log:
        driver = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait(lambda: any(runs.glob("*/summary.json")) or driver.poll() is not None, 600)
    finally:
        driver.kill()  # SIGKILL: no clean-up code runs in the driver
        driver.wait()
    finished = {p.parent.name: _scores(p) for p in runs.glob("*/summary.json")}
    assert 1 <= len(finished) < len(grid), (tmp_path / "driver.log").read_text()[-2000:]
    _wait(lambda: not any(is_held(d) for d in runs.iterdir()), 300)  # Ray ends the driver's workers
    before = epoch_log(tmp_path)
    outcomes = ray_grid.run_grid(grid, data, tmp_path, ONE_CPU, fit=logging_fit)
    status = {o.run: o.status for o in outcomes}
    assert status == {c.run_name(): "skipped" if c.run_name() in finished else "trained" for c in grid}
    # Finished runs are not trained again: their summaries are the same but for the inference cost
    # columns, which the rerun measures after the grid when the killed driver could not (deferred_costs).
    again = {p.parent.name: _scores(p) for p in runs.glob("*/summary.json") if p.parent.name in finished}
    assert again == finished
    after = epoch_log(tmp_path)
    # The kill may land between an epoch's log line and its last.ckpt (ModelCheckpoint runs after the
    # other callbacks): that one in-flight epoch is legitimately trained again, nothing earlier is.
    repeated = sorted(e for e in set(after) if after.count(e) > 1)
    last_before = {e.split("@")[0]: e for e in before}  # each unfinished run's last logged epoch
    assert all(after.count(e) == 2 and last_before.get(e.split("@")[0]) == e for e in repeated), repeated
    assert not [e for e in after[len(before) :] if e.split("@")[0] in finished]
    assert sorted(set(after)) == sorted(f"{c.run_name()}@{e}" for c in grid for e in (0, 1))


def _scores(path: Path) -> str:
    """A summary without its cost block and timestamps: what training and scoring produced."""
    summary = json.loads(path.read_text())
    for key in ("cost", "created", "finished_at"):
        summary.pop(key, None)
    return json.dumps(summary, sort_keys=True)


def _wait(done, timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.2)


class _threads:
    def __init__(self, n: int) -> None:
        self.n = n

    def __enter__(self) -> None:
        import torch

        self.old = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc) -> None:
        import torch

        torch.set_num_threads(self.old)


def _gone(pid: int, within_s: float = 300.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def test_a_run_out_of_space_cancels_the_runs_in_flight_and_ends_the_grid(ray_cluster, data, tmp_path, capsys):
    """Every later run would fail the same way after training until its first checkpoint."""
    grid = smoke_grid(("unet",), folds=(0, 1, 2))
    where = tmp_path / "runs" / grid[1].run_name() / "checkpoints" / "last.ckpt"
    try:
        with pytest.raises(
            OutOfSpace, match=f"^{where}: No space left on device \\(while {grid[1].run_name()}"
        ):
            ray_grid.run_grid(grid, data, tmp_path, ONE_CPU, fit=full_disk_fit)
        in_flight = list((tmp_path / "runs").glob("*/pid"))
        assert len(in_flight) == 1 and _gone(int(in_flight[0].read_text()))  # cancelled, not waited for
        out = capsys.readouterr().out  # each run stopped is named; not "interrupted": nobody pressed Ctrl-C
        then = "re-running the same command starts it again (no epoch had finished)"
        assert f"cancelled {in_flight[0].parent.name}: {then}" in out and "interrupted" not in out, out
    finally:
        (tmp_path / RELEASE).touch()  # an uncancelled run ends now, not holding a CPU for the next test


def test_the_room_check_counts_the_runs_the_cluster_trains_at_once(ray_cluster, data, tmp_path):
    """2 CPUs, one per run: two resume checkpoints at a time. A refusal comes before any run starts."""
    from datamodules.errors import NerveBenchError

    asked: list[int] = []

    def room(in_flight: int) -> None:
        asked.append(in_flight)
        raise NerveBenchError("results: too little room")

    grid = smoke_grid(("unet",), folds=(0, 1, 2))
    with pytest.raises(NerveBenchError, match="too little room"):
        ray_grid.run_grid(grid, data, tmp_path, ONE_CPU, fit=full_disk_fit, room=room)
    assert asked == [2] and not (tmp_path / "runs").exists()
    one = ray_grid.run_grid(grid[:1], data, tmp_path / "one", ONE_CPU, fit=probe_fit, room=room)
    assert asked == [2] and [o.status for o in one] == ["trained"]  # one run: the first check holds

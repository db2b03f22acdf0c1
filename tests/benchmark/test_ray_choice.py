"""Choosing the executor and a Ray task's resources, without starting Ray: local or Ray and why,
the cluster address, how many runs a cluster trains at once, a fresh worker for each GPU task, and a
GPU recipe refused on a cluster without GPUs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from benchmark import grid_configs, ray_grid
from benchmark.cli import main
from benchmark.core.config import load_benchmark_config
from benchmark.ray_resources import RayExecutorError, grid_tasks, slots, task_options

SMOKE = Path(__file__).resolve().parents[2] / "benchmark" / "configs" / "smoke.yaml"


def test_executor_choice_and_resources(monkeypatch):
    bench = load_benchmark_config(SMOKE)
    grid = grid_configs.build_grid(dataclasses.replace(bench, models=("unet",), folds=(0,)))
    assert ray_grid.choose(bench, grid) == ("local", "")
    ray_bench = dataclasses.replace(bench, executor="ray")
    assert ray_grid.choose(ray_bench, grid) == ("ray", "")
    ddp = [dataclasses.replace(grid[0], devices=2)]
    executor, why = ray_grid.choose(ray_bench, ddp)
    assert executor == "local" and "DDP" in why and "\n" not in why
    real = ray_grid.importlib.util.find_spec
    monkeypatch.setattr(ray_grid.importlib.util, "find_spec", lambda n: None if n == "ray" else real(n))
    executor, why = ray_grid.choose(ray_bench, grid)
    assert executor == "local" and "not installed" in why
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert ray_grid.RaySettings.of(ray_bench).address == "10.0.0.1:6379"
    assert (
        ray_grid.RaySettings.of(dataclasses.replace(ray_bench, ray_address="head:6379")).address
        == "head:6379"
    )
    # an 8-GPU, 64-CPU box: quarter GPUs with 4 CPUs each -> 16 at once (CPU-bound), with 1 CPU -> 32
    box = [{"CPU": 64.0, "GPU": 8.0}]
    quarter = task_options(box, ray_grid.RaySettings(0.25, 4.0), "auto")
    assert quarter["num_gpus"] == 0.25 and quarter["max_retries"] == 1 and slots(box, quarter) == 16
    assert slots(box, task_options(box, ray_grid.RaySettings(0.25, 1.0), "auto")) == 32
    assert slots(box * 2, task_options(box, ray_grid.RaySettings(1.0, 1.0), "auto")) == 16
    assert quarter["max_calls"] == 1  # a GPU task gets a fresh worker: no CUDA context left on a GPU
    cpu_only = [{"CPU": 2.0}]
    cpu = task_options(cpu_only, ray_grid.RaySettings(1.0, 1.0), "cpu")
    assert cpu["num_gpus"] == 0 and "max_calls" not in cpu  # CPU workers may be reused
    for accelerator in ("auto", "gpu"):  # the GPU recipe must not silently train on CPU
        with pytest.raises(RayExecutorError, match="declares no GPU; set accelerator: cpu"):
            task_options(cpu_only, ray_grid.RaySettings(1.0, 1.0), accelerator)
    with pytest.raises(RayExecutorError, match="lower cpus_per_run"):
        slots(cpu_only, task_options(cpu_only, ray_grid.RaySettings(1.0, 4.0), "cpu"))


def test_each_run_gets_the_options_of_its_own_accelerator():
    """A model_train entry may set a model's accelerator: its runs hold no GPU beside GPU runs, and a
    GPU run on a cluster without GPUs is refused before any task, whichever run comes first."""
    box, settings = [{"CPU": 8.0, "GPU": 2.0}], ray_grid.RaySettings(1.0, 1.0)
    by, capacity, words = grid_tasks(box, settings, ["cpu", "auto", "auto", "auto", "cpu"])
    assert by["cpu"]["num_gpus"] == 0 and by["auto"]["num_gpus"] == 1.0 and by["auto"]["max_calls"] == 1
    assert capacity == 2 + 2 and words == "auto runs: 1 CPU, 1 GPU each; cpu runs: 1 CPU, 0 GPU each"
    assert grid_tasks(box, settings, ["auto"] * 3)[1:] == (2, "1 CPU, 1 GPU each")
    # both kinds share the node's CPUs: 8 CPUs at 4 each hold two runs, whatever their kind
    assert grid_tasks(box, ray_grid.RaySettings(1.0, 4.0), ["cpu", "cpu", "auto", "auto"])[1] == 2
    with pytest.raises(RayExecutorError, match="accelerator=gpu with gpus_per_run=1, but the Ray"):
        grid_tasks([{"CPU": 8.0}], settings, ["cpu", "gpu"])


def test_cli_flags_set_the_executor(capsys, monkeypatch):
    assert (
        main(["run", "--config", str(SMOKE), "--executor", "ray", "--ray-address", "h:1", "--print-config"])
        == 0
    )
    out = capsys.readouterr().out
    assert "executor: ray" in out and "ray_address: h:1" in out


def test_a_dry_run_says_when_ray_is_not_used(capsys, tmp_path):
    """The dry run lists what the run would do, the executor included: Ray asked for, DDP runs."""
    argv = ["run", "--config", str(SMOKE), "--executor", "ray", "--models", "unet", "--dry-run"]
    argv += ["--results-dir", str(tmp_path / "r"), "--set", "devices=2", "--set", "accelerator=cpu"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "executor ray: 1 run(s) span 2 devices (DDP); running the grid locally" in out
    assert "disk: the 1 run(s) left" in out and "one run at a time" in out

"""What a run leaves in a process that trains several (the local executor) is freed before the next."""

from __future__ import annotations

import dataclasses

import torch

from benchmark import grid_configs, runner
from benchmark.core.config import load_benchmark_config
from tests.benchmark.test_runner import SMOKE, fake_fit


def test_every_run_trained_or_failed_frees_its_compiled_graphs_before_the_next(tmp_path, monkeypatch):
    """The local executor trains one run after another in one process: dynamo's cache keeps each
    run's graphs (8 per code object, then a model trains uncompiled), so it is reset after each."""
    resets = []
    monkeypatch.setattr(torch._dynamo, "reset", lambda: resets.append(len(calls)))
    bench = dataclasses.replace(load_benchmark_config(SMOKE), models=("unet", "boom"))
    calls: list[str] = []
    compiled = [dataclasses.replace(c, compile=True) for c in grid_configs.build_grid(bench)]
    runner.run_grid(compiled, tmp_path, tmp_path, fit=fake_fit(calls, fail={"boom"}))
    assert resets == [1, 2]  # after the run that trained and after the one that failed
    runner.run_grid(grid_configs.build_grid(bench, models=["empty"]), tmp_path, tmp_path, fit=fake_fit(calls))
    assert resets == [1, 2]  # nothing compiled: nothing to reset

"""Issue 15 item 7: a run that shared its device leaves its inference columns pending; they are filled
in place on a device of its own afterwards, and nothing else in its summary changes."""

from __future__ import annotations

import shutil

import pytest
import torch

from benchmark import ray_grid
from benchmark.core.summary import read_summary, write_summary
from benchmark.evaluation import costs, deferred_costs, finalize
from benchmark.ray_resources import exclusive_options
from benchmark.training.checkpoint import BEST, load_checkpoint_module
from tests.benchmark.fitting import UNET


def _pending_copy(fit_runs, tmp_path):
    run = tmp_path / fit_runs.run_dir(UNET).name
    shutil.copytree(fit_runs.run_dir(UNET), run)
    summary = read_summary(run)
    summary["cost"].update(dict.fromkeys(costs.INFERENCE_KEYS))
    summary["cost"]["measured"] = {"device": "cpu", "device_share": 0.0, "inference": deferred_costs.PENDING}
    write_summary(run, summary)
    return run, summary


def test_cost_block_defers_inference_on_a_shared_device(fit_runs, monkeypatch):
    module, _ = load_checkpoint_module(fit_runs.run_dir(UNET) / "checkpoints" / BEST)
    history = {"train_s": [2.0], "train_images": [10]}
    own = finalize.cost_block(UNET, module, history, torch.device("cpu"))
    assert own["measured"] == {"device": "cpu", "device_share": None, "inference": "exclusive"}
    assert own["infer_img_s"] > 0 and own["train_img_s"] == 5.0
    monkeypatch.setattr(costs, "measured_exclusively", lambda: (False, 0.5))
    shared = finalize.cost_block(UNET, module, history, torch.device("cpu"))
    assert shared["measured"] == {"device": "cpu", "device_share": 0.5, "inference": "pending"}
    assert [shared[k] for k in costs.INFERENCE_KEYS] == [None] * 3
    assert shared["params"] == own["params"] and shared["train_img_s"] == 5.0  # the rest as measured


def test_pending_inference_costs_are_filled_in_place(fit_runs, tmp_path):
    run, before = _pending_copy(fit_runs, tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    shutil.rmtree(broken / "checkpoints")
    assert deferred_costs.is_pending(run) and not deferred_costs.is_pending(tmp_path / "absent")
    lines = deferred_costs.measure_pending([run, broken], "cpu")
    assert len(lines) == 2 and "img/s on cpu" in lines[0] and "still pending" in lines[1]
    after = read_summary(run)
    assert after["cost"]["measured"] == {
        "device": "cpu",
        "device_share": None,
        "inference": "exclusive, after the grid",
    }
    assert (
        all(after["cost"][k] > 0 for k in ("infer_img_s", "latency_ms")) and after["cost"]["peak_mem_mb"] >= 0
    )
    assert {k: v for k, v in after.items() if k != "cost"} == {k: v for k, v in before.items() if k != "cost"}
    assert deferred_costs.is_pending(broken) and not deferred_costs.is_pending(run)
    assert deferred_costs.measure_one(run, "cpu").endswith("already measured")


def test_a_cpu_run_is_measured_on_the_cpu_where_a_gpu_is_visible(fit_runs, tmp_path, monkeypatch):
    """Ray leaves the GPUs visible to a task without a GPU share: a CPU grid's deferred measurement
    on a GPU node must still time its runs on the CPU, as they ran."""
    run, _ = _pending_copy(fit_runs, tmp_path)
    summary = read_summary(run)
    write_summary(run, {**summary, "config": {**summary["config"], "accelerator": "cpu"}})
    devices = []

    def measured(model, cfg, dev):
        devices.append(dev.type)
        return dict.fromkeys(costs.INFERENCE_KEYS, 1.0)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(deferred_costs, "run_inference_costs", measured)
    assert deferred_costs.measure_one(run, "auto").endswith("img/s on cpu")
    assert devices == ["cpu"] and read_summary(run)["cost"]["measured"]["device_share"] is None


def test_exclusive_task_options_hold_a_whole_device():
    settings = ray_grid.RaySettings(gpus_per_run=0.5, cpus_per_run=2.0)
    gpu_box = [{"CPU": 16.0, "GPU": 2.0}]
    assert exclusive_options(gpu_box, settings, "auto") == {
        "num_gpus": 1.0,
        "num_cpus": 2.0,
        "max_calls": 1,
        "max_retries": 1,
    }
    cpu_nodes = [{"CPU": 2.0}, {"CPU": 8.0}]
    options = exclusive_options(cpu_nodes, settings, "cpu")
    assert options["num_cpus"] == 8.0 and options["num_gpus"] == 0
    assert exclusive_options(gpu_box, settings, "cpu")["num_gpus"] == 0  # a CPU grid on a GPU box


@pytest.mark.parametrize("inference", ["exclusive", "exclusive, after the grid"])
def test_measured_runs_are_not_pending(fit_runs, tmp_path, inference):
    run, _ = _pending_copy(fit_runs, tmp_path)
    summary = read_summary(run)
    summary["cost"]["measured"]["inference"] = inference
    write_summary(run, summary)
    assert not deferred_costs.is_pending(run)

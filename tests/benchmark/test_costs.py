"""measure_inference: finite positive figures, dict outputs, device defaults, mode restored."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from benchmark.evaluation import costs
from benchmark.training import device


class _Tiny(nn.Module):
    def __init__(self, as_dict: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.as_dict = as_dict
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict:
        self.calls.append(tuple(x.shape))
        y = self.conv(x)
        return {"mask": y, "presence": y.mean((2, 3))} if self.as_dict else y


@pytest.mark.parametrize("as_dict", [False, True])
def test_measure_inference_figures(as_dict):
    model = _Tiny(as_dict).train()
    out = costs.measure_inference(model, (32, 48), batch_size=3, warmup=1, iters=2)
    assert set(out) == {"infer_img_s", "latency_ms", "peak_mem_mb"}
    assert all(math.isfinite(v) for v in out.values())
    assert out["infer_img_s"] > 0 and out["latency_ms"] > 0 and out["peak_mem_mb"] >= 0
    assert model.training  # the caller's mode is restored
    # warmup + iters calls at batch 3, then the same at batch 1
    assert model.calls == [(3, 1, 32, 48)] * 3 + [(1, 1, 32, 48)] * 3


def test_cpu_defaults_are_cheap():
    model = _Tiny()
    costs.measure_inference(model, (32, 32))
    assert model.calls == [(4, 1, 32, 32)] * 3 + [(1, 1, 32, 32)] * 3


def test_bf16_autocast_on_cpu_runs():
    out = costs.measure_inference(_Tiny(), (32, 32), batch_size=2, precision="bf16-mixed")
    assert out["infer_img_s"] > 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="precision"):
        costs.measure_inference(_Tiny(), (32, 32), precision="64")
    with pytest.raises(ValueError, match="batch_size"):
        costs.measure_inference(_Tiny(), (32, 32), batch_size=0)


def test_resolve_device():
    assert device.resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert device.resolve_device("auto").type == expected


def test_cuda_request_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    from datamodules.errors import NerveBenchError

    with pytest.raises(NerveBenchError, match="CUDA is not available"):
        device.resolve_device("cuda")


class _FlagProbe(nn.Module):
    """Records the global flags in force while it runs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)
        self.seen: set[tuple[bool, bool]] = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.add((torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark))
        return self.conv(x)


def test_inference_is_measured_with_speed_flags_and_training_flags_come_back():
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
    )
    torch.use_deterministic_algorithms(True, warn_only=True)  # what a run's Trainer leaves behind
    torch.backends.cudnn.benchmark = False
    try:
        probe = _FlagProbe()
        costs.measure_inference(probe, (8, 8), batch_size=2, warmup=1, iters=1)
        assert probe.seen == {(False, True)}  # deterministic off, cudnn.benchmark on, every call
        assert (
            torch.are_deterministic_algorithms_enabled()
            and torch.is_deterministic_algorithms_warn_only_enabled()
        )
        assert torch.backends.cudnn.benchmark is False
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark = before[2]


def test_cuda_peak_memory_counts_only_the_increase_above_the_baseline(monkeypatch):
    """1000 MiB already allocated (a GPU data cache, a previous model) and a peak of 1100 MiB while
    measuring: the figure is the 100 MiB the measurement added (it was 1100 before issue 15)."""
    mib = 2**20
    state = {"allocated": 1000 * mib, "peak": 5000 * mib, "resets": 0}

    def reset(device):
        state["resets"] += 1
        state["peak"] = state["allocated"]

    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", reset)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: state["allocated"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: state["peak"])
    monkeypatch.setattr(costs, "synchronize", lambda device: None)
    with costs.peak_memory(torch.device("cuda")) as mem:
        state["peak"] = 1100 * mib
    assert state["resets"] == 1 and mem["mb"] == pytest.approx(100.0)


def test_cuda_peak_memory_leaves_out_the_autotuners_warm_up_workspace(monkeypatch):
    """cuDNN's autotuner (cudnn.benchmark on) allocates every candidate algorithm's workspace on a
    shape's first call: 600 MiB once, where each later call peaks at 100 MiB. The figure is 100."""
    mib = 2**20
    state = {"allocated": 1000 * mib, "peak": 1000 * mib, "calls": 0}
    monkeypatch.setattr(
        torch.cuda, "reset_peak_memory_stats", lambda d: state.update(peak=state["allocated"])
    )
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: state["allocated"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: state["peak"])
    monkeypatch.setattr(costs, "synchronize", lambda device: None)

    def call():
        state["calls"] += 1
        extra = 600 if state["calls"] == 1 else 100
        state["peak"] = max(state["peak"], state["allocated"] + extra * mib)

    (times,), mb = costs.timed_with_peak([call], torch.device("cuda"), warmup=2, iters=3)
    assert state["calls"] == 5 and len(times) == 3 and mb == pytest.approx(100.0)


def test_a_32_bit_recipe_is_timed_in_ieee_fp32_on_a_gpu_and_the_flag_comes_back(monkeypatch):
    """A fresh process (the deferred measurement's Ray worker) has cuDNN's default TF32 on; a "32"
    run trained and scored with it off, so its inference is timed with it off too."""
    from benchmark.core.config import TrainConfig

    seen = []

    def measure(*args, **kwargs):
        seen.append((torch.backends.cudnn.allow_tf32, kwargs["precision"]))
        return dict.fromkeys(costs.INFERENCE_KEYS, 1.0)

    monkeypatch.setattr(costs, "measure_inference", measure)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    for precision, tf32 in (("32", False), ("bf16-mixed", True)):
        cfg = TrainConfig(model="unet", accelerator="gpu", precision=precision)
        costs.run_inference_costs(nn.Identity(), cfg, torch.device("cuda"))
        assert seen[-1] == (tf32, precision) and torch.backends.cudnn.allow_tf32 is True


def test_weights_mb_counts_parameters_and_buffers():
    model = nn.BatchNorm2d(4)  # 8 parameters + 8 running stats (float32) + 1 int64 counter
    assert costs.weights_mb(model) == pytest.approx((16 * 4 + 8) / 2**20)


def test_a_ray_task_on_a_gpu_share_is_not_exclusive(monkeypatch):
    import sys
    from types import SimpleNamespace

    monkeypatch.delitem(sys.modules, "ray", raising=False)
    assert costs.measured_exclusively() == (True, None)  # no Ray in the process: the local executor

    def fake_ray(assigned):
        def context():
            if assigned is None:
                raise AssertionError("This method is only available when the process is a worker")
            return SimpleNamespace(get_assigned_resources=lambda: assigned)

        return SimpleNamespace(is_initialized=lambda: True, get_runtime_context=context)

    for assigned, expected in [
        ({"CPU": 1.0, "GPU": 0.5}, (False, 0.5)),
        ({"CPU": 1.0, "GPU": 1.0}, (True, 1.0)),
        ({"CPU": 1.0}, (False, 0.0)),
        (None, (True, None)),
    ]:
        monkeypatch.setitem(sys.modules, "ray", fake_ray(assigned))
        assert costs.measured_exclusively() == expected, assigned


def test_scoring_on_a_gpu_convolves_alike_in_every_process_and_puts_the_flags_back(monkeypatch):
    """finalize scores under the training process's flags (an autotuner when the recipe is not
    deterministic), evaluate and predict in fresh processes: on a GPU scoring pins cuDNN to its
    deterministic algorithms without the autotuner (and IEEE fp32 for a "32" recipe) in all three."""
    cudnn = torch.backends.cudnn
    for flag, value in (("deterministic", False), ("benchmark", True), ("allow_tf32", True)):
        monkeypatch.setattr(cudnn, flag, value)
    flags = lambda: (cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32)  # noqa: E731
    with device.scoring_precision(torch.device("cuda"), "32"):
        assert flags() == (True, False, False)
    assert flags() == (False, True, True)
    with pytest.raises(RuntimeError), device.scoring_precision(torch.device("cuda"), "32"):
        raise RuntimeError("scoring failed")
    assert flags() == (False, True, True)  # put back however the block ends
    with device.scoring_precision(torch.device("cpu"), "32"):
        assert flags() == (False, True, True)  # the CPU has no cuDNN to pin

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

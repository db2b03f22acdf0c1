"""Inference cost of a model: batched throughput, batch-1 latency and peak memory.

The leaderboard's speed columns and ``python -m benchmark speed`` both come from
:func:`measure_inference`, so the two always agree. Timing follows the usual rules for
asynchronous devices: warm-up iterations are excluded, the device is synchronised before
each clock read, and ``time.perf_counter`` is the clock.

Global settings: a run's Trainer leaves process-wide switches behind (deterministic algorithms on,
``cudnn.benchmark`` off). Those are training's choices, not inference's, so every measurement runs
under :func:`measurement_flags` (deterministic off, cudnn.benchmark on for the fixed input shape)
and the caller's settings are restored afterwards.

Peak memory: on CUDA it is the model's own weights and buffers and its inputs plus the peak of
tensor memory allocated *above the baseline* during the timed calls (the counter is reset and the
baseline read first, after the warm-up in which cuDNN's autotuner allocates its candidates'
workspaces), so whatever else the process holds (the run's GPU data cache, a previous model,
optimizer state) is not counted; not the caching allocator's reserve or the CUDA context. On CPU
there is no per-allocation counter, so it is the inputs plus the growth of the process' resident
set (``resource.getrusage`` max RSS) during the measurement, which is 0 when the process had
already peaked earlier; it is an upper-bound-ish indicator, not an exact figure.

Exclusive device: a run packed beside others onto one GPU (or onto one node's CPUs) by the Ray
executor measures its neighbours too. :func:`measured_exclusively` tells the two cases apart;
:mod:`benchmark.evaluation.deferred_costs` measures such runs again once the grid is done.
"""

from __future__ import annotations

import contextlib
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator

import torch
from torch import nn

from benchmark.core.config import TrainConfig
from benchmark.training.device import (
    autocast,
    kept_conv_precision,
    kept_determinism_flags,
    resolve_device,
    run_scoring_precision,
    synchronize,
)

INFERENCE_KEYS = ("infer_img_s", "latency_ms", "peak_mem_mb")


def mask_logits(output: torch.Tensor | dict) -> torch.Tensor:
    """The segmentation logits of a registry model (tensor, or dict with ``"mask"``)."""
    return output["mask"] if isinstance(output, dict) else output


def _max_rss_mb() -> float:
    """Peak resident set size of this process in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


@contextlib.contextmanager
def measurement_flags() -> Iterator[None]:
    """Deterministic algorithms off and ``cudnn.benchmark`` on for the block; the caller's settings after."""
    with kept_determinism_flags():
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = True, False
        yield


def weights_mb(model: nn.Module) -> float:
    """MiB of the model's parameters and buffers."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[dict]:
    """Yield a dict whose ``"mb"`` is set on exit to the peak memory *increase* (see module docstring)."""
    out = {"mb": 0.0}
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)  # after the reset: the peak starts here
        yield out
        synchronize(device)
        out["mb"] = max(0, torch.cuda.max_memory_allocated(device) - baseline) / 2**20
    else:
        before = _max_rss_mb()
        yield out
        out["mb"] = max(0.0, _max_rss_mb() - before)


def measured_exclusively() -> tuple[bool, float | None]:
    """(whether this process has its device to itself, its Ray GPU share or None outside a Ray task).

    Inside a Ray task the share is what the executor reserved: below one GPU (``gpus_per_run: 0.5``)
    other runs share the GPU; a CPU-only task shares its node's cores with the grid's other tasks.
    Outside a task (the local executor, one DDP rank per device, a Ray driver) the device is ours.
    """
    ray = sys.modules.get("ray")  # never imported here: only a process Ray already runs in is a task
    if ray is None or not ray.is_initialized():
        return True, None
    try:
        assigned = ray.get_runtime_context().get_assigned_resources()
    except AssertionError:  # the driver: Ray reserves nothing for it
        return True, None
    share = float(assigned.get("GPU", 0.0))
    return share >= 1.0, share


def time_calls(fn: Callable[[], object], device: torch.device, warmup: int, iters: int) -> list[float]:
    """Seconds per call of ``fn`` for ``iters`` timed calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def timed_with_peak(
    calls: list[Callable[[], object]], device: torch.device, warmup: int, iters: int
) -> tuple[list[list[float]], float]:
    """Each call's timed seconds (``time_calls``) and the peak memory increase (MiB) while they ran.

    On CUDA every warm-up runs before the peak window opens: with ``cudnn.benchmark`` on, cuDNN's
    autotuner allocates the workspace of each candidate algorithm while it tunes a shape, a one-off
    that inference never needs again. On CPU the window includes the warm-up, since the resident
    set's high-water mark moves only on the first allocations.
    """
    cuda = device.type == "cuda"
    if cuda:
        for fn in calls:
            time_calls(fn, device, warmup, 0)
    with peak_memory(device) as mem:
        times = [time_calls(fn, device, 0 if cuda else warmup, iters) for fn in calls]
    return times, mem["mb"]


def measure_inference(
    model: nn.Module,
    input_shape: tuple[int, int],
    batch_size: int | None = None,
    device: str | torch.device = "cpu",
    warmup: int | None = None,
    iters: int | None = None,
    precision: str = "32",
) -> dict[str, float]:
    """Inference throughput (img/s at ``batch_size``), median batch-1 latency (ms), peak memory (MiB).

    ``input_shape`` is the network input (H, W); inputs are random single-channel images.
    The model is moved to ``device`` (and left there); its training flag is restored.
    ``None`` for batch_size/warmup/iters picks a device default: (32, 2, 5) on CUDA and a cheap
    (4, 1, 2) on CPU, where this runs once per training run inside the test suite.
    """
    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    batch_size = batch_size if batch_size is not None else (32 if cuda else 4)
    warmup = warmup if warmup is not None else (2 if cuda else 1)
    iters = iters if iters is not None else (5 if cuda else 2)
    if batch_size < 1 or iters < 1 or warmup < 0:
        raise ValueError("batch_size and iters must be >= 1 and warmup >= 0")
    was_training = model.training
    model = model.to(dev).eval()
    h, w = input_shape

    def run(x: torch.Tensor) -> Callable[[], object]:
        def call() -> object:
            with autocast(dev, precision):
                return mask_logits(model(x))

        return call

    try:
        with measurement_flags(), torch.inference_mode():
            inputs = (torch.randn(batch_size, 1, h, w, device=dev), torch.randn(1, 1, h, w, device=dev))
            (batched, latency), mb = timed_with_peak([run(x) for x in inputs], dev, warmup, iters)
    finally:
        model.train(was_training)
    # The inputs were allocated before the peak window: they count as inference memory too.
    inputs_mb = sum(x.numel() * x.element_size() for x in inputs) / 2**20
    peak = mb + inputs_mb + (weights_mb(model) if cuda else 0.0)
    return {
        "infer_img_s": batch_size * len(batched) / max(sum(batched), 1e-9),
        "latency_ms": 1000.0 * max(statistics.median(latency), 1e-9),
        "peak_mem_mb": float(peak),
    }


def run_inference_costs(model: nn.Module, cfg: TrainConfig, device: torch.device) -> dict[str, float]:
    """The leaderboard's inference columns of a run's model: its network input size and precision."""
    from datamodules.geometry import input_shape

    shape = input_shape(cfg.resize_mode, cfg.image_size)  # 448x608 in pad mode, not image_size²
    precision = run_scoring_precision(cfg.precision, cfg.accelerator, device)
    # As the run scores: a "32" recipe convolves in IEEE fp32 on a GPU. A fresh process (the deferred
    # measurement's Ray worker) would otherwise time it with cuDNN's default TF32.
    with kept_conv_precision(precision if device.type == "cuda" else None):
        measured = measure_inference(model, shape, None, device, precision=precision)
    return {k: float(measured[k]) for k in INFERENCE_KEYS}


def device_label(device: torch.device) -> str:
    """The device's name as a summary records it: the GPU's model, or ``cpu``."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type

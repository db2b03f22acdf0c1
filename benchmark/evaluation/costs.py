"""Inference cost of a model: batched throughput, batch-1 latency and peak memory.

The leaderboard's speed columns and ``python -m benchmark speed`` both come from
:func:`measure_inference`, so the two always agree. Timing follows the usual rules for
asynchronous devices: warm-up iterations are excluded, the device is synchronised before
each clock read, and ``time.perf_counter`` is the clock.

Peak memory: on CUDA it is ``torch.cuda.max_memory_allocated`` during the measurement (the
counter is reset first), i.e. tensor memory only, not the caching allocator's reserve or the
CUDA context. On CPU there is no per-allocation counter, so it is the growth of the process'
resident set (``resource.getrusage`` max RSS) during the measurement, which is 0 when the
process had already peaked earlier; it is an upper-bound-ish indicator, not an exact figure.
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

from benchmark.training.device import autocast, resolve_device, synchronize


def mask_logits(output: torch.Tensor | dict) -> torch.Tensor:
    """The segmentation logits of a registry model (tensor, or dict with ``"mask"``)."""
    return output["mask"] if isinstance(output, dict) else output


def _max_rss_mb() -> float:
    """Peak resident set size of this process in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[dict]:
    """Yield a dict whose ``"mb"`` is set on exit to the peak memory (see module docstring)."""
    out = {"mb": 0.0}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        yield out
        out["mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        before = _max_rss_mb()
        yield out
        out["mb"] = max(0.0, _max_rss_mb() - before)


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
    batch = torch.randn(batch_size, 1, h, w, device=dev)
    single = batch[:1].clone()

    def run(x: torch.Tensor) -> Callable[[], object]:
        def call() -> object:
            with autocast(dev, precision):
                return mask_logits(model(x))

        return call

    try:
        with torch.inference_mode(), peak_memory(dev) as mem:
            batched = time_calls(run(batch), dev, warmup, iters)
            latency = time_calls(run(single), dev, warmup, iters)
    finally:
        model.train(was_training)
    return {
        "infer_img_s": batch_size * len(batched) / max(sum(batched), 1e-9),
        "latency_ms": 1000.0 * max(statistics.median(latency), 1e-9),
        "peak_mem_mb": float(mem["mb"]),
    }

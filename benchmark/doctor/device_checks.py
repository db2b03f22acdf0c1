"""The device itself: what it is, and that bf16, torch.compile, channels_last and the GPU data cache
work on it. Each check compares against plain fp32 eager PyTorch on the same device with a stated
tolerance, so "works" means "computes the same thing", not only "does not raise".
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from benchmark.doctor.report import WARN, Finding

if TYPE_CHECKING:
    from datamodules.gpu_augment import GpuBatchIterator, GpuCache

BF16_RTOL = 5e-2  # bf16 keeps 8 mantissa bits: ~0.4% per op, a few ops deep
COMPILE_ATOL = 1e-4  # fp32; inductor may fuse and reorder reductions
LAYOUT_ATOL = 1e-4  # fp32 channels_last vs contiguous convolutions


def _mem_gib() -> float:
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return float("nan")
    return pages * size / 2**30


# DataLoader workers hand their batches over through /dev/shm. At the GPU sizes the plain loop keeps
# 16 batches of 64 in flight (8 workers x prefetch 2; image and mask at 256x256 in float32: 0.5 GiB)
# and the benchmark's scoring loaders a few hundred MiB more. A container's default is 64 MiB, where
# a worker dies with a bus error. The CPU doctor's loaders decode in the process: no need there.
SHM_NEED_GIB = 1.0


def shm_need_gib(dev: torch.device) -> float:
    return SHM_NEED_GIB if dev.type == "cuda" else 0.0


def _shm_gib() -> float | None:
    try:
        return round(shutil.disk_usage("/dev/shm").total / 2**30, 2)
    except OSError:  # none on this platform
        return None


def shm_problem(shm_gib: float | None, need_gib: float, gpus: int = 0) -> str | None:
    """What a too small /dev/shm will do, or None; with several GPUs, NCCL's buffers between them
    live there too (a DDP run fails at its first collective)."""
    if shm_gib is None or shm_gib >= need_gib:
        return None
    users = "the DataLoader workers" + (f" and NCCL between the {gpus} GPUs" if gpus > 1 else "")
    return (
        f"/dev/shm holds {shm_gib:.2f} GiB, under the {need_gib:g} GiB {users} need here "
        "(a worker would die with a bus error): give the container more (docker run --shm-size=2g)"
    )


def device_info(dev: torch.device) -> Finding:
    """Device name and memory, torch, CUDA and cuDNN versions; WARN when /dev/shm is too small."""
    from benchmark.core.summary import device_name

    figures = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "host_memory_gib": round(_mem_gib(), 1),
    }
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        figures.update(
            name=props.name,
            memory_gib=round(props.total_memory / 2**30, 1),
            gpus=torch.cuda.device_count(),
            cudnn=torch.backends.cudnn.version(),
            capability=f"{props.major}.{props.minor}",
        )
        detail = (
            f"{props.name}, {figures['memory_gib']} GiB, {figures['gpus']} GPU(s), "
            f"compute {figures['capability']}; torch {torch.__version__}, CUDA {torch.version.cuda}, "
            f"cuDNN {figures['cudnn']}"
        )
    else:
        figures.update(name=device_name(dev), memory_gib=figures["host_memory_gib"], gpus=0)
        build = "CPU build"
        if torch.version.cuda:
            seen = "a GPU present, not used" if torch.cuda.is_available() else "no GPU visible"
            build = f"CUDA {torch.version.cuda} build, {seen}"
        detail = f"{figures['name']}, {figures['memory_gib']} GiB RAM; torch {torch.__version__} ({build})"
    figures["shm_gib"] = _shm_gib()
    problem = shm_problem(figures["shm_gib"], shm_need_gib(dev), figures["gpus"])
    return Finding(f"{detail}; {problem}", figures, WARN) if problem else Finding(detail, figures)


# Host load above this many runnable processes per CPU (plus one: the doctor itself) is other work.
BUSY_LOAD_PER_CPU = 0.5
# GPU memory in use before the doctor allocates anything, beyond its own CUDA context (~0.5 GiB).
BUSY_GPU_GIB = 2.0
BUSY_GPU_UTIL = 10  # percent, over the driver's last sample period


def idle(dev: torch.device) -> Finding:
    """Whether other work shares this box: rates measured beside it are low (a helper measured unet
    at 1.4 img/s on a loaded 2-core box against 131-143 alone) and the estimate scales from them.
    The load average is the host's, so it is set against the host's CPUs, not this process's share.
    WARN, never FAIL: the checks still say whether the box works; a figure the platform lacks is '-'."""
    cpus, load = os.cpu_count() or 1, _host_load()
    figures: dict[str, float | int | None] = {"host_load_1min": load, "host_cpus": cpus}
    detail = f"host load {_show(load, '.1f')} on {cpus} CPU(s)"
    busy = [detail] if load is not None and load > BUSY_LOAD_PER_CPU * cpus + 1 else []
    if dev.type == "cuda":
        used, util = _gpu_in_use(dev), _gpu_utilization(dev)
        figures.update(gpu_used_gib=used, gpu_util_percent=util)
        detail += f"; {_show(used, '.1f')} GiB of the GPU in use, utilisation {_show(util)}%"
        if used is not None and used > BUSY_GPU_GIB:
            busy.append(f"{used:.1f} GiB of the GPU in use by others")
        if util is not None and util > BUSY_GPU_UTIL:
            busy.append(f"GPU {util}% busy")
    if busy:
        return Finding(f"busy: {'; '.join(busy)}: rates and the estimate may read low", figures, WARN)
    return Finding(f"idle: {detail}", figures)


def _show(value: float | None, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def _host_load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # no load average on this platform
        return None


def _gpu_in_use(dev: torch.device) -> float | None:
    """GiB of the device's memory in use (by every process, this one's CUDA context included)."""
    try:
        free, total = torch.cuda.mem_get_info(dev)
    except RuntimeError:
        return None
    return round((total - free) / 2**30, 2)


def _gpu_utilization(dev: torch.device) -> int | None:
    """The driver's utilisation figure (needs pynvml, from nvidia-ml-py); None without it."""
    try:
        return int(torch.cuda.utilization(dev))
    except Exception:  # noqa: BLE001 - pynvml absent or the driver refuses: the figure is optional
        return None


def _net(channels: int = 8) -> nn.Module:
    """Convolution, normalisation, activation: the ops every model is made of, and few kernels to
    generate (inductor's C++ compile on a CPU box costs seconds per kernel)."""
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, 1, 1)
    )


def _inputs(dev: torch.device, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 1, size, size, generator=g).to(dev)


@contextlib.contextmanager
def _ieee_fp32() -> Iterator[None]:
    """cuDNN runs fp32 convolutions in TF32 (10 mantissa bits) by default, and two kernels round
    differently: a check comparing two fp32 paths runs without it, so its tolerance measures the
    feature under test, not TF32 rounding (a 2-ulp change before a TF32 convolution moved the
    compile check's output by 3e-4 in an emulation, over its 1e-4 tolerance)."""
    from benchmark.training.device import kept_conv_precision

    with kept_conv_precision("32"):
        yield


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@_ieee_fp32()
def bf16(dev: torch.device) -> Finding:
    """A forward and backward pass under bf16 autocast agrees with fp32 within BF16_RTOL."""
    from benchmark.training.device import autocast

    if dev.type == "cuda" and torch.cuda.get_device_capability(dev) < (8, 0):
        # is_bf16_supported() says True here: torch emulates bf16, but cuDNN has no bf16 convolution
        raise RuntimeError(
            f"compute capability {'.'.join(map(str, torch.cuda.get_device_capability(dev)))}: no native "
            "bf16 before 8.0 (Ampere); precision: auto trains 16-mixed here, and a bf16-mixed recipe "
            "(gpu.yaml) needs --set precision=16-mixed"
        )
    torch.manual_seed(0)
    net, x = _net().to(dev), _inputs(dev)
    ref = net(x)
    with autocast(dev, "bf16-mixed"):
        out = net(x)
    out.float().square().mean().backward()
    grads_finite = all(torch.isfinite(p.grad).all() for p in net.parameters())
    err = _rel_err(out, ref)
    if out.dtype != torch.bfloat16 or not grads_finite or err > BF16_RTOL:
        raise RuntimeError(f"bf16 output {out.dtype}, finite grads {grads_finite}, rel. error {err:.3g}")
    return Finding(
        f"autocast conv fwd/bwd in bfloat16, rel. error vs fp32 {err:.1e} (< {BF16_RTOL})", {"rel_error": err}
    )


@_ieee_fp32()
def compile_works(dev: torch.device, backend: str) -> Finding:
    """``torch.compile`` builds a conv net, and its forward and gradients match eager within COMPILE_ATOL."""
    torch.manual_seed(0)
    net, x = _net().to(dev).train(), _inputs(dev)
    eager = net(x)
    eager.square().mean().backward()
    eager_grad = net[0].weight.grad.clone()
    net.zero_grad(set_to_none=True)
    start = time.perf_counter()
    compiled = torch.compile(net, backend=backend)
    out = compiled(x)
    out.square().mean().backward()
    seconds = time.perf_counter() - start
    torch._dynamo.reset()  # free the compiled graph; the suite never reuses it
    grad = net[0].weight.grad
    diff = max(float((out - eager).detach().abs().max()), float((grad - eager_grad).abs().max()))
    if diff > COMPILE_ATOL:
        raise RuntimeError(f"compiled output/gradient differ from eager by {diff:.3g} (> {COMPILE_ATOL})")
    return Finding(
        f"backend {backend}: compiled in {seconds:.1f} s, matches eager to {diff:.1e}",
        {"backend": backend, "compile_s": seconds, "max_abs_diff": diff},
    )


@_ieee_fp32()
def channels_last(dev: torch.device, model: str = "unet", kwargs: dict | None = None) -> Finding:
    """A registered model in channels_last gives the contiguous result (fp32, LAYOUT_ATOL)."""
    from models import create

    torch.manual_seed(0)
    net = create(model, in_channels=1, **(kwargs or {"base_width": 8, "depth": 2})).to(dev).eval()
    x = _inputs(dev, 64)
    # the layout of the first convolution's features: a 1-channel output is channels_last either way
    conv = next(m for m in net.modules() if isinstance(m, nn.Conv2d) and m.out_channels > 1)
    seen: list[bool] = []
    with torch.no_grad():
        ref = net(x)
        net = net.to(memory_format=torch.channels_last)
        hook = conv.register_forward_hook(
            lambda m, i, o: seen.append(o.is_contiguous(memory_format=torch.channels_last))
        )
        out = net(x.contiguous(memory_format=torch.channels_last))
        hook.remove()
    ref, out = (t["mask"] if isinstance(t, dict) else t for t in (ref, out))
    diff = float((out - ref).abs().max())
    if diff > LAYOUT_ATOL:
        raise RuntimeError(f"{model} in channels_last differs from contiguous by {diff:.3g}")
    layout = "channels_last" if seen[0] else "contiguous"
    return Finding(
        f"{model} forward matches contiguous to {diff:.1e} (features {layout})",
        {"max_abs_diff": diff, "features_channels_last": seen[0]},
    )


def gpu_cache(dev: torch.device, data_dir: Path, size: int, batch_size: int) -> Finding:
    """The uint8 cache on ``dev`` yields augmented batches that are well-formed and the same for the
    same seed (the augmentation stream a resumed run replays)."""
    from benchmark.speed import build_cache

    cache = build_cache(data_dir, size, dev)
    batch = min(batch_size, len(cache))

    def first(seed: int) -> dict[str, torch.Tensor]:
        return next(iter(_iterator(cache, batch, seed)))

    one, again, other = first(0), first(0), first(1)
    mask, image = one["mask"], one["image"]
    problems = [
        f"on {image.device}" if image.device.type != dev.type else "",
        f"shape {tuple(image.shape)}" if tuple(image.shape) != (batch, 1, size, size) else "",
        "mask not binary" if not bool(((mask == 0) | (mask == 1)).all()) else "",
        "non-finite image" if not bool(torch.isfinite(image).all()) else "",
        "same seed, different batch" if not all(torch.equal(one[k], again[k]) for k in one) else "",
        "other seed, same batch" if torch.equal(one["image"], other["image"]) else "",
    ]
    if any(problems):
        raise RuntimeError("; ".join(p for p in problems if p))
    rate = _augment_rate(cache, batch, dev)
    mb = (cache.images.numel() + cache.masks.numel()) / 2**20
    return Finding(
        f"{len(cache)} frames ({mb:.1f} MiB) on {dev.type}; augmented batches well-formed and "
        f"replayable; {rate:.0f} img/s augmentation",
        {"frames": len(cache), "augment_img_s": rate},
    )


def _augment_rate(cache: object, batch: int, dev: torch.device) -> float:
    from benchmark.training.device import synchronize

    loader = _iterator(cache, batch, 0)
    synchronize(dev)
    start, images = time.perf_counter(), 0
    for _ in range(2):
        for b in loader:
            images += int(b["image"].shape[0])
    synchronize(dev)
    return images / max(time.perf_counter() - start, 1e-9)


def _iterator(cache: GpuCache, batch: int, seed: int) -> GpuBatchIterator:
    """The training stream over ``cache``: the recipe's default augmentation, one rank."""
    from datamodules.data_config import AugmentConfig
    from datamodules.gpu_augment import GpuBatchIterator
    from datamodules.samplers import TrainSampler

    return GpuBatchIterator(cache, TrainSampler(len(cache), batch, seed), AugmentConfig(), seed=seed)

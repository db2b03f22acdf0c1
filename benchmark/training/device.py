"""Where a run computes and in what precision: device choice, autocast, precision resolution.

One home for these so training, evaluation, prediction and the speed command agree on them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from benchmark.core.world import accelerator_is_gpu, auto_precision
from datamodules.errors import NerveBenchError

_PRECISIONS = ("32", "bf16-mixed", "16-mixed")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> cuda when available, else cpu; anything else is passed to torch.device."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise NerveBenchError(f"device {str(device)!r} requested but CUDA is not available")
    return dev


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels so a clock read measures finished work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast context for a Lightning-style precision string ("32" = none)."""
    if precision not in _PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {', '.join(_PRECISIONS)}")
    if precision == "32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def set_conv_precision(precision: str) -> None:
    """cuDNN runs float32 convolutions in TF32 (10-bit mantissas) unless told otherwise, so a "32"
    recipe on a GPU would not be float32: off for it, torch's default (on) for the mixed ones,
    whose convolutions run in 16 bits anyway. Global: set for each run, before its Trainer."""
    torch.backends.cudnn.allow_tf32 = precision != "32"


@contextlib.contextmanager
def kept_conv_precision(precision: str | None = None) -> Iterator[None]:
    """cuDNN's TF32 switch for float32 convolutions, as found before the block, after it; inside,
    set for ``precision`` (:func:`set_conv_precision`) when one is given."""
    saved = torch.backends.cudnn.allow_tf32
    try:
        if precision is not None:
            set_conv_precision(precision)
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = saved


@contextlib.contextmanager
def kept_determinism_flags() -> Iterator[None]:
    """The process-wide switches that building and running a Trainer flips (Lightning: torch's and
    cuDNN's determinism; ``build_trainer``: cuDNN's TF32) as they were, after the block."""
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
    )
    try:
        with kept_conv_precision():
            yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2], saved[3]


@contextlib.contextmanager
def scoring_precision(device: torch.device, precision: str) -> Iterator[None]:
    """:func:`autocast` for scoring, with float32 convolutions for a "32" recipe on a GPU (cuDNN's TF32
    off, as :func:`set_conv_precision` trains it): ``evaluate`` and ``predict`` build no Trainer, and
    a checkpoint scores there as its run scored it. On a GPU also cuDNN's deterministic algorithms
    and no autotuner, whatever the process set: finalize (in the training process, under the
    recipe's flags), ``evaluate`` and ``predict`` (fresh processes) then convolve alike, and a bf16
    pixel near the threshold cannot flip between them. Every flag is as found afterwards."""
    with kept_determinism_flags(), autocast(device, precision):
        if device.type == "cuda":
            set_conv_precision(precision)
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        yield


def resolve_precision(precision: str, accelerator: str) -> str:
    """ "auto" -> ``world.auto_precision``: bf16-mixed on an Ampere or later GPU, 16-mixed on an older
    one, 32-bit on CPU."""
    if precision != "auto":
        return precision
    return auto_precision(accelerator_is_gpu(accelerator))


def run_scoring_precision(precision: str, accelerator: str, device: torch.device) -> str:
    """The precision a run is scored (and its inference timed) in on ``device``: the recipe's on a
    GPU, float32 on a CPU whatever it trained in, as evaluate and predict score it there
    (``checkpoint.scoring_precision_of``): bf16 autocast on a CPU moves pixels near the threshold."""
    return resolve_precision(precision, accelerator) if device.type == "cuda" else "32"


def eval_device() -> torch.device:
    """The device for single-process scoring (evaluate, finalize): the GPU when there is one."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def release_run_memory(compiled: bool) -> None:
    """Free what a finished (or failed) run leaves in a process that trains several (the local
    executor): the Trainer's reference cycles hold its device data cache until a collection, the
    caching allocator keeps the freed blocks, and torch.compile's cache keeps every run's graphs up
    to dynamo's recompile limit (8 per code object; the four smp U-Nets share one forward, 2 graphs
    each), past which a model trains uncompiled with one warning."""
    import gc

    gc.collect()
    if compiled:
        torch._dynamo.reset()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

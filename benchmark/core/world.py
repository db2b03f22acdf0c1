"""A run's world on this machine: whether its accelerator means CUDA devices, how many devices
``devices: auto`` gives it, and the precision ``precision: auto`` trains in. Imports torch only when
asked about this machine."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from benchmark.core.config import TrainConfig


def accelerator_is_gpu(accelerator: str) -> bool:
    """Whether ``accelerator`` (a config's, or a device type) means CUDA devices; ``auto`` resolved on
    this machine (torch imported only then)."""
    if accelerator in ("gpu", "cuda"):
        return True
    if accelerator != "auto":
        return False
    import torch

    return bool(torch.cuda.is_available())


def resolve_devices(cfg: TrainConfig, gpus: int | None = None) -> TrainConfig:
    """``devices: auto`` replaced by the count a run will use (checked against the global batch).
    ``gpus``: the GPUs the run sees (default: this machine's); CPU runs use one."""
    if cfg.devices != "auto":
        return cfg
    if cfg.accelerator == "cpu":
        return dataclasses.replace(cfg, devices=1)
    if gpus is None:
        import torch

        gpus = torch.cuda.device_count()
    return dataclasses.replace(cfg, devices=max(1, gpus))


def resolve_auto_precision(cfg: TrainConfig, gpus: int | None = None) -> TrainConfig:
    """``precision: auto`` replaced by what the run trains in (:func:`auto_precision`). ``gpus``:
    the GPUs a Ray task gets (None: this machine decides, by the accelerator). Resolved before the run
    is named, so that its hash and the board record the precision it used: runs of one config made on
    a GPU box and on a CPU box would otherwise share a hash and a board with different recipes."""
    if cfg.precision != "auto":
        return cfg
    if gpus is None:
        return dataclasses.replace(cfg, precision=auto_precision(accelerator_is_gpu(cfg.accelerator)))
    # a Ray driver need not see its tasks' GPUs, so it cannot ask their compute capability
    return dataclasses.replace(cfg, precision="bf16-mixed" if cfg.accelerator != "cpu" and gpus > 0 else "32")


def auto_precision(on_gpu: bool) -> str:
    """What ``precision: auto`` trains in: 32 on a CPU; on this machine's GPU, bf16-mixed from
    compute capability 8.0 (Ampere) on, 16-mixed before it. torch emulates bf16 on older GPUs
    (``is_bf16_supported()`` says True there), but cuDNN has no bf16 convolution before 8.0, so every
    convolution would take the slow fallback kernel."""
    if not on_gpu:
        return "32"
    import torch

    if not torch.cuda.is_available():  # accelerator: gpu with none visible, refused before training
        return "bf16-mixed"
    return "bf16-mixed" if torch.cuda.get_device_capability() >= (8, 0) else "16-mixed"


def torch_build() -> str:
    """This torch and its build, for a line saying that no GPU is visible: ``torch 2.13.0+cpu, a
    CPU-only build`` or ``torch 2.11.0+cu130, CUDA 13.0 build``."""
    import torch

    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
    return f"torch {torch.__version__}, {build}"

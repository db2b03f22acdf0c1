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
    """``precision: auto`` replaced by what the run trains in: bf16-mixed on a GPU, else 32. ``gpus``:
    the GPUs a Ray task gets (None: this machine decides, by the accelerator). Resolved before the run
    is named, so that its hash and the board record the precision it used: runs of one config made on
    a GPU box and on a CPU box would otherwise share a hash and a board with different recipes."""
    if cfg.precision != "auto":
        return cfg
    on_gpu = accelerator_is_gpu(cfg.accelerator) if gpus is None else cfg.accelerator != "cpu" and gpus > 0
    return dataclasses.replace(cfg, precision="bf16-mixed" if on_gpu else "32")


def torch_build() -> str:
    """This torch and its build, for a line saying that no GPU is visible: ``torch 2.13.0+cpu, a
    CPU-only build`` or ``torch 2.11.0+cu130, CUDA 13.0 build``."""
    import torch

    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
    return f"torch {torch.__version__}, {build}"

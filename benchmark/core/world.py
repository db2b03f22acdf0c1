"""A run's world on this machine: whether its accelerator means CUDA devices, and how many devices
``devices: auto`` gives it. Imports torch only when asked about this machine."""

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


def torch_build() -> str:
    """This torch and its build, for a line saying that no GPU is visible: ``torch 2.13.0+cpu, a
    CPU-only build`` or ``torch 2.11.0+cu130, CUDA 13.0 build``."""
    import torch

    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
    return f"torch {torch.__version__}, {build}"

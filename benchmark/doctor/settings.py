"""What the doctor measures and at which sizes: full sizes on a GPU, tiny ones on a CPU.

On a GPU every fit uses ``gpu.yaml``'s training recipe (bf16-mixed, channels_last, the GPU data
cache) at the default benchmark's image size and batch; on a CPU the default config's ``synthetic:``
recipe (fp32, no GPU cache) at 64x64 with the smoke config's tiny model widths. Only the number of
steps is cut: the code paths are the benchmark's own.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmark.core.config import TrainConfig, load_benchmark_config

if TYPE_CHECKING:  # the CLI imports this module for --help: no torch import at load time
    import torch

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CHECKS = (
    "device",
    "idle",
    "data",
    "bf16",
    "compile",
    "channels_last",
    "gpu_cache",
    "models",
    "ddp",
    "ray",
    "estimate",
)
SUBJECTS = 6  # 3 outer folds of 2 subjects; the inner set is 1 subject, the fit part 3
# Per device type: image size, batch, timed steps, warm-up steps, training batches of each short fit.
DEFAULTS = {
    "cuda": {"image_size": 256, "batch_size": 64, "steps": 10, "warmup": 3, "fit_batches": 4, "tiny": False},
    "cpu": {"image_size": 64, "batch_size": 4, "steps": 2, "warmup": 1, "fit_batches": 2, "tiny": True},
}


@dataclass(frozen=True)
class DoctorSettings:
    device: str = "auto"
    models: tuple[str, ...] = ()  # () = every registered model
    image_size: int | None = None  # None: the device's default (DEFAULTS)
    batch_size: int | None = None
    steps: int | None = None
    warmup: int | None = None
    fit_batches: int | None = None
    tiny: bool | None = None  # the smoke config's small widths for the custom U-Nets
    compile_backend: str = "inductor"
    skip: tuple[str, ...] = ()
    data_dir: Path | None = None  # a Kaggle layout; None: synthetic data generated for the doctor
    budget_s: float | None = None  # no check starts after this many seconds (the estimate excepted)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.skip) - set(CHECKS))
        if unknown:
            raise ValueError(f"--skip: unknown check(s) {', '.join(unknown)}; known: {', '.join(CHECKS)}")
        for key in ("image_size", "batch_size", "steps", "warmup", "fit_batches"):
            value, least = getattr(self, key), 0 if key == "warmup" else 1
            if value is not None and value < least:
                raise ValueError(f"{key.replace('_', '-')} must be at least {least}, got {value}")
        if self.budget_s is not None and not self.budget_s > 0:
            raise ValueError(f"budget-s must be positive, got {self.budget_s}")
        if self.image_size is not None and self.image_size % 32:
            raise ValueError(f"image-size must be a multiple of 32, got {self.image_size}")


def resolve(s: DoctorSettings, dev: torch.device) -> DoctorSettings:
    """``s`` with every ``None`` replaced by ``dev``'s default and the model list filled in."""
    from models import list_models

    filled = {
        k: v for k, v in DEFAULTS["cuda" if dev.type == "cuda" else "cpu"].items() if getattr(s, k) is None
    }
    return dataclasses.replace(s, models=s.models or tuple(list_models()), **filled)


def model_kwargs(s: DoctorSettings) -> dict[str, dict]:
    """Per-model factory kwargs: the smoke config's tiny widths when ``s.tiny``, else none."""
    if not s.tiny:
        return {}
    return {k: dict(v) for k, v in load_benchmark_config(CONFIGS / "smoke.yaml").model_kwargs.items()}


def recipe(dev: torch.device) -> TrainConfig:
    """The training recipe a fit uses on ``dev``: gpu.yaml's, or default.yaml's CPU fallback."""
    from benchmark.fallback import synthetic_benchmark

    if dev.type == "cuda":
        return dataclasses.replace(load_benchmark_config(CONFIGS / "gpu.yaml").train, accelerator="gpu")
    return synthetic_benchmark(load_benchmark_config(CONFIGS / "default.yaml")).train


def train_config(model: str, s: DoctorSettings, dev: torch.device, **changes: Any) -> TrainConfig:
    """One short run of ``model``: the recipe at the doctor's sizes, fold 0 of 3, one epoch."""
    base = recipe(dev)
    fields = {
        "model": model,
        "model_kwargs": model_kwargs(s).get(model, {}),
        "n_folds": 3,
        "fold": 0,
        "seed": 0,
        "epochs": 1,
        "limit_train_batches": s.fit_batches,
        "image_size": s.image_size,
        "batch_size": s.batch_size,
        "eval_batch_size": min(base.eval_batch_size, 2 * s.batch_size),
        "warmup_epochs": 0.0,
        "devices": 1,
        "logger": "none",
        "progress_bar": False,
    }
    return dataclasses.replace(base, **{**fields, **changes})


def per_subject(batch_size: int) -> int:
    """Frames per synthetic subject: about 8 training batches per epoch (speed's amortisation) and
    at least two batches in a fit part of three subjects."""
    return max(4, math.ceil(10 * batch_size / SUBJECTS))

"""Experiment configuration: frozen dataclasses, one small YAML per experiment, validated overrides.

``TrainConfig`` describes one (model, fold, seed) run; ``BenchmarkConfig`` the grid around it.
Only primitives live here so configs hash, serialise and land in checkpoints unchanged.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from datamodules.errors import NerveBenchError

SCHEMA_VERSION = 1
# Fields that change how a run is executed or logged but not what it computes.
_NOT_HASHED = {"num_workers", "logger", "wandb_project", "wandb_group", "progress_bar"}
_CHOICES = {
    "resize_mode": ("resize", "pad"),
    "scheduler": ("cosine", "none"),
    "precision": ("auto", "32", "bf16-mixed", "16-mixed"),
    "logger": ("none", "csv", "wandb"),
    "accelerator": ("auto", "cpu", "gpu", "cuda"),
    "select": ("best", "last"),
}


class ConfigError(NerveBenchError):
    """An unknown key, a wrong type or an invalid value in a config or override."""


@dataclass(frozen=True)
class TrainConfig:
    model: str = "unet"
    model_kwargs: dict = field(default_factory=dict)
    fold: int = 0
    n_folds: int = 5
    holdout_fraction: float | None = None  # set to use one subject-grouped hold-out instead of K-fold
    split_seed: int = 0  # fixed per benchmark: fold and inner-split assignment (never varied by `seed`)
    inner_fraction: float = 0.15  # share of each outer training part's subjects held out for selection
    select: str = "best"  # checkpoint chosen on the inner set: "best" epoch or the "last" one
    seed: int = 0  # replicates initialisation and augmentation only
    epochs: int = 10
    limit_train_batches: int | None = None  # cap steps/epoch (smoke runs)
    image_size: int = 256
    resize_mode: str = "resize"  # "resize": SxS; "pad": pad 420x580 to a multiple of 32
    batch_size: int = 16
    eval_batch_size: int = 64
    num_workers: int = 0
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    scheduler: str = "cosine"
    bce_weight: float = 1.0
    dice_weight: float = 1.0
    presence_weight: float = 0.5
    bbox_weight: float = 0.5
    augment: bool = True
    aug_flip: bool = True
    aug_affine: bool = True
    aug_elastic: bool = False
    aug_brightness: bool = True
    aug_noise: bool = True
    clean_contradictory: bool = False
    encoder_weights: str | None = None
    precision: str = "auto"  # auto: bf16-mixed on GPU, 32 on CPU
    accelerator: str = "auto"
    devices: int | str = 1  # "auto": every visible GPU, with DDP
    num_nodes: int = 1  # multi-node DDP under torchrun/SLURM (Lightning reads the launcher's env)
    channels_last: bool = False
    compile: bool = False
    gpu_cache: bool = False  # uint8 dataset cache + augmentation on the GPU
    tta: bool = False
    deterministic: bool = True
    logger: str = "csv"
    wandb_project: str = "nerve-bench"
    wandb_group: str | None = None
    progress_bar: bool = True

    def __post_init__(self) -> None:
        for key, allowed in _CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{key}={getattr(self, key)!r} is not one of {', '.join(allowed)}")
        if self.image_size % 32:
            raise ConfigError(f"image_size={self.image_size} must be a multiple of 32")
        if not 0 <= self.fold < self.n_folds:
            raise ConfigError(f"fold={self.fold} is outside 0..{self.n_folds - 1}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch_size must be at least 1")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """Short content hash of everything that changes what the run computes."""
        payload = {k: v for k, v in self.to_dict().items() if k not in _NOT_HASHED}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]

    def run_name(self) -> str:
        safe = self.model.replace(":", "-").replace("/", "-")
        return f"{safe}__f{self.fold}__s{self.seed}__{self.hash()}"


def _coerce(name: str, value: Any, current: Any, annotation: str) -> Any:
    """Turn a YAML/CLI value into the field's type, or raise ConfigError naming the field."""
    if isinstance(value, str) and annotation != "str":
        lowered = value.strip().lower()
        if lowered in ("none", "null", ""):
            value = None
        elif lowered in ("true", "false"):
            value = lowered == "true"
        else:
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                pass
    if value is None:
        if "None" in annotation:
            return None
        raise ConfigError(f"{name} may not be null")
    kinds = [k.strip() for k in annotation.split("|") if k.strip() != "None"]
    for kind in kinds:
        ok = {
            "int": isinstance(value, int) and not isinstance(value, bool),
            "bool": isinstance(value, bool),
            "str": isinstance(value, str),
            "dict": isinstance(value, dict),
            "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        }.get(kind, False)
        if ok:
            return float(value) if kind == "float" else value
    raise ConfigError(f"{name}={value!r} should be {annotation}")


def apply_overrides(cfg: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """Return a copy of ``cfg`` with validated overrides (unknown keys get a suggestion)."""
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    changes = {}
    for key, value in overrides.items():
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown config key {key!r}{hint}")
        changes[key] = _coerce(key, value, getattr(cfg, key), str(fields[key].type))
    return dataclasses.replace(cfg, **changes)


def parse_set_args(pairs: list[str] | None) -> dict[str, Any]:
    """Parse CLI ``--set key=value`` pairs."""
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = value
    return out


@dataclass(frozen=True)
class BenchmarkConfig:
    name: str
    models: tuple[str, ...]
    folds: tuple[int, ...]
    seeds: tuple[int, ...]
    train: TrainConfig
    synthetic: dict = field(default_factory=dict)  # fallback data when --data-dir has no train/
    model_kwargs: dict = field(default_factory=dict)  # per-model TrainConfig.model_kwargs, by model name
    executor: str = "local"  # "local": one run after another; "ray": each run a Ray task
    gpus_per_run: float = 1.0  # Ray resources per run (fractions pack several runs onto one GPU)
    cpus_per_run: float = 1.0
    ray_address: str | None = None  # join this Ray cluster (else RAY_ADDRESS, else a local one)


def load_benchmark_config(path: str | Path) -> BenchmarkConfig:
    """Load a benchmark YAML: ``name, models, folds, seeds, train: {TrainConfig overrides}, synthetic``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})") from None
    allowed = {"name", "models", "folds", "seeds", "train", "synthetic", "model_kwargs"}
    unknown = set(raw) - allowed
    if unknown:
        raise ConfigError(f"{path}: unknown top-level keys {sorted(unknown)}; allowed: {sorted(allowed)}")
    try:
        train = apply_overrides(TrainConfig(), raw.get("train") or {})
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    folds = raw.get("folds", list(range(train.n_folds)))
    return BenchmarkConfig(
        name=str(raw.get("name", path.stem)),
        models=tuple(raw.get("models") or ("unet",)),
        folds=tuple(int(f) for f in folds),
        seeds=tuple(int(s) for s in raw.get("seeds", [0])),
        train=train,
        synthetic=dict(raw.get("synthetic") or {}),
        model_kwargs=_model_kwargs(path, raw.get("model_kwargs")),
    )


def _model_kwargs(path: Path, raw: Any) -> dict:
    """``model_kwargs: {model name: {kwarg: value}}`` (e.g. a narrower U-Net for smoke runs)."""
    raw = raw or {}
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise ConfigError(f"{path}: model_kwargs must map model names to mappings of keyword arguments")
    return {str(k): dict(v) for k, v in raw.items()}

"""Experiment configuration: frozen, validated dataclasses composed from small YAML files.

``TrainConfig`` describes one (model, fold, seed) run; ``BenchmarkConfig`` the grid around it.
Only primitives live here so configs hash, serialise and land in checkpoints unchanged. Every value,
from YAML or ``--set``, is parsed by its field's declared type and range-checked on construction,
and every field carries a one-line help text (``fit --help``/``run --help`` list them). A YAML may
start from another with ``base: other.yaml`` and override keys: mappings merge, the rest replaces.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from benchmark.core.parsing import ConfigError, coerce, file_setting, read_config
from benchmark.core.world import accelerator_is_gpu, resolve_devices

# 2: nested protocol (outer "metrics", inner "selection", "split", "global_batch");
# 3: batch_size is the global batch and the training stream is box-independent (datamodules.stream).
SCHEMA_VERSION = 3
# Fields that change how a run is executed or logged but not what it computes (left out of the hash).
# The device count is one of them: the global batch, the steps and the augmentation stream are the
# same on 1 device or 8 (issue 15), so a run started on one box is resumed or skipped on another.
NOT_HASHED = frozenset(
    {
        "num_workers",
        "logger",
        "wandb_project",
        "wandb_group",
        "progress_bar",
        "devices",
        "num_nodes",
        "checkpoint_every_s",
    }
)
_CHOICES = {
    "resize_mode": ("resize", "pad"),
    "scheduler": ("cosine", "none"),
    "precision": ("auto", "32", "bf16-mixed", "16-mixed"),
    "logger": ("none", "csv", "wandb"),
    "accelerator": ("auto", "cpu", "gpu", "cuda"),
    "select": ("best", "last"),
    "executor": ("local", "ray"),
}


def _f(
    default: Any = dataclasses.MISSING, doc: str = "", factory: Any = dataclasses.MISSING, shown: str = ""
) -> Any:
    """A field with its --help line (a test requires one); ``shown``: a required field's file default."""
    return field(default=default, default_factory=factory, metadata={"help": doc, "shown": shown})


@dataclass(frozen=True)
class TrainConfig:
    model: str = _f("unet", "registry name: unet, sk_unet, trans_cg_unet, smp:<arch>:<encoder>, ...")
    model_kwargs: dict = _f(factory=dict, doc="keyword arguments of the model factory, e.g. {base_width: 8}")
    model_recipe: dict = _f(factory=dict, doc="set by model_train: overridden field -> shared value")
    fold: int = _f(0, "outer fold scored as the test set (0 .. n_folds-1)")
    n_folds: int = _f(5, "number of subject-grouped outer folds (K-fold cross-validation)")
    holdout_fraction: float | None = _f(None, "one subject-grouped hold-out of this share instead of K-fold")
    split_seed: int = _f(0, "fold and inner-split assignment; fixed per benchmark, not varied by seed")
    inner_fraction: float = _f(0.15, "share of the outer-training subjects held out as inner selection set")
    link_subjects: bool = _f(
        True, "subjects sharing a frame (identical or re-encoded) are one unit in splits and CIs"
    )
    select: str = _f("best", "checkpoint scored on the outer fold: best inner-set epoch, or last")
    seed: int = _f(0, "replicate seed: initialisation and augmentation only")
    epochs: int = _f(10, "training epochs")
    limit_train_batches: int | None = _f(None, "cap on training steps per epoch (smoke runs); null: all")
    image_size: int = _f(256, "network input side for resize_mode=resize (multiple of 32)")
    resize_mode: str = _f("resize", "resize: 420x580 to image_size^2; pad: pad to a multiple of 32")
    batch_size: int = _f(
        16, "GLOBAL training batch per optimiser step, split evenly over devices x num_nodes"
    )
    eval_batch_size: int = _f(64, "batch per device for scoring (inner set, outer fold) and prediction")
    num_workers: int = _f(
        0, "DataLoader worker processes, at most the CPUs this process may use (execution only, not hashed)"
    )
    lr: float = _f(1e-3, "peak AdamW learning rate")
    weight_decay: float = _f(1e-4, "AdamW weight decay")
    warmup_epochs: float = _f(1.0, "linear learning-rate warm-up in epochs (fractions allowed)")
    scheduler: str = _f("cosine", "learning rate after warm-up: cosine decay or none (constant)")
    bce_weight: float = _f(1.0, "loss weight of the pixel-wise binary cross-entropy")
    dice_weight: float = _f(1.0, "loss weight of the soft Dice loss")
    presence_weight: float = _f(0.5, "loss weight of the image-level presence head (models that have one)")
    bbox_weight: float = _f(0.5, "loss weight of the bounding-box head, L1 + GIoU (models that have one)")
    augment: bool = _f(True, "training augmentation on/off (the aug_* switches pick which)")
    aug_flip: bool = _f(True, "augmentation: random horizontal flips")
    aug_affine: bool = _f(True, "augmentation: small random shifts, scales and rotations")
    aug_elastic: bool = _f(False, "augmentation: elastic deformation")
    aug_brightness: bool = _f(True, "augmentation: random brightness and contrast")
    aug_noise: bool = _f(True, "augmentation: random Gaussian noise")
    clean_contradictory: bool = _f(False, "drop empty-mask fit frames that near-duplicate a labelled frame")
    encoder_weights: str | None = _f(None, "pretrained encoder weights, e.g. imagenet; null: random init")
    precision: str = _f("auto", "auto (per run: bf16-mixed on GPU, 32 on CPU), 32, bf16-mixed or 16-mixed")
    accelerator: str = _f("auto", "auto, cpu, gpu or cuda")
    devices: int | str = _f(
        1, "devices per node; auto: every visible GPU with DDP (execution only, not hashed)"
    )
    num_nodes: int = _f(1, "nodes of a multi-node DDP run under torchrun/SLURM")
    channels_last: bool = _f(False, "channels-last memory format (faster convolutions on tensor cores)")
    compile: bool = _f(False, "torch.compile the model")
    gpu_cache: bool = _f(False, "uint8 data set cache and augmentation on the GPU")
    tta: bool = _f(False, "test-time augmentation: average with the horizontally flipped input")
    deterministic: bool = _f(True, "deterministic algorithms (warn-only on GPU)")
    logger: str = _f("csv", "none, csv or wandb (execution only, not hashed)")
    wandb_project: str = _f("nerve-bench", "W&B project (not hashed)")
    wandb_group: str | None = _f(None, "W&B group; `run` sets benchmark-<benchmark hash> (not hashed)")
    progress_bar: bool = _f(True, "Lightning progress bar and model summary (not hashed)")
    checkpoint_every_s: float = _f(
        0.0,
        "seconds between resume checkpoints (last.ckpt, deleted when the run finishes; the final"
        " epoch is always written); 0: every epoch (execution only, not hashed)",
    )

    def __post_init__(self) -> None:
        _normalise(self)
        _check_choices(self)
        _check_train_ranges(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """Short content hash of everything that changes what the run computes."""
        payload = {k: v for k, v in self.to_dict().items() if k not in NOT_HASHED}
        if not self.link_subjects:  # off: the hash of runs made before the field existed (same split)
            del payload["link_subjects"]
        payload.update(self.box_recipe())
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]

    def box_recipe(self) -> dict[str, int]:
        """What this machine makes of the recipe beyond the config's values: ``cpu_processes`` for a
        CPU DDP run. It has no SyncBatchNorm (torch's needs a GPU), so each process normalises its
        slice of the global batch, and DDP keeps rank 0's running statistics: another recipe than
        one process's (on GPUs SyncBatchNorm keeps it the same). Hashed, and kept in the summary
        so that the board does not rank such runs beside single-process ones."""
        if self.world_size() > 1 and not self.trains_on_gpu():
            return {"cpu_processes": self.world_size()}
        return {}

    def run_name(self) -> str:
        safe = self.model.replace(":", "-").replace("/", "-")
        return f"{safe}__f{self.fold}__s{self.seed}__{self.hash()}"

    def trains_on_gpu(self) -> bool:
        """Whether the run trains on CUDA devices (``accelerator: auto`` resolved on this machine)."""
        return accelerator_is_gpu(self.accelerator)

    def world_size(self) -> int:
        """Processes of this run's DDP world (devices x nodes), ``devices: auto`` resolved on this machine."""
        return int(resolve_devices(self).devices) * self.num_nodes


@dataclass(frozen=True)
class BenchmarkConfig:
    name: str = _f(doc="benchmark name (report title, W&B group prefix)", shown="file stem")
    models: tuple[str, ...] = _f(doc="models to train: the grid's first axis", shown="train.model")
    folds: tuple[int, ...] = _f(
        doc="outer folds to run (ids below train.n_folds; a file's train: fold alone: that one)",
        shown="every fold",
    )
    seeds: tuple[int, ...] = _f(doc="replicate seeds (initialisation and augmentation)", shown="train.seed")
    train: TrainConfig = _f(doc="TrainConfig fields shared by every run of the grid", shown="{}")
    synthetic: dict = _f(factory=dict, doc="fallback without train/ data: generator:, train:, folds:, seeds:")
    model_kwargs: dict = _f(factory=dict, doc="per-model kwargs by model name (over train.model_kwargs)")
    model_train: dict = _f(factory=dict, doc="per-model train: overrides by name, e.g. {m: {lr: 0.003}}")
    executor: str = _f("local", "local: one run after another; ray: each run a Ray task")
    gpus_per_run: float = _f(1.0, "Ray GPUs per run (fractions pack several runs onto one GPU)")
    cpus_per_run: float = _f(1.0, "Ray CPUs per run")
    ray_address: str | None = _f(None, "Ray cluster to join (else RAY_ADDRESS, else a local one)")

    def __post_init__(self) -> None:
        _normalise(self)
        _check_choices(self)
        _check_grid(self)
        # train:'s own model, fold and seed are the grid's first run, whatever the axes came from.
        first = {key: getattr(self, f"{key}s")[0] for key in GRID_AXIS_FIELDS}
        object.__setattr__(self, "train", dataclasses.replace(self.train, **first))

    def run_gpus(self) -> int | None:
        """GPUs one run sees: its Ray share rounded up (Ray hides the rest), or None for this machine's."""
        return math.ceil(self.gpus_per_run) if self.executor == "ray" else None


@cache
def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _normalise(obj: TrainConfig | BenchmarkConfig) -> None:
    """Parse every field by its declared type, so ``lr=1`` and ``lr="1e-3"`` hash like floats."""
    for f in dataclasses.fields(obj):
        tp = field_types(type(obj))[f.name]
        if tp is not TrainConfig:
            object.__setattr__(obj, f.name, coerce(f.name, getattr(obj, f.name), tp))


# ----------------------------------------------------------------------------- validation
def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _is_seed(value: int) -> bool:
    return 0 <= value < 2**32  # numpy's range; Lightning silently re-seeds randomly outside it


_AT_LEAST_0 = ("weight_decay", "warmup_epochs", "num_workers", "bce_weight", "dice_weight", "presence_weight",
               "bbox_weight", "checkpoint_every_s")  # fmt: skip
_AT_LEAST_1 = ("epochs", "eval_batch_size", "num_nodes")
_RANGES: tuple[tuple[str, Any, str], ...] = (
    ("model", lambda v: bool(v.strip()), "a model name"),
    ("lr", lambda v: v > 0, "> 0"),
    *((key, lambda v: v >= 0, ">= 0") for key in _AT_LEAST_0),
    *((key, lambda v: v >= 1, ">= 1") for key in _AT_LEAST_1),
    ("n_folds", lambda v: v >= 2, ">= 2"),
    ("batch_size", lambda v: v >= 2, ">= 2 (BatchNorm needs two samples per step)"),
    # the frames are 580x420: beyond 2048 a size only fails in OpenCV mid-run (4294967328 did)
    ("image_size", lambda v: 32 <= v <= 2048 and v % 32 == 0, "a multiple of 32 in 32 .. 2048"),
    ("inner_fraction", lambda v: 0 < v < 1, "in (0, 1)"),
    ("holdout_fraction", lambda v: v is None or 0 < v < 1, "in (0, 1), or null for K-fold"),
    ("limit_train_batches", lambda v: v is None or v >= 1, ">= 1, or null for all"),
    ("devices", lambda v: v == "auto" or isinstance(v, int) and v >= 1, "an integer >= 1 or auto"),
    ("seed", _is_seed, "in 0 .. 2**32-1"),
    ("split_seed", _is_seed, "in 0 .. 2**32-1"),
)


def _check_choices(obj: TrainConfig | BenchmarkConfig) -> None:
    for key, allowed in _CHOICES.items():
        if hasattr(obj, key) and getattr(obj, key) not in allowed:
            raise ConfigError(f"{key}={getattr(obj, key)!r} is not one of {', '.join(allowed)}")


def _check_train_ranges(cfg: TrainConfig) -> None:
    for key, ok, requirement in _RANGES:
        _require(ok(getattr(cfg, key)), f"{key}={getattr(cfg, key)!r} must be {requirement}")
    _require(0 <= cfg.fold < cfg.n_folds, f"fold={cfg.fold} is outside 0..{cfg.n_folds - 1}")
    if isinstance(cfg.devices, int):
        check_world_divides(cfg, cfg.devices * cfg.num_nodes)


def check_world_divides(cfg: TrainConfig, world: int) -> None:
    """The global batch must split evenly over the run's processes (else the recipe would change)."""
    _require(
        cfg.batch_size % world == 0,
        f"batch_size={cfg.batch_size} (the global batch) is not divisible by the {world} training "
        "processes (devices x num_nodes); choose a multiple of the world size",
    )


def check_axis(key: str, values: Sequence[Any]) -> None:
    """A grid axis (``key`` names it in the error): non-empty, no value twice."""
    twice = sorted({v for v in values if values.count(v) > 1})
    _require(bool(values) and not twice, f"{key}={list(values)} must be non-empty, without repeats")


def check_seeds(key: str, seeds: Sequence[int]) -> None:
    _require(all(map(_is_seed, seeds)), f"{key}={list(seeds)} must lie in 0 .. 2**32-1")


def _check_grid(bench: BenchmarkConfig) -> None:
    _require(isinstance(bench.train, TrainConfig), f"train: expected a TrainConfig, got {bench.train!r}")
    _require(bool(bench.name.strip()), "name may not be empty")
    for key in ("models", "folds", "seeds"):
        check_axis(key, getattr(bench, key))
    top = every_fold(bench.train)[-1]
    why = " (holdout_fraction: one hold-out set, fold 0)" if bench.train.holdout_fraction is not None else ""
    _require(all(0 <= f <= top for f in bench.folds), f"folds={list(bench.folds)} must lie in 0..{top}{why}")
    check_seeds("seeds", bench.seeds)
    _require(all(m.strip() for m in bench.models), "models may not contain an empty name")
    for key in ("gpus_per_run", "cpus_per_run"):
        _require(getattr(bench, key) > 0, f"{key}={getattr(bench, key)} must be > 0")
    whole = bench.gpus_per_run <= 1 or bench.gpus_per_run.is_integer()  # Ray's rule for a task's GPUs
    _require(
        whole, f"gpus_per_run={bench.gpus_per_run:g}: a share of one GPU (<= 1) or whole GPUs (2, 3 ...)"
    )
    from benchmark.core.per_model import (  # they build on this module
        check_model_recipe,
        check_model_train,
        check_per_model,
    )
    from benchmark.core.synthetic_section import check_synthetic

    check_per_model("model_kwargs", bench.model_kwargs)
    check_model_train("model_train", bench.train, bench.model_train)
    check_model_recipe(bench.train, bench.model_train)

    check_synthetic(bench)


# The TrainConfig fields that the grid's axes (models, folds, seeds) set for every run.
GRID_AXIS_FIELDS = ("model", "fold", "seed")


# ----------------------------------------------------------------------------- overrides and files
def check_keys(
    keys: Iterable[Any], known: set[str], what: str, listed: bool = False, train_only: Iterable[str] = ()
) -> None:
    """ConfigError for the first key not ``known``, with close matches; a key of ``train_only`` is
    said to belong under ``train:``."""
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            hint += f" ({key} is a TrainConfig field: set it under train:)" if key in train_only else ""
            allowed = f" (allowed: {', '.join(sorted(known))})" if listed else ""
            raise ConfigError(f"unknown {what} {key!r}{hint}{allowed}")


def field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def apply_overrides(cfg: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """A copy of ``cfg`` with ``overrides`` parsed by type and validated (unknown keys get a suggestion)."""
    check_keys(overrides, field_names(TrainConfig), "config key")
    return dataclasses.replace(cfg, **overrides)


def load_benchmark_config(path: str | Path) -> BenchmarkConfig:
    """A benchmark YAML after its ``base:`` chain, validated, every model's kwargs checked."""
    from models.registry import ModelError

    path = Path(path)
    files: list[tuple[Path, dict]] = []
    raw = read_config(path, files=files)
    from benchmark.core.model_kwargs import check_benchmark_models

    for source, own in files:  # a misspelt key is named in its own file, not in the one built on it
        try:
            _check_file_keys(own)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    try:
        bench = _benchmark_from(raw, path.stem)
        check_benchmark_models(bench)
    except (ConfigError, ModelError) as exc:
        raise ConfigError(f"{file_setting(files, str(exc), path)}: {exc}") from None
    return bench


def _check_file_keys(raw: dict[str, Any]) -> None:
    """The top-level keys of one config file, and its ``train:`` keys."""
    train_only = field_names(TrainConfig) - field_names(BenchmarkConfig)
    check_keys(
        raw, field_names(BenchmarkConfig) | {"base"}, "top-level key", listed=True, train_only=train_only
    )
    if isinstance(raw.get("train"), dict):
        try:
            check_keys(raw["train"], field_names(TrainConfig), "config key")
        except ConfigError as exc:
            raise ConfigError(f"train: {exc}") from None


def _benchmark_from(raw: dict[str, Any], name: str) -> BenchmarkConfig:
    """The benchmark of the merged mapping ``raw``, whose keys each file of its chain had checked."""
    given = {} if raw.get("train") is None else raw["train"]
    _require(isinstance(given, dict), "train: must be a mapping of TrainConfig fields")
    try:
        train = apply_overrides(TrainConfig(), given)
    except ConfigError as exc:
        raise ConfigError(f"train: {exc}") from None
    values: dict[str, Any] = {
        "name": name,
        "models": (train.model,),
        "folds": every_fold(train),
        "seeds": (0,),
    }
    # Without a grid axis the train: section's own run is the default: a `fit --print-config` file
    # given to `run` ran every fold of seed 0, not its fold and seed, without a word.
    values.update({f"{key}s": (getattr(train, key),) for key in ("fold", "seed") if key in given})
    values.update({k: v for k, v in raw.items() if k != "train" and v is not None})  # null: the default
    # one model's recipe (`fit --print-config` writes it); over several models it would be every model's
    lone = not train.model_recipe or len(coerce("models", values["models"], tuple[str, ...])) == 1
    check_keys(train.model_recipe, field_names(TrainConfig), "train: model_recipe key")
    _require(
        lone, "train: model_recipe is one model's: with models: write model_train: {MODEL: {FIELD: VALUE}}"
    )
    bench = BenchmarkConfig(train=train, **values)
    for key in (k for k in GRID_AXIS_FIELDS if k in given and raw.get(f"{k}s") is not None):
        value, axis = getattr(train, key), list(getattr(bench, f"{key}s"))
        _require(axis == [value], f"train: {key} {value} is ignored: {key}s: {axis} sets every run's {key}")
    return bench


def every_fold(train: TrainConfig) -> tuple[int, ...]:
    """The outer folds of ``train``'s split: 0 .. n_folds - 1, or fold 0 alone for a hold-out split."""
    return (0,) if train.holdout_fraction is not None else tuple(range(train.n_folds))

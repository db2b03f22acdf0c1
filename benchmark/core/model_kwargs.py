"""Model names and ``model_kwargs`` checked against the registry before any run starts.

``check_model_kwargs`` asks each factory's signature (cheap, nothing built); ``build_models`` asks it
too, then builds each distinct architecture once on the meta device (the CPU where meta cannot), so a value
the model itself refuses is one ConfigError naming the model, not a traceback in run 14 of 45."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING

from benchmark.core.config import BenchmarkConfig, ConfigError, TrainConfig

if TYPE_CHECKING:
    import torch


def check_model_kwargs(configs: Iterable[TrainConfig]) -> None:
    """Each run's model name and ``model_kwargs`` as its factory accepts them, checked without
    building anything: a typo stops ``run --dry-run`` and the grid before the first run starts."""
    check_pairs((cfg.model, cfg.model_kwargs) for cfg in configs)


def build_models(configs: Iterable[TrainConfig]) -> dict[str, int]:
    """Check every run's model name and kwargs (:func:`check_model_kwargs`), then build each (model,
    kwargs) of the grid once (:func:`build_model`): a value the model itself refuses (``base_width:
    -8``, an overflowing ``depth``) becomes one ConfigError before any run. Returns each run's number
    of stored values (parameters and buffers), by run name."""
    configs = list(configs)
    check_model_kwargs(configs)  # a misspelt model or keyword: one line, before anything is built
    sizes: dict[str, int] = {}
    values: dict[tuple[str, str], int] = {}
    for cfg in configs:
        key = (cfg.model, json.dumps([cfg.model_kwargs, cfg.encoder_weights], sort_keys=True, default=repr))
        if key not in values:
            values[key] = sum(t.numel() for t in build_model(cfg).state_dict().values())
        sizes[cfg.run_name()] = values[key]
    return sizes


def build_model(cfg: TrainConfig) -> torch.nn.Module:
    """The run's model as its run builds it: on the meta device (no memory), or on the CPU where
    meta lacks an operation its constructor uses (``.item()``, ``.numpy()``). ConfigError naming
    the model when it refuses its kwargs or ``encoder_weights`` (a model trained from scratch, or
    weights not in the local cache while offline, as the CLI runs unless told otherwise; cached
    ones are read, as the run will read them)."""
    import torch

    import models  # noqa: F401 - registers every architecture
    from models.registry import create

    def make() -> torch.nn.Module:
        return create(cfg.model, in_channels=1, encoder_weights=cfg.encoder_weights, **cfg.model_kwargs)

    try:
        with torch.device("meta"), warnings.catch_warnings():
            # pretrained weights loaded into meta parameters: one no-op warning per tensor (216 for resnet34)
            warnings.filterwarnings("ignore", message=r".*non-meta parameter .* meta parameter")
            model = make()
        check_contract(cfg, model)  # on meta: no memory, no compute
        return model
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - an operation meta lacks, or the kwargs at fault
        if not _meta_gap(exc):  # depth 99: "Storage size calculation overflowed"; built on the CPU
            raise _cannot_build(cfg, exc) from None  # instead, it took 24 GB and the OOM killer
    try:
        model = make()
    except Exception as exc:  # noqa: BLE001 - whatever the factory raises, the kwargs are at fault
        raise _cannot_build(cfg, exc) from None
    _check_trains(cfg, model)
    return model


def _meta_gap(exc: Exception) -> bool:
    """Whether building on meta failed for want of an operation meta tensors lack (``.item()``,
    ``.numpy()``, data-dependent values), which the CPU has: only then is the model built there."""
    return isinstance(exc, NotImplementedError) or "meta" in str(exc).lower()


def _cannot_build(cfg: TrainConfig, exc: Exception) -> ConfigError:
    text = " ".join(str(exc).split())[:400] or type(exc).__name__
    weights = f" and encoder_weights {cfg.encoder_weights!r}" if cfg.encoder_weights else ""
    return ConfigError(
        f"model {cfg.model!r} with model_kwargs {cfg.model_kwargs}{weights}: cannot be built ({text})"
    )


def check_contract(cfg: TrainConfig, model: torch.nn.Module) -> None:
    """What the run will need of a model built on the meta device, before any run: something to train
    (or ``trainable = False``, as the ``empty`` baseline), and outputs of the contract for a batch of
    the run's input size (mask logits of the input's size, alone or as a dict's ``mask``; a
    ``presence`` entry when ``presence_head`` is asked for). A forward pass meta cannot run is left to
    the run. ConfigError naming the model and its package (docs/adding-a-model.md)."""
    import torch

    from datamodules.geometry import input_shape

    _check_trains(cfg, model)
    h, w = input_shape(cfg.resize_mode, cfg.image_size)
    from models.registry import ModelError

    try:
        with torch.no_grad():
            out = model(torch.empty(2, 1, h, w, device="meta"))
    except ModelError as exc:  # the model refuses the run's input (depth 7 needs multiples of 128)
        raise ConfigError(f"{_named(cfg)} at image_size {cfg.image_size}: {exc}") from None
    except Exception:  # noqa: BLE001 - an operation meta lacks: the run's first batch checks instead
        return
    mask = out.get("mask") if isinstance(out, dict) else out
    problem = None
    if not isinstance(mask, torch.Tensor):
        problem = "returns neither mask logits nor a dict with a 'mask' entry"
    elif tuple(mask.shape) != (2, 1, h, w):
        problem = f"returns mask logits of shape {tuple(mask.shape)} for a (2, 1, {h}, {w}) input"
    elif cfg.model_kwargs.get("presence_head") and not (isinstance(out, dict) and "presence" in out):
        problem = "was asked for presence_head but returns no 'presence' entry"
    if problem:
        raise ConfigError(f"{_named(cfg)} {problem} (the model contract: docs/adding-a-model.md)")


def _check_trains(cfg: TrainConfig, model: torch.nn.Module) -> None:
    if getattr(model, "trainable", True) and not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(
            f"{_named(cfg)} has no parameter to train (all frozen?); a model that trains nothing "
            "says so with trainable = False, as the empty baseline does"
        )


def _named(cfg: TrainConfig) -> str:
    from models.registry import get_info

    return f"model {cfg.model!r} ({get_info(cfg.model).package})"


def trains(cfg: TrainConfig) -> bool:
    """Whether the run's model has weights to train (the ``empty`` baseline has none)."""
    from models.info import has_trainable_params

    return has_trainable_params(build_model(cfg))


def check_pairs(pairs: Iterable[tuple[str, dict]]) -> None:
    import models  # noqa: F401 - registers every architecture
    from models.registry import check_kwargs

    seen = set()
    for name, kwargs in pairs:
        key = (name, json.dumps(kwargs, sort_keys=True, default=repr))
        if key not in seen:
            seen.add(key)
            _refuse_model_names(name, kwargs)
            check_kwargs(name, kwargs)


def _refuse_model_names(name: str, kwargs: dict) -> None:
    """A per-model map given where every model's arguments go (``train:``'s ``model_kwargs``, or
    ``--set model_kwargs=``) would read as "unknown argument unet"; say where it belongs."""
    from models.registry import ModelError, get_info

    def is_model(key: str) -> bool:
        try:
            return get_info(key) is not None
        except ModelError:
            return False

    named = [k for k in kwargs if is_model(k)]
    if named:
        raise ConfigError(
            f"model {name!r}: model_kwargs holds {', '.join(named)}, a model's name, not an argument of the "
            f"model. These are every model's arguments (fit --set model_kwargs='{{base_width: 8}}'); one "
            f"model's own go in a run config's top-level model_kwargs: {{{named[0]}: {{...}}}} or "
            f"run --set model_kwargs.{named[0]}='{{...}}'"
        )


def _grid_pairs(bench: BenchmarkConfig) -> Iterable[tuple[str, dict]]:
    """(model, kwargs) of every model in the grid and in its synthetic fallback."""
    for per_model in (bench.model_kwargs, bench.synthetic.get("model_kwargs") or bench.model_kwargs):
        for model in bench.models:
            yield model, {**bench.train.model_kwargs, **per_model.get(model, {})}


def check_benchmark_models(bench: BenchmarkConfig) -> None:
    """Every model of a benchmark's grid and of its synthetic fallback, with its kwargs; then
    :func:`check_model_entries`."""
    check_pairs(_grid_pairs(bench))
    check_model_entries(bench)


def check_model_entries(bench: BenchmarkConfig) -> None:
    """Every model named by a per-model entry (model_kwargs, model_train, and the synthetic
    section's) exists, and its own model_kwargs fit it, whether or not it is in this grid (``--models``
    may pick it): a misspelt name would otherwise leave its entry unused without a word."""
    from models.registry import ModelError, get_info

    syn = bench.synthetic
    entries = {
        "model_kwargs": bench.model_kwargs,
        "model_train": bench.model_train,
        "synthetic.model_kwargs": syn.get("model_kwargs") or {},
        "synthetic.model_train": syn.get("model_train") or {},
    }
    for where, per_model in entries.items():
        for model in per_model:
            try:
                get_info(model)
            except ModelError as exc:
                raise ConfigError(f"{where}: {exc}") from None
        if where.endswith("model_kwargs"):
            check_pairs(per_model.items())

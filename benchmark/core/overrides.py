"""``--set KEY=VALUE`` on the command line: parsed into pairs, then applied to a benchmark config.

TrainConfig keys change ``train:``, benchmark keys the rest, and ``model_kwargs.MODEL`` /
``model_train.MODEL`` one model's entry of the per-model maps. Values stay text until the field's
type parses them (:mod:`benchmark.core.config`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from benchmark.core.config import (
    BenchmarkConfig,
    TrainConfig,
    apply_overrides,
    check_keys,
    every_fold,
    field_names,
)
from benchmark.core.model_kwargs import check_model_entries
from benchmark.core.parsing import ConfigError, coerce


def apply_benchmark_overrides(bench: BenchmarkConfig, overrides: dict[str, Any]) -> BenchmarkConfig:
    """``run --set``: TrainConfig keys change ``train:``; grid keys (models, executor...) the rest;
    ``model_kwargs.MODEL`` / ``model_train.MODEL`` one model's entry of the per-model maps."""
    overrides, per_model = _per_model_overrides(bench, overrides)
    for key, flag in GRID_AXES.items():  # the grid sets them per run: --set would be shown, then ignored
        if key in overrides:
            raise ConfigError(f"--set {key}: a grid axis, not a recipe field (run: {flag})")
    train_keys = field_names(TrainConfig)
    check_keys(overrides, train_keys | field_names(BenchmarkConfig) - {"train"}, "config key")
    train = apply_overrides(bench.train, {k: v for k, v in overrides.items() if k in train_keys})
    changes = {k: v for k, v in overrides.items() if k not in train_keys} | per_model
    # "every fold" stays so under --set n_folds=K or holdout_fraction
    if "folds" not in changes and bench.folds == every_fold(bench.train):
        changes["folds"] = every_fold(train)
    bench = dataclasses.replace(bench, train=train, **changes)
    check_model_entries(bench)  # a model named by --set exists, and its entry's kwargs fit it
    return bench


# TrainConfig fields that the grid sets for each run, and the flag that chooses them.
GRID_AXES = {"model": "--models", "fold": "--folds", "seed": "--seeds", "model_recipe": "model_train"}
# `--set model_kwargs=...` is train:'s, for every model; `--set model_kwargs.unet=...` is one model's.
PER_MODEL_MAPS = ("model_kwargs", "model_train")


def _per_model_overrides(bench: BenchmarkConfig, overrides: dict[str, Any]) -> tuple[dict, dict]:
    """Split ``--set FIELD.MODEL=MAPPING`` (replacing one model's entry) from the other keys.

    ``--set`` is the last word, as in ``fit``: a plain ``model_kwargs=`` (``train:``'s) gives every
    model exactly those arguments, so it sets the config's per-model entries aside; a plain
    ``model_train=`` replaces that map. Dotted entries of the same ``--set`` then go on top."""
    plain = {k: v for k, v in overrides.items() if "." not in k}
    maps: dict[str, dict] = {}
    if "model_kwargs" in plain:
        maps["model_kwargs"] = {}
    if "model_train" in plain:
        maps["model_train"] = coerce("model_train", plain.pop("model_train"), dict)
    for key, value in overrides.items():
        field_name, dot, model = (part.strip() for part in key.partition("."))
        if not dot:
            continue
        spelling = " or ".join(f"{m}.MODEL" for m in PER_MODEL_MAPS)
        if field_name not in PER_MODEL_MAPS or not model:
            raise ConfigError(f"--set {key}: a dotted key is {spelling}")
        _check_model_name(key, model)
        maps.setdefault(field_name, dict(getattr(bench, field_name)))[model] = coerce(key, value, dict)
    return plain, maps


def _check_model_name(key: str, model: str) -> None:
    from models.registry import ModelError, get_info

    try:
        get_info(model)
    except ModelError as exc:
        raise ConfigError(f"--set {key}: {exc}") from None


def parse_set_args(pairs: list[str] | None) -> dict[str, Any]:
    """Parse CLI ``--set key=value`` pairs (values stay text: the field's type parses them)."""
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = value
    return out

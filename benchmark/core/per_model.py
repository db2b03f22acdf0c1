"""The per-model maps of a benchmark (``model_kwargs``, ``model_train``) checked: model names map to
mappings of names, and a model's own recipe changes neither the grid's axes nor the board's split."""

from __future__ import annotations

from typing import Any

from benchmark.core.config import GRID_AXIS_FIELDS, TrainConfig, apply_overrides
from benchmark.core.parsing import ConfigError


def check_per_model(where: str, kwargs: Any) -> None:
    if not (isinstance(kwargs, dict) and all(isinstance(v, dict) for v in kwargs.values())):
        raise ConfigError(f"{where} must map model names to mappings of keyword arguments")
    for model, args in kwargs.items():
        for key in (k for k in args if not isinstance(k, str)):
            raise ConfigError(f"{where}.{model}: {key!r} is not a name (keys are argument or field names)")


# What a per-model recipe may not change: the grid's own axes and the architecture's kwargs.
GRID_FIELDS = frozenset({*GRID_AXIS_FIELDS, "model_kwargs", "model_recipe"})
# One fold assignment per board: a model's own split would score other images per fold.
SPLIT_FIELDS = frozenset({"n_folds", "holdout_fraction", "split_seed", "inner_fraction", "link_subjects"})


def check_model_train(where: str, train: TrainConfig, per_model: Any) -> None:
    """``model_train`` maps model names to ``train:`` overrides, each valid on top of ``train``.

    A model's own recipe is stated in the config, recorded in each run's config (so it is hashed)
    and listed under the board; it is never a special case in code (issue 20)."""
    check_per_model(where, per_model)
    for model, overrides in per_model.items():
        _check_own_fields(f"{where}.{model}", overrides)
        try:
            apply_overrides(train, overrides)
        except ConfigError as exc:
            raise ConfigError(f"{where}.{model}: {exc}") from None


def check_model_recipe(train: TrainConfig, per_model: dict) -> None:
    """``train: model_recipe`` (one model's recipe, as ``fit --print-config`` writes it) holds fields
    a model may change, and is that model's only recipe: a ``model_train`` entry beside it would be
    recorded in its place, so the run named a wrong shared value or lost the recipe's fields."""
    if not train.model_recipe:
        return
    _check_own_fields("train: model_recipe", train.model_recipe)
    for model in (m for m, entry in per_model.items() if entry):
        raise ConfigError(
            f"train: model_recipe and model_train.{model} both set a model's own recipe: "
            "write it in one of them"
        )


def _check_own_fields(where: str, fields: Any) -> None:
    grid, split = sorted(GRID_FIELDS & set(fields)), sorted(SPLIT_FIELDS & set(fields))
    if grid:
        raise ConfigError(f"{where}: {', '.join(grid)} cannot be set per model here")
    if split:
        raise ConfigError(f"{where}: {', '.join(split)} cannot differ per model: the board has one split")

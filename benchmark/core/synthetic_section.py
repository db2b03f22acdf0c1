"""A benchmark config's ``synthetic:`` section (the embedded CPU fallback), checked when the config
is read, with the file's name: not first when a run falls back to it, and not ignored when a
``--data-dir`` makes it unused.

The section may hold ``generator`` (:func:`datamodules.synth.generate`'s parameters), ``train``
(TrainConfig fields over ``train:``), ``folds``, ``seeds``, ``model_kwargs`` and ``model_train``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from benchmark.core.config import (
    GRID_AXIS_FIELDS,
    ConfigError,
    apply_overrides,
    check_axis,
    check_seeds,
    every_fold,
)
from benchmark.core.parsing import coerce
from benchmark.core.per_model import check_model_train, check_per_model
from datamodules.synth import parameter_problem

if TYPE_CHECKING:
    from benchmark.core.config import BenchmarkConfig, TrainConfig

KEYS = ("generator", "train", "folds", "seeds", "model_kwargs", "model_train")


def section_train(train: TrainConfig, overrides: dict) -> TrainConfig:
    """``train`` under the section's ``train:`` overrides. Its fold is the section's split's first:
    the top level's (its folds' first) may lie outside that split, and the section has folds of its own."""
    return apply_overrides(train, {**overrides, "fold": 0})


def check_synthetic(bench: BenchmarkConfig) -> None:
    """ConfigError naming the ``synthetic.`` key at fault; nothing for an empty section."""
    syn = bench.synthetic
    unknown = sorted(str(k) for k in set(syn) - set(KEYS))
    if unknown:
        raise ConfigError(f"synthetic: unknown key(s) {unknown} (known: {', '.join(KEYS)})")
    generator = syn.get("generator") or {}
    problem = parameter_problem(generator) if isinstance(generator, dict) else "must be a mapping"
    if problem:
        raise ConfigError(f"synthetic.generator: {problem}")
    train = {} if syn.get("train") is None else syn["train"]
    if not isinstance(train, dict):
        raise ConfigError("synthetic.train must be a mapping of TrainConfig fields")
    grid = sorted(set(GRID_AXIS_FIELDS) & set(train))
    if grid:  # as in train: they would be ignored: models, synthetic.folds and .seeds set every run's
        raise ConfigError(f"synthetic.train: {', '.join(grid)} is set by models, synthetic.folds and .seeds")
    if "model_recipe" in train:
        raise ConfigError(
            "synthetic.train: model_recipe is written by synthetic.model_train: {MODEL: {FIELD: VALUE}}"
        )
    try:
        trained = section_train(bench.train, train)
    except ConfigError as exc:
        raise ConfigError(f"synthetic.train: {exc}") from None
    seeds = coerce("synthetic.seeds", syn.get("seeds", (0,)), tuple[int, ...])
    folds = coerce("synthetic.folds", syn.get("folds", (0,)), tuple[int, ...])
    for key, values in (("seeds", seeds), ("folds", folds)):  # as the top level's, when read
        check_axis(f"synthetic.{key}", values)
    check_seeds("synthetic.seeds", seeds)
    if trained.holdout_fraction is None:  # a hold-out split collapses the section's folds to 0
        outside = sorted(set(folds) - set(every_fold(trained)))
        if outside:
            raise ConfigError(
                f"synthetic.folds: {outside} outside its split's folds {list(every_fold(trained))}"
            )
    if syn.get("model_kwargs") is not None:
        check_per_model("synthetic.model_kwargs", syn["model_kwargs"])
    if syn.get("model_train") is not None:
        check_model_train("synthetic.model_train", trained, syn["model_train"])

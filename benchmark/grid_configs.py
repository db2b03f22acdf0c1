"""The grid a benchmark config describes: every (model, fold, seed) as its TrainConfig, with the
config's per-model kwargs and recipe applied; and the command line's comma-separated subsets of it.
Executing the grid is :mod:`benchmark.runner`'s (local) or :mod:`benchmark.ray_grid`'s (Ray)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from benchmark.core.config import (
    NOT_HASHED,
    BenchmarkConfig,
    ConfigError,
    TrainConfig,
    apply_overrides,
)
from benchmark.core.world import resolve_auto_precision, resolve_devices


def parse_list(text: str | None, kind: type = str) -> list | None:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        return [kind(t) for t in items]
    except ValueError:
        raise ConfigError(f"expected a comma-separated list of {kind.__name__}, got {text!r}") from None


def with_model_recipe(train: TrainConfig, per_model: dict, model: str) -> TrainConfig:
    """``train`` with ``model``'s ``model_train`` overrides, each recorded in ``model_recipe`` beside
    the shared value it replaces: the board then knows the run belongs to the same benchmark (its
    shared recipe is restored for the benchmark hash) and names the difference under the table."""
    overrides = dict(per_model.get(model) or {})
    if not overrides:
        return train
    own = apply_overrides(train, overrides)
    # Recorded: what changes the computation, as it changes it. An execution-only field (num_workers,
    # logger, ...) put the model in a benchmark of its own, off the board (exit 0); an entry equal to
    # the shared value changed the run hash for no difference, so finished runs trained again.
    keys = [k for k in sorted(overrides) if k not in NOT_HASHED and getattr(own, k) != getattr(train, k)]
    if not keys:
        return own
    shared = {k: getattr(train, k) for k in keys}
    shared = {k: list(v) if isinstance(v, tuple) else v for k, v in shared.items()}
    return dataclasses.replace(own, model_recipe=shared)


def build_grid(
    bench: BenchmarkConfig,
    models: Sequence[str] | None = None,
    folds: Sequence[int] | None = None,
    seeds: Sequence[int] | None = None,
) -> list[TrainConfig]:
    """Every (model, fold, seed) TrainConfig, in model-major order; subsets override the config's.

    ``devices: auto`` becomes the device count each run will use (recorded; not hashed, since the global
    batch, steps and augmentation stream are the same on 1 GPU or 8); ``precision: auto`` the precision
    it trains in (hashed: bf16 on a GPU box and 32 on a CPU box are two recipes).
    """
    try:
        grid, train = [], resolve_devices(bench.train, bench.run_gpus())
    except ConfigError as exc:
        if bench.run_gpus() is None:  # the local executor: devices: auto is this machine's GPUs
            raise
        # Ray: the world size came from gpus_per_run, not from devices
        raise ConfigError(
            f"{exc} (devices: auto is gpus_per_run={bench.gpus_per_run:g} GPUs per run)"
        ) from None
    for model in models or bench.models:
        kwargs = {**bench.train.model_kwargs, **bench.model_kwargs.get(model, {})}
        recipe = with_model_recipe(train, bench.model_train, model)  # the config's per-model recipe
        recipe = resolve_auto_precision(recipe, bench.run_gpus())  # by its own accelerator
        for fold in bench.folds if folds is None else folds:
            for seed in bench.seeds if seeds is None else seeds:
                try:
                    grid.append(
                        dataclasses.replace(
                            recipe, model=model, model_kwargs=kwargs, fold=int(fold), seed=int(seed)
                        )
                    )
                except ConfigError as exc:
                    raise ConfigError(f"{bench.name}: {model} fold {fold} seed {seed}: {exc}") from None
    return grid

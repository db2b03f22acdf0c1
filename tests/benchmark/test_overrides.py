"""`--set` on a benchmark (benchmark/core/overrides.py): values typed and validated, one model's
entry by a dotted key, the last word over the config and over the synthetic fallback's section."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from benchmark import grid_configs
from benchmark.cli import main
from benchmark.core.config import ConfigError, load_benchmark_config
from benchmark.core.overrides import apply_benchmark_overrides

CONFIGS = Path(__file__).resolve().parents[2] / "benchmark" / "configs"


def test_benchmark_values_are_typed_and_validated():
    bench = load_benchmark_config(CONFIGS / "smoke.yaml")
    sets = {"folds": "0,1", "seeds": "[3, 4]", "executor": "ray", "gpus_per_run": "0.5",
            "models": "unet,empty", "lr": "3e-4"}  # fmt: skip
    over = apply_benchmark_overrides(bench, sets)
    assert (over.folds, over.seeds, over.models) == ((0, 1), (3, 4), ("unet", "empty"))
    assert (over.executor, over.gpus_per_run, over.train.lr) == ("ray", 0.5, 3e-4)
    bad = [({"folds": "0,3"}, "folds=[0, 3] must lie in 0..2"), ({"seeds": "1,1"}, "seeds=[1, 1] must be"),
           ({"models": "[]"}, "models=[] must be non-empty"), ({"executor": "slurm"}, "executor='slurm'"),
           ({"gpus_per_run": "0"}, "gpus_per_run=0.0 must be > 0"), ({"cpus_per_run": "-1"}, "cpus_per_run"),
           ({"seeds": "a"}, "seeds='a' should be an integer"),
           # the grid's axes: --set fold=1 was shown by --print-config, then every fold ran
           ({"fold": "1"}, "--set fold: a grid axis, not a recipe field (run: --folds)"),
           ({"seed": "5"}, "(run: --seeds)"), ({"model": "sk_unet"}, "(run: --models)"),
           ({"model_recipe": "{lr: 1}"}, "(run: model_train)")]  # fmt: skip
    for override, message in bad:
        with pytest.raises(ConfigError, match=re.escape(message)):
            apply_benchmark_overrides(bench, override)
    with pytest.raises(ConfigError, match="model_kwargs must map model names to mappings"):
        dataclasses.replace(bench, model_kwargs={"unet": 3})
    every = load_benchmark_config(CONFIGS / "default.yaml")  # folds: all five
    assert apply_benchmark_overrides(every, {"n_folds": "3"}).folds == (0, 1, 2)
    assert apply_benchmark_overrides(every, {"n_folds": "7"}).folds == tuple(range(7))
    with pytest.raises(ConfigError, match=r"folds=\[0, 4\] must lie in 0..2"):  # a chosen subset is kept
        apply_benchmark_overrides(dataclasses.replace(every, folds=(0, 4)), {"n_folds": "3"})


def test_one_models_kwargs_and_recipe_by_dotted_set_key(tmp_path, synthetic_dir, capsys):
    """`--set model_kwargs=` is train:'s, for every model; `--set model_kwargs.unet=` replaces unet's
    entry of the top-level per-model map (and model_train.unet its recipe). A per-model map given as
    the former used to read "unknown argument(s) unet"."""
    bench = load_benchmark_config(CONFIGS / "smoke.yaml")
    assert bench.model_kwargs["unet"] == {"base_width": 8, "depth": 3}
    over = apply_benchmark_overrides(
        bench, {"model_kwargs.unet": "{base_width: 4}", "model_train.sk_unet": "{lr: 0.01}"}
    )
    assert over.model_kwargs == {**bench.model_kwargs, "unet": {"base_width": 4}}
    assert over.model_train == {"sk_unet": {"lr": 0.01}} and over.train == bench.train
    both = {
        "model_train": "{unet: {lr: 0.5}}",
        "model_train.sk_unet": "{lr: 0.01}",
        "model_kwargs": "{depth: 2}",
    }
    mixed = apply_benchmark_overrides(bench, {**both, "model_kwargs.unet": "{}"})  # one --set, both forms
    assert mixed.model_train == {"unet": {"lr": 0.5}, "sk_unet": {"lr": 0.01}}
    assert mixed.train.model_kwargs == {"depth": 2} and mixed.model_kwargs["unet"] == {}
    grid = grid_configs.build_grid(over, ["unet", "sk_unet"], [0])
    assert grid[0].model_kwargs == {"base_width": 4} and grid[1].lr == 0.01 and grid[0].lr == bench.train.lr
    for key, value, words in [
        ("model_kwargs.uent", "{}", "--set model_kwargs.uent: unknown model 'uent'; did you mean 'unet'"),
        ("lr.unet", "1", "--set lr.unet: a dotted key is model_kwargs.MODEL or model_train.MODEL"),
        ("model_kwargs.unet", "3", "model_kwargs.unet='3' should be a mapping"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(words)):
            apply_benchmark_overrides(bench, {key: value})
    # A plain --set model_kwargs= is the last word for every model, as in fit: the same run.
    last = apply_benchmark_overrides(bench, {"model_kwargs": "{base_width: 16}"})
    assert last.model_kwargs == {} and grid_configs.build_grid(last, ["unet"], [0])[0].model_kwargs == {
        "base_width": 16
    }
    assert main(["fit", "--config", str(CONFIGS / "smoke.yaml"), "--model", "unet", "--print-config",
                 "--set", "model_kwargs={base_width: 16}"]) == 0  # fmt: skip
    assert capsys.readouterr().out.startswith(
        f"# {grid_configs.build_grid(last, ['unet'], [0])[0].run_name()}:"
    )
    smoke = ["run", "--config", str(CONFIGS / "smoke.yaml"), "--data-dir", str(synthetic_dir),
             "--results-dir", str(tmp_path / "r"), "--models", "unet", "--dry-run"]  # fmt: skip
    assert main([*smoke, "--set", "model_kwargs={unet: {base_width: 4}}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: model 'unet': model_kwargs holds unet, a model's name, not an argument of the model. These "
        "are every model's arguments (fit --set model_kwargs='{base_width: 8}'); one model's own go in a run "
        "config's top-level model_kwargs: {unet: {...}} or run --set model_kwargs.unet='{...}'"
    ]


def test_set_overrides_the_synthetic_section_too(tmp_path, capsys, monkeypatch):
    """The synthetic fallback's train: section was applied after --set, so `--set image_size=32` on
    `make benchmark` without data silently trained at the section's 64 px."""
    monkeypatch.chdir(tmp_path)  # no data/ultrasound-nerve-segmentation here: the fallback runs
    args = ["run", "--config", str(CONFIGS / "default.yaml"), "--results-dir", str(tmp_path / "r"),
            "--models", "unet", "--folds", "0", "--dry-run"]  # fmt: skip
    assert main(args) == 0
    plain = capsys.readouterr().out.strip().splitlines()[-2]  # the run's line; the last is the disk's
    assert main([*args, "--set", "image_size=32"]) == 0
    changed = capsys.readouterr().out.strip().splitlines()[-2]
    assert plain.split("-> ")[1] != changed.split("-> ")[1]
    from benchmark.core.config import load_benchmark_config
    from benchmark.fallback import synthetic_benchmark

    bench = synthetic_benchmark(load_benchmark_config(CONFIGS / "default.yaml"))
    expect = grid_configs.build_grid(apply_benchmark_overrides(bench, {"image_size": "32"}), ["unet"], [0])[0]
    assert changed.endswith(expect.run_name()) and expect.image_size == 32

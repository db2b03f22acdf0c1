"""A per-model recipe (``model_train``): stated in the config, checked, hashed, and named under the board."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from benchmark import fallback, grid_configs
from benchmark.core.config import ConfigError, load_benchmark_config
from benchmark.reporting import leaderboard, recipe, tables
from tests.benchmark.summaries import make_summary

CONFIGS = Path(__file__).resolve().parents[2] / "benchmark" / "configs"


def write(tmp_path: Path, text: str) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "bench.yaml"
    path.write_text(f"base: {CONFIGS / 'default.yaml'}\n{text}")
    return path


def test_a_per_model_recipe_reaches_that_models_runs_only_and_changes_their_hash(tmp_path):
    plain = grid_configs.build_grid(load_benchmark_config(CONFIGS / "default.yaml"))
    bench = load_benchmark_config(write(tmp_path, "model_train:\n  unet_vgg16: {lr: 0.003, epochs: 3}\n"))
    grid = grid_configs.build_grid(bench)
    changed = {(c.model, c.lr, c.epochs) for c in grid if c.model == "unet_vgg16"}
    assert changed == {("unet_vgg16", 0.003, 3)}
    others = {(c.run_name(), c.hash()) for c in grid if c.model != "unet_vgg16"}
    assert others == {(c.run_name(), c.hash()) for c in plain if c.model != "unet_vgg16"}
    vgg = {c.hash() for c in grid if c.model == "unet_vgg16"}
    assert vgg.isdisjoint({c.hash() for c in plain})


def test_an_entry_that_changes_no_computation_keeps_the_run_and_its_board(tmp_path):
    """``model_train.unet: {num_workers: 0}`` put unet in a benchmark of its own, so the board left it
    out (exit 0, one note); ``{lr: 0.001}``, the shared value, changed its hash for no difference."""
    plain = {c.run_name() for c in grid_configs.build_grid(load_benchmark_config(CONFIGS / "default.yaml"))}
    text = (
        "model_train:\n  unet: {num_workers: 0, lr: 0.001, logger: csv}\n"
        "  sk_unet: {num_workers: 0, lr: 0.002}\n"
    )
    grid = grid_configs.build_grid(load_benchmark_config(write(tmp_path, text)))
    unet = [c for c in grid if c.model == "unet"]
    assert {c.run_name() for c in unet} <= plain and {(c.num_workers, c.logger) for c in unet} == {(0, "csv")}
    sk = [c for c in grid if c.model == "sk_unet"]
    assert {c.model_recipe["lr"] for c in sk} == {0.001} and "num_workers" not in sk[0].model_recipe
    hashes = {leaderboard.benchmark_hash({"config": c.to_dict()}) for c in grid}
    assert len(hashes) == 1  # one board for every model
    old = {"config": {**sk[0].to_dict(), "model_recipe": {"lr": 0.001, "num_workers": 4}}}  # recorded before
    assert leaderboard.benchmark_hash(old) in hashes


def test_the_synthetic_fallback_has_its_own_per_model_recipe(tmp_path):
    text = "model_train:\n  unet: {lr: 0.01}\nsynthetic:\n  model_train:\n    unet_vgg16: {lr: 0.002}\n"
    syn = fallback.synthetic_benchmark(load_benchmark_config(write(tmp_path, text)))
    lrs = {c.model: c.lr for c in grid_configs.build_grid(syn)}
    assert lrs["unet_vgg16"] == 0.002 and lrs["unet"] == 0.001  # the section replaces, as model_kwargs does


@pytest.mark.parametrize(
    "text, message",
    [
        ("model_train:\n  unet: {lr: -1}\n", "model_train.unet: lr"),
        ("model_train:\n  unet: {lrr: 0.1}\n", "did you mean lr"),
        ("model_train:\n  unet: {seed: 3}\n", "model_train.unet: seed cannot be set per model"),
        ("model_train:\n  unet: 0.003\n", "model_train must map model names"),
        ("synthetic:\n  model_train:\n    unet: {batch_size: 1}\n", "synthetic.model_train.unet: batch_size"),
        # one model's recipe as fit --print-config writes it: a split field, or a second recipe beside it
        # (a first version took the model_train entry: its run recorded lr 0.003 as the shared value)
        (
            "models: [unet]\ntrain: {model_recipe: {n_folds: 3}}\n",
            "train: model_recipe: n_folds cannot differ per model: the board has one split",
        ),
        (
            "models: [unet]\ntrain: {lr: 0.003, model_recipe: {lr: 0.001}}\n"
            "model_train:\n  unet: {lr: 0.005}\n",
            "train: model_recipe and model_train.unet both set a model's own recipe",
        ),
    ],
)
def test_bad_per_model_recipes_fail_when_the_config_loads(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_benchmark_config(write(tmp_path, text))


def _runs(model, lr, folds=(0, 1), shared=0.001):
    runs = []
    for fold in folds:
        s = make_summary(model, fold, 0, [0.5, 0.7], n_folds=2)
        recipe_ = {"lr": shared} if lr != shared else {}
        s["config"] = {**s["config"], "lr": lr, "model_recipe": recipe_}
        runs.append(s)
    return runs


def test_differences_name_the_model_with_its_own_recipe_and_the_shared_value():
    runs = _runs("a", 0.001) + _runs("b", 0.001) + _runs("c", 0.003)
    found = recipe.differences(runs)
    assert found == {"per_model": {"c": {"lr": [0.003]}}, "common": {"lr": 0.001}}
    assert recipe.note(found) == (
        "Per-model recipe (stated in the config's `model_train`, recorded in each run's summary): "
        "c: lr 0.003 (the others 0.001)."
    )
    assert recipe.differences(runs[::-1]) == found  # order of the runs does not matter


def test_one_recipe_for_all_gives_no_note():
    runs = _runs("a", 0.001) + _runs("b", 0.001)
    assert recipe.differences(runs) == {"per_model": {}, "common": {}}
    assert recipe.note(recipe.differences(runs)) is None


def test_a_model_whose_runs_disagree_lists_every_value():
    runs = _runs("a", 0.001) + _runs("c", 0.002, folds=(0,)) + _runs("c", 0.004, folds=(1,))
    assert recipe.differences(runs)["per_model"] == {"c": {"lr": [0.002, 0.004]}}


def test_a_per_model_recipe_keeps_the_run_in_its_benchmark_and_a_stale_config_does_not():
    plain, own = _runs("a", 0.001), _runs("c", 0.003)
    assert {leaderboard.benchmark_hash(s) for s in plain + own} == {leaderboard.benchmark_hash(plain[0])}
    stale = _runs("c", 0.003)[0]
    stale["config"]["model_recipe"] = {}  # lr 0.003 without the config saying so: another benchmark
    assert leaderboard.benchmark_hash(stale) != leaderboard.benchmark_hash(plain[0])


def test_the_board_prints_the_per_model_recipe_under_the_table():
    board = leaderboard.build(_runs("a", 0.001) + _runs("b", 0.001) + _runs("c", 0.003))
    assert board["header"]["recipe"]["per_model"] == {"c": {"lr": [0.003]}}
    md = tables.markdown(board)
    assert "**Note**: Per-model recipe" in md and "c: lr 0.003 (the others 0.001)" in md


def test_fit_with_the_config_reproduces_the_grid_run_of_that_model(tmp_path, capsys):
    from benchmark.cli import main

    path = write(tmp_path, "model_train:\n  unet_vgg16: {lr: 0.003}\n")
    grid = {c.model: c for c in grid_configs.build_grid(load_benchmark_config(path))}
    for model in ("unet_vgg16", "unet"):
        assert main(["fit", "--config", str(path), "--model", model, "--fold", "0", "--print-config"]) == 0
        shown = yaml.safe_load(capsys.readouterr().out)["train"]
        assert shown["lr"] == grid[model].lr and shown["model_recipe"] == grid[model].model_recipe


def test_precision_auto_is_named_by_what_each_run_trains_in(tmp_path, monkeypatch):
    """``precision: auto`` is bf16 on a GPU box and 32 on a CPU box: two recipes, so each run records
    (and hashes) the precision it trains in, as if the config had said so; a Ray task by its GPU share."""
    import torch

    from benchmark.external.board_config import train_config

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU box, on any machine
    text = "train:\n  precision: auto\n  gpu_cache: false\nmodel_train:\n  unet: {accelerator: cpu}\n"
    path = write(tmp_path, text)
    bench = load_benchmark_config(path)
    explicit = {
        p: grid_configs.build_grid(load_benchmark_config(write(tmp_path / p, text.replace("auto", p))))
        for p in ("bf16-mixed", "32")
    }
    precisions = {c.model: c.precision for c in grid_configs.build_grid(bench)}
    assert precisions["unet"] == precisions["unet_vgg16"] == "32"  # this CPU box
    assert [c.hash() for c in grid_configs.build_grid(bench)] == [c.hash() for c in explicit["32"]]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    gpu_box = {c.model: c for c in grid_configs.build_grid(bench)}
    assert gpu_box["unet"].precision == "32" and gpu_box["unet_vgg16"].precision == "bf16-mixed"
    assert gpu_box["unet_vgg16"].hash() == {c.model: c for c in explicit["bf16-mixed"]}["unet_vgg16"].hash()
    assert train_config(path, None).precision == "bf16-mixed"  # an import joins the runs' board
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a Ray head node without a GPU
    ray = grid_configs.build_grid(dataclasses.replace(bench, executor="ray", gpus_per_run=0.5))
    ray_precision = {c.model: c.precision for c in ray}
    assert (ray_precision["unet"], ray_precision["unet_vgg16"]) == ("32", "bf16-mixed")


def test_the_board_states_the_shared_recipe_every_run_trained_with():
    """The board gave a config hash and no recipe: boards of 10 and of 2 epochs read alike."""
    from benchmark.reporting import leaderboard as lb
    from benchmark.reporting import tables
    from tests.benchmark.summaries import model_runs

    runs = model_runs("unet", {0: [0.5, 1.0] * 4})
    runs[0]["config"] = {**runs[0]["config"], "lr": 0.003, "model_recipe": {"lr": 0.001}}  # its own lr
    shared = lb.build(runs)["header"]["shared_recipe"]
    assert (shared["epochs"], shared["image_size"], shared["lr"], shared["deterministic"]) == (
        2,
        64,
        0.001,
        True,
    )
    assert not {"model", "fold", "seed", "model_recipe", "num_workers", "logger"} & set(shared)  # not hashed
    line = next(x for x in tables.markdown(lb.build(runs)).splitlines() if x.startswith("- **Recipe**"))
    assert ", epochs 2, " in line and ", deterministic true, " in line and ", lr 0.001, " in line

"""Configs: typed parsing, range checks, base: composition, --print-config, model_kwargs checked up front."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from benchmark import grid_configs
from benchmark.cli import main
from benchmark.core.config import (
    NOT_HASHED,
    BenchmarkConfig,
    ConfigError,
    TrainConfig,
    apply_overrides,
    load_benchmark_config,
)
from benchmark.core.overrides import apply_benchmark_overrides
from benchmark.core.world import resolve_devices
from models.registry import ModelError, check_kwargs
from tests.benchmark.oracles import field_help

CONFIGS = Path(__file__).resolve().parents[2] / "benchmark" / "configs"
SHIPPED = sorted(CONFIGS.glob("*.yaml"))
TINY_UNET = "{base_width: 4, depth: 2}"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_set_values_are_parsed_by_the_declared_type(tmp_path):
    cfg = apply_overrides(
        TrainConfig(),
        {"lr": "3e-4", "epochs": "3", "holdout_fraction": "none", "encoder_weights": "null",
         "logger": "none", "augment": "false", "devices": "2", "precision": "32",
         "model_kwargs": "{base_width: 4, scale: 1e-3}"},
    )  # fmt: skip
    assert cfg.lr == 3e-4 and isinstance(cfg.lr, float) and cfg.epochs == 3
    assert cfg.holdout_fraction is None and cfg.encoder_weights is None and cfg.logger == "none"
    assert cfg.augment is False and cfg.devices == 2 and cfg.precision == "32"
    assert cfg.model_kwargs == {"base_width": 4, "scale": 1e-3}  # YAML 1.2 floats inside mappings too
    assert apply_overrides(TrainConfig(), {"devices": "auto"}).devices == "auto"
    # An int for a float field is that float: it hashes like the float, so runs are not duplicated.
    assert TrainConfig(lr=1).hash() == TrainConfig(lr=1.0).hash() and TrainConfig(lr=1).lr == 1.0
    path = write(tmp_path / "b.yaml", "train: {lr: 3e-4, warmup_epochs: 2, precision: 32}\n")
    train = load_benchmark_config(path).train
    assert (train.lr, train.warmup_epochs, train.precision) == (3e-4, 2.0, "32")


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("lr", "-1", "lr=-1.0 must be > 0"),
        ("lr", "0", "lr=0.0 must be > 0"),
        ("lr", "nan", "lr='nan' should be a finite number"),
        ("lr", "abc", "lr='abc' should be a finite number"),
        ("weight_decay", "-0.1", "weight_decay=-0.1 must be >= 0"),
        ("epochs", "0", "epochs=0 must be >= 1"),
        ("epochs", "1.5", "epochs='1.5' should be an integer"),
        ("batch_size", "0", "batch_size=0 must be >= 2"),
        ("batch_size", "1", "batch_size=1 must be >= 2"),
        ("eval_batch_size", "-2", "eval_batch_size=-2 must be >= 1"),
        ("inner_fraction", "1", "inner_fraction=1.0 must be in (0, 1)"),
        ("inner_fraction", "0", "inner_fraction=0.0 must be in (0, 1)"),
        ("holdout_fraction", "1.5", "holdout_fraction=1.5 must be in (0, 1)"),
        ("warmup_epochs", "-1", "warmup_epochs=-1.0 must be >= 0"),
        ("presence_weight", "-0.5", "presence_weight=-0.5 must be >= 0"),
        ("image_size", "48", "image_size=48 must be a multiple of 32"),
        ("image_size", "0", "image_size=0 must be a multiple of 32 in 32 .. 2048"),
        ("image_size", "4294967328", "image_size=4294967328 must be a multiple of 32 in 32 .. 2048"),  # cv2
        ("n_folds", "1", "n_folds=1 must be >= 2"),
        ("num_workers", "-1", "num_workers=-1 must be >= 0"),
        ("limit_train_batches", "0", "limit_train_batches=0 must be >= 1"),
        ("devices", "0", "devices=0 must be an integer >= 1 or auto"),
        ("devices", "two", "devices='two' must be an integer >= 1 or auto"),
        ("augment", "yes", "augment='yes' should be true or false"),
        ("augment", 1, "augment=1 should be true or false"),
        ("epochs", True, "epochs=True should be an integer"),
        ("seed", "-1", "seed=-1 must be in 0 .. 2**32-1"),
        ("precision", "64", "precision='64' is not one of"),
        ("logger", None, "logger=None should be a string"),
        ("model_kwargs", "[1, 2]", "model_kwargs='[1, 2]' should be a mapping"),
    ],
)
def test_bad_values_are_refused_in_one_line(key, value, message):
    with pytest.raises(ConfigError) as err:
        apply_overrides(TrainConfig(), {key: value})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unknown_keys_get_a_suggestion(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'lrr'; did you mean lr"):
        apply_overrides(TrainConfig(), {"lrr": 1})
    bench = load_benchmark_config(CONFIGS / "smoke.yaml")
    with pytest.raises(ConfigError, match="unknown config key 'executr'; did you mean executor"):
        apply_benchmark_overrides(bench, {"executr": "ray"})
    with pytest.raises(ConfigError, match=r"b.yaml: unknown top-level key 'model'; did you mean models"):
        load_benchmark_config(write(tmp_path / "b.yaml", "model: [unet]\n"))
    with pytest.raises(ConfigError, match=r"b.yaml: train: unknown config key 'epoch'; did you mean epochs"):
        load_benchmark_config(write(tmp_path / "b.yaml", "train: {epoch: 3}\n"))
    with pytest.raises(ConfigError, match=r"b.yaml:\d+: invalid YAML \("):
        load_benchmark_config(write(tmp_path / "b.yaml", "train:\n  lr: [1\n"))


def test_synthetic_overrides_are_checked_when_loading(tmp_path):
    text = "synthetic:\n  generator: {subjects: 3}\n  train: {lr: -1}\n"
    with pytest.raises(ConfigError, match="b.yaml: synthetic.train: lr=-1.0 must be > 0"):
        load_benchmark_config(write(tmp_path / "b.yaml", text))


def test_base_composes_recursively_and_relative_to_the_file(tmp_path):
    write(tmp_path / "base.yaml", "name: base\nmodels: [unet, sk_unet, empty]\nseeds: [0, 1]\n"
          "model_kwargs: {unet: {base_width: 8, depth: 3}, sk_unet: {base_width: 8}}\n"
          "train: {n_folds: 3, epochs: 3, lr: 0.01, model_kwargs: {}}\n")  # fmt: skip
    write(tmp_path / "sub" / "child.yaml", "base: ../base.yaml\nname: child\nmodels: [unet, sk_unet]\n"
          "model_kwargs: {unet: {depth: 2}}\ntrain: {epochs: 5}\n")  # fmt: skip
    grandchild = write(tmp_path / "gc.yaml", "base: sub/child.yaml\nseeds: [7]\ntrain: {lr: 3e-4}\n")
    bench = load_benchmark_config(grandchild)
    assert bench.name == "child" and bench.models == ("unet", "sk_unet") and bench.seeds == (7,)
    assert bench.model_kwargs == {"unet": {"base_width": 8, "depth": 2}, "sk_unet": {"base_width": 8}}
    assert (bench.train.n_folds, bench.train.epochs, bench.train.lr) == (3, 5, 3e-4)
    assert bench.folds == (0, 1, 2)


def test_base_cycles_and_missing_bases_are_refused(tmp_path):
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match=r"base: cycle a.yaml -> b.yaml -> a.yaml"):
        load_benchmark_config(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match=r"base: cycle self.yaml -> self.yaml"):
        load_benchmark_config(write(tmp_path / "self.yaml", "base: self.yaml\n"))
    with pytest.raises(ConfigError, match=r"c.yaml: base: 'nope.yaml' not found"):
        load_benchmark_config(write(tmp_path / "c.yaml", "base: nope.yaml\n"))


def test_gpu_yaml_hashes_like_default_except_the_execution_fields_it_names():
    default, gpu = (
        load_benchmark_config(CONFIGS / "default.yaml"),
        load_benchmark_config(CONFIGS / "gpu.yaml"),
    )
    raw = yaml.safe_load((CONFIGS / "gpu.yaml").read_text())
    assert raw["base"] == "default.yaml" and len(raw["train"]) <= 3  # an override file, not a copy
    differing = {f.name for f in dataclasses.fields(TrainConfig)
                 if getattr(gpu.train, f.name) != getattr(default.train, f.name)}  # fmt: skip
    assert differing == set(raw["train"]) == {"num_workers", "logger"}
    assert differing <= NOT_HASHED  # so every run hash is shared
    assert gpu.train.hash() == default.train.hash()
    assert [c.run_name() for c in grid_configs.build_grid(gpu)] == [
        c.run_name() for c in grid_configs.build_grid(default)
    ]
    assert (gpu.models, gpu.folds, gpu.seeds) == (default.models, default.folds, default.seeds)
    assert gpu.synthetic == {} and default.synthetic  # gpu.yaml keeps its old "no CPU fallback"
    # One single-GPU run per GPU through Ray: every run's devices resolve to 1, whatever the box.
    assert (gpu.executor, gpu.gpus_per_run, default.executor) == ("ray", 1.0, "local")
    assert {c.devices for c in grid_configs.build_grid(gpu)} == {1}


def test_the_device_count_is_execution_not_recipe(monkeypatch):
    """batch_size is the global batch: 1 GPU and 8 train the same recipe, so they share a run hash
    (a run started on one box is skipped or resumed on another), and a global batch that the world
    size does not divide is refused before anything runs."""
    auto = TrainConfig(devices="auto", accelerator="gpu", batch_size=8)
    one, eight = resolve_devices(auto, gpus=1), resolve_devices(auto, gpus=8)
    assert (one.devices, eight.devices) == (1, 8) and one.hash() == eight.hash() == auto.hash()
    with pytest.raises(ConfigError, match="batch_size=8 .* not divisible by the 3 training processes"):
        resolve_devices(auto, gpus=3)
    with pytest.raises(ConfigError, match="not divisible by the 6"):
        TrainConfig(devices=3, num_nodes=2, batch_size=8)
    assert resolve_devices(dataclasses.replace(auto, accelerator="cpu")).devices == 1
    # CPU DDP has no SyncBatchNorm, so 2 CPU processes train another recipe than 1: another hash
    cpu = TrainConfig(devices=1, accelerator="cpu", batch_size=8)
    assert (
        cpu.hash()
        == dataclasses.replace(cpu, devices="auto").hash()
        != dataclasses.replace(cpu, devices=2).hash()
    )
    assert dataclasses.replace(auto, devices=2).hash() == auto.hash()  # on GPUs it is the same recipe
    assert dataclasses.replace(eight, num_nodes=2, batch_size=32).world_size() == 16
    bench = load_benchmark_config(CONFIGS / "default.yaml")  # devices: auto, accelerator: auto
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert {c.devices for c in grid_configs.build_grid(bench)} == {8} and bench.train.world_size() == 8
    ray = dataclasses.replace(bench, executor="ray", gpus_per_run=0.5)
    assert {c.devices for c in grid_configs.build_grid(ray)} == {1}  # Ray shows a task only its share
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert {c.devices for c in grid_configs.build_grid(bench)} == {1}


def test_every_field_has_a_one_line_help_shown_by_help(capsys):
    for cls in (TrainConfig, BenchmarkConfig):
        helps = field_help(cls)
        assert set(helps) == {f.name for f in dataclasses.fields(cls)}
        assert all(h.strip() and "\n" not in h for h in helps.values()), cls
    for command, classes in (("fit", [TrainConfig]), ("run", [TrainConfig, BenchmarkConfig])):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        shown = " ".join(capsys.readouterr().out.split())  # argparse may re-wrap nothing, but be safe
        for cls in classes:
            for name, text in field_help(cls).items():
                assert name in shown and " ".join(text.split()) in shown, (command, name)
        assert "--print-config" in shown


def test_fit_folds_is_a_deprecated_alias_of_n_folds(capsys):
    assert main(["fit", "--folds", "3", "--print-config"]) == 0
    out, err = capsys.readouterr()
    assert "n_folds: 3" in out and "deprecated" in err and "--n-folds" in err and len(err.splitlines()) == 1
    assert "sets the number of folds (n_folds=3), not a fold id" in err
    assert main(["fit", "--n-folds", "4", "--print-config"]) == 0
    out, err = capsys.readouterr()
    assert "n_folds: 4" in out and not err


def test_model_kwargs_typos_stop_everything_before_the_first_run(tmp_path, synthetic_dir, capsys):
    bad = write(tmp_path / "bad.yaml", "base: " + str(CONFIGS / "smoke.yaml") + "\n"
                "model_kwargs: {unet: {base_widht: 4}}\n")  # fmt: skip
    results = tmp_path / "results"
    args = ["run", "--config", str(bad), "--data-dir", str(synthetic_dir), "--results-dir", str(results)]
    assert main([*args, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "base_widht" in err and "did you mean 'base_width'" in err and len(err.strip().splitlines()) == 1
    assert not results.exists()
    smoke = ["run", "--config", str(CONFIGS / "smoke.yaml"), "--data-dir", str(synthetic_dir),
             "--results-dir", str(results), "--models", "unet"]  # fmt: skip
    assert main([*smoke, "--dry-run", "--set", "model_kwargs={depht: 2}"]) == 2
    assert "depht" in capsys.readouterr().err
    fit = ["fit", "--data-dir", str(synthetic_dir), "--out", str(results / "fit")]
    assert main([*fit, "--set", "model_kwargs={base_width: 4, dpeth: 2}"]) == 2
    assert "dpeth" in capsys.readouterr().err and not results.exists()


def test_model_kwargs_of_smp_models_are_checked_without_building():
    with pytest.raises(ModelError, match="decoder_chanels"):
        check_kwargs("unet_resnet34", {"decoder_chanels": [16, 8, 4, 2, 1]})
    with pytest.raises(ModelError, match="'activation' is not allowed"):
        check_kwargs("smp:unet:resnet18", {"activation": "sigmoid"})
    with pytest.raises(ModelError, match="unknown smp architecture 'unett'"):
        check_kwargs("smp:unett:resnet18", {})
    check_kwargs("unet_resnet34", {"encoder_depth": 3, "presence_head": True})
    check_kwargs("smp:unet:resnet18", {"encoder_depth": 3})


@pytest.mark.parametrize("config", ["gpu.yaml", "default.yaml"])
def test_run_print_config_round_trips_and_touches_nothing(config, tmp_path, capsys):
    results, data = tmp_path / "results", tmp_path / "no-data"
    args = ["run", "--config", str(CONFIGS / config), "--results-dir", str(results), "--data-dir", str(data),
            "--print-config", "--set", "lr=3e-4", "--set", "executor=ray", "--models", "unet,empty",
            "--folds", "0,2"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert not results.exists() and not data.exists() and "lr: 0.0003" in printed
    loaded = load_benchmark_config(write(tmp_path / "printed.yaml", printed))
    expected = apply_benchmark_overrides(
        load_benchmark_config(CONFIGS / config), {"lr": "3e-4", "executor": "ray"}
    )
    expected = dataclasses.replace(expected, models=("unet", "empty"), folds=(0, 2))
    assert loaded == expected
    assert [c.run_name() for c in grid_configs.build_grid(loaded)] == [
        c.run_name() for c in grid_configs.build_grid(expected)
    ]


def test_fit_print_config_round_trips(tmp_path, capsys):
    args = ["fit", "--config", str(CONFIGS / "smoke.yaml"), "--model", "sk_unet", "--set", "lr=3e-4",
            "--set", "holdout_fraction=0.2", "--print-config"]  # fmt: skip
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "model_kwargs: {base_width: 8, depth: 3}" in first  # the benchmark's kwargs for sk_unet
    printed = write(tmp_path / "fit.yaml", first)
    assert main(["fit", "--config", str(printed), "--print-config"]) == 0
    assert capsys.readouterr().out == first  # same config, same run name (in the header) and hash
    assert load_benchmark_config(printed).train.lr == 3e-4


# Only what makes one step cheap, so each shipped config keeps what is its own (augment, gpu_cache,
# channels_last, n_folds, its models' kwargs): otherwise default, gpu and uns_positive would all fit
# the same config. Between them and the per-config sets below, one --set per declared type: int,
# float (YAML 1.1 reads 3e-4 as a string), bool, str, optional None, int | str, dict.
SETS = ["model=unet", "lr=3e-4", "epochs=1", "limit_train_batches=1", "devices=1", "holdout_fraction=none",
        "encoder_weights=null", "image_size=64", "batch_size=4", "eval_batch_size=8", "num_workers=0",
        "warmup_epochs=0", "logger=none", "progress_bar=false"]  # fmt: skip
CPU_SETS = ["accelerator=cpu", "precision=32"]  # for a config that asks for a GPU (or whatever is there)


@pytest.fixture(scope="module")
def fold_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 subjects x 3 frames: enough subjects for uns_positive's 10 subject-grouped folds (< 1 s)."""
    from datamodules.synth import generate

    out = tmp_path_factory.mktemp("ten-folds")
    generate(out, subjects=12, per_subject=3, n_test=1, seed=0)
    return out


@pytest.mark.parametrize("config", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_config_fits_one_step(config, fold_dir, tmp_path):
    bench = load_benchmark_config(config)
    own = bench.train
    sets = list(SETS)
    if own.accelerator != "cpu" or own.precision != "32":
        sets += CPU_SETS
    kwargs = {**own.model_kwargs, **bench.model_kwargs.get("unet", {})}
    if not kwargs:  # the full-width unet: a tiny one instead (a config's own kwargs are kept)
        sets.append(f"model_kwargs={TINY_UNET}")
        kwargs = {"base_width": 4, "depth": 2}
    out = tmp_path / "run"
    argv = ["fit", "--config", str(config), "--data-dir", str(fold_dir), "--out", str(out)]
    assert main([*argv, *(a for s in sets for a in ("--set", s))]) == 0
    summary = json.loads((out / "summary.json").read_text())
    cfg = summary["config"]
    assert (cfg["lr"], cfg["model_kwargs"], cfg["holdout_fraction"], cfg["image_size"]) == (
        3e-4, kwargs, None, 64)  # fmt: skip
    assert (cfg["devices"], cfg["precision"], cfg["accelerator"]) == (1, "32", "cpu")
    assert summary["epochs_run"] == 1
    # The config's own recipe reached the run: these are what the shipped configs differ in.
    mine = ("augment", "gpu_cache", "channels_last", "n_folds", "deterministic", "select")
    assert {k: cfg[k] for k in mine} == {k: getattr(own, k) for k in mine}
    assert summary["config_hash"] == apply_overrides(TrainConfig(), cfg).hash()


@pytest.mark.parametrize("text", ["", "# only a comment\n", "{}\n"])
def test_an_empty_config_is_an_error_naming_the_missing_fields(tmp_path, text):
    """It used to run the default grid (the TrainConfig defaults' one model, five folds) silently."""
    path = write(tmp_path / "empty.yaml", text)
    with pytest.raises(
        ConfigError, match=r"empty.yaml: empty config: no keys set \(missing: models, folds, seeds, train"
    ):
        load_benchmark_config(path)


def test_a_value_the_model_refuses_fails_before_the_grid(tmp_path, capsys, monkeypatch):
    """`base_width: -8` passes the keyword check; each model is now built once, on meta, before run 1."""
    import benchmark.pipeline as pipeline

    monkeypatch.setattr(pipeline, "fit", lambda *a, **k: pytest.fail("training started"))
    # No --data-dir: the default one is relative to the working directory, never the checkout's data.
    monkeypatch.chdir(tmp_path)
    text = f"base: {CONFIGS / 'smoke.yaml'}\nmodels: [empty, sk_unet]\n"
    text += "model_kwargs: {sk_unet: {base_width: -8}}\n"
    args = [
        "run",
        "--config",
        str(write(tmp_path / "bad.yaml", text)),
        "--results-dir",
        str(tmp_path / "res"),
    ]
    assert main(args) == 2 and not (tmp_path / "res").exists()  # nothing generated, nothing trained
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: model 'sk_unet' with model_kwargs {'base_width': -8")
    assert "cannot be built (base_width and depth must be >= 1" in err[0]


@pytest.mark.parametrize(
    "setting,model,fragment",
    [("encoder_weights=imagenet", "sk_unet", "sk_unet is trained from scratch"),
     ("model_train.unet_vgg16={encoder_weights: imagenet}", "unet_vgg16", "need network access or a cached")],
)  # fmt: skip
def test_encoder_weights_a_model_cannot_take_fail_before_the_grid(tmp_path, capsys, monkeypatch, setting,
                                                                   model, fragment):  # fmt: skip
    """Every run of a model trained from scratch failed one by one (25 of gpu.yaml's 45): the
    models were built before the grid without the weights. Uncached weights offline too."""
    import benchmark.pipeline as pipeline

    monkeypatch.setattr(pipeline, "fit", lambda *a, **k: pytest.fail("training started"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: nothing downloaded, ever
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.chdir(tmp_path)
    args = ["run", "--config", str(CONFIGS / "smoke.yaml"), "--models", model, "--set", setting]
    assert main([*args, "--results-dir", str(tmp_path / "res"), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and err[0].startswith(f"error: model '{model}' with model_kwargs")
        and fragment in err[0]
    )


def test_print_config_of_a_config_without_a_fallback_needs_no_data(tmp_path, capsys, monkeypatch):
    """gpu.yaml's header says `--print-config` shows the resolved config: it stopped with 'no data
    to run on'. It prints the config and says a run needs --data-dir; the run still refuses."""
    monkeypatch.chdir(tmp_path)  # no data/ultrasound-nerve-segmentation here
    assert main(["run", "--config", str(CONFIGS / "gpu.yaml"), "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "# no --data-dir, and this config has no synthetic: fallback: run needs --data-dir\n" in out
    assert "name: gpu\n" in out and "executor: ray\n" in out
    assert load_benchmark_config(write(tmp_path / "printed.yaml", out)).name == "gpu"
    assert main(["run", "--config", str(CONFIGS / "gpu.yaml"), "--dry-run"]) == 2
    assert "no data to run on: give --data-dir" in capsys.readouterr().err

"""Bad or surprising config input is one line naming the file and the problem, never a traceback or a
silent default; and ``run --print-config`` prints the benchmark the same command runs."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from benchmark import grid_configs
from benchmark.cli import main
from benchmark.core.config import ConfigError, load_benchmark_config
from benchmark.core.config_text import to_yaml
from benchmark.core.overrides import apply_benchmark_overrides
from benchmark.core.parsing import load_yaml
from datamodules.errors import NerveBenchError

CONFIGS = Path(__file__).resolve().parents[2] / "benchmark" / "configs"


def child(tmp_path: Path, text: str, base: str = "smoke.yaml") -> Path:
    path = tmp_path / "child.yaml"
    path.write_text(f"base: {CONFIGS / base}\n{text}")
    return path


def refused(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    """The one line ``argv`` exits 2 with."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def dry_run_names(capsys: pytest.CaptureFixture, argv: list[str]) -> list[str]:
    assert main([*argv, "--dry-run"]) == 0
    return [line.split(" -> ")[1] for line in capsys.readouterr().out.splitlines() if " -> " in line]


def test_yaml_scalars_are_yaml_12_and_a_repeated_key_is_refused():
    # A date is text (no field is a date), 3e-4 a float, true/false the booleans; merge keys still work.
    assert load_yaml("a: 2024-13-45\nb: 'yes'\nd: true\ne: 3e-4\n", "f.yaml") == {
        "a": "2024-13-45", "b": "yes", "d": True, "e": 3e-4}  # fmt: skip
    # YAML 1.2's numbers, as --set reads them: 017 was octal 15, 3:00 base 60, 1_0 ten, 0b11 three
    numbers = load_yaml("a: 017\nb: 3:00\nc: 1_0\nd: 0b11\ne: 0o17\nf: 0x1F\ng: .5\nh: -.inf\n", "f.yaml")
    expected = {"a": 17, "b": "3:00", "c": "1_0", "d": "0b11", "e": 15, "f": 31, "g": 0.5, "h": -math.inf}
    assert numbers == expected
    merged = load_yaml("base: &b {x: 1, y: 2}\nc: {<<: *b, x: 3}\n", "f.yaml")
    assert merged["c"] == {"x": 3, "y": 2}
    # yes/no/on/off: YAML 1.1 booleans, YAML 1.2 text; as text `presence_head: no` in model_kwargs
    # (not type-checked) reached the factory as "no", a true value, and built the head.
    for word in ("yes", "no", "off", "On"):
        with pytest.raises(ConfigError, match=rf"^f.yaml:2: invalid YAML \({word}: write true or false"):
            load_yaml(f"models: [unet]\nmodel_kwargs: {{unet: {{presence_head: {word}}}}}\n", "f.yaml")
    with pytest.raises(ConfigError, match=r"^f.yaml:3: invalid YAML \(key 'train' appears twice"):
        load_yaml("train: {epochs: 3}\nmodels: [unet]\ntrain: {batch_size: 8}\n", "f.yaml")
    with pytest.raises(ConfigError, match=r"^f.yaml: invalid YAML \(nested too deeply\)"):
        load_yaml("a: " + "[" * 5000, "f.yaml")
    # 7 lines of aliases: 10**7 values once expanded (a MemoryError traceback after a minute)
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n" for p, n in zip("abcdef", "bcdefg")
    )
    with pytest.raises(ConfigError, match=r"^f.yaml: invalid YAML \(more than 100,000 values once its alia"):
        load_yaml(bomb, "f.yaml")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("train: {seed: 2024-13-45}\n", "train: seed='2024-13-45' should be an integer"),
        ("train: {augment: yes}\n", "invalid YAML (yes: write true or false (or quote it as text))"),
        ("train: []\n", "train: must be a mapping of TrainConfig fields"),
        (
            "epochs: 3\n",
            "unknown top-level key 'epochs' (epochs is a TrainConfig field: set it under train:)",
        ),
        ("model_kwargs: {unet: {1: 2}}\n", "model_kwargs.unet: 1 is not a name"),
        (
            "model_kwargs: {sk_unet_typo: {base_width: 2}}\n",
            "model_kwargs: unknown model 'sk_unet_typo'; did",
        ),
        ("model_train: {unte: {epochs: 2}}\n", "model_train: unknown model 'unte'; did you mean 'unet'"),
        ("model_kwargs: {sk_unet: {bogus: 4}}\n", "model 'sk_unet': unknown argument(s) bogus"),
        ("synthetic: {trian: {}}\n", "synthetic: unknown key(s) ['trian']"),
        ("synthetic: {folds: [0, 5]}\n", "synthetic.folds: [5] outside its split's folds [0, 1, 2]"),
        ("synthetic: {generator: {subjects: many}}\n", "synthetic.generator: subjects='many' should be an"),
        ("synthetic: {generator: {seed: 2024-01-01}}\n", "synthetic.generator: seed='2024-01-01' should be"),
        ("synthetic: {generator: {subjects: -3}}\n", "synthetic.generator: subjects must be >= 1, got -3"),
        ("gpus_per_run: 1.5\n", "gpus_per_run=1.5: a share of one GPU (<= 1) or whole GPUs"),
        ("synthetic: {seeds: [-1]}\n", "synthetic.seeds=[-1] must lie in 0 .. 2**32-1"),  # were accepted,
        ("synthetic: {seeds: [0, 0]}\n", "synthetic.seeds=[0, 0] must be non-empty, without repeats"),  # or
        ("synthetic: {folds: []}\n", "synthetic.folds=[] must be non-empty"),  # named no file without data
    ],
)
def test_a_bad_value_is_one_line_naming_the_file(tmp_path, capsys, text, words):
    path = child(tmp_path, text, base="default.yaml")
    data = tmp_path / "data"  # a given --data-dir: the synthetic section is checked all the same
    (data / "train").mkdir(parents=True)
    err = refused(capsys, ["run", "--config", str(path), "--data-dir", str(data), "--dry-run"])
    assert err.startswith((f"error: {path}: ", f"error: {path}:2: ")) and words in err, err  # :2: the line


def test_the_synthetic_axes_read_as_the_top_levels(tmp_path, capsys, monkeypatch):
    """``synthetic: {seeds: 0}`` and ``folds: 1`` ended in a TypeError traceback, ``seeds: "0,1"`` in
    a ValueError; the top level reads all three."""
    from benchmark import fallback

    path = child(tmp_path, 'synthetic: {seeds: "0,1", folds: 1}\n', base="default.yaml")
    syn = fallback.synthetic_benchmark(load_benchmark_config(path))
    assert (syn.seeds, syn.folds) == ((0, 1), (1,))
    path = child(tmp_path, "synthetic: {seeds: 2}\n", base="default.yaml")
    assert fallback.synthetic_benchmark(load_benchmark_config(path)).seeds == (2,)


def test_print_config_under_the_synthetic_fallback_is_the_run(tmp_path, capsys, monkeypatch):
    """The fallback's section replaces train: fields and --set replaces them again: the printed file,
    run without data, lists the same runs (it listed others: synthetic.train's epochs won there)."""
    monkeypatch.chdir(tmp_path)  # no data/ultrasound-nerve-segmentation here: the fallback applies
    argv = ["run", "--set", "epochs=1", "--models", "unet", "--results-dir", str(tmp_path / "r")]
    assert main([*argv, "--print-config"]) == 0
    printed = tmp_path / "printed.yaml"
    printed.write_text(capsys.readouterr().out)
    assert "# no --data-dir: the synthetic fallback's recipe" in printed.read_text()
    names = dry_run_names(capsys, argv)
    assert len(names) == 3 and dry_run_names(capsys, ["run", "--config", str(printed)]) == names
    again = tmp_path / "again.yaml"  # and printing the printed file gives it back
    assert main(["run", "--config", str(printed), "--print-config"]) == 0
    again.write_text(capsys.readouterr().out)
    assert load_benchmark_config(again) == load_benchmark_config(printed)


@pytest.mark.parametrize(
    ("flag", "value", "words"),
    [
        ("--folds", "", "folds=[] must be non-empty, without repeats"),
        ("--folds", ",", "folds=[] must be non-empty"),
        ("--models", "", "models=[] must be non-empty"),
        ("--folds", "0,0", "folds=[0, 0] must be non-empty, without repeats"),
        ("--models", "unet,unet", "models=['unet', 'unet']"),
        ("--seeds", "3,3", "seeds=[3, 3]"),
    ],
)
def test_an_empty_or_repeated_subset_is_refused_not_an_empty_or_doubled_grid(
    tmp_path, capsys, flag, value, words
):
    # It trained nothing and exited 0, ran every model, or listed a run twice.
    for mode in ("--dry-run", "--print-config"):
        argv = [
            "run",
            "--config",
            str(CONFIGS / "smoke.yaml"),
            "--results-dir",
            str(tmp_path),
            flag,
            value,
            mode,
        ]
        assert words in refused(capsys, argv)


def test_a_hold_out_split_runs_fold_0_once(tmp_path, capsys, monkeypatch):
    """Fold is meaningless under one hold-out set: folds 0, 1 and 2 were three identical trainings."""
    monkeypatch.chdir(tmp_path)
    argv = ["run", "--set", "holdout_fraction=0.2", "--models", "unet", "--results-dir", str(tmp_path)]
    assert [n.split("__")[1] for n in dry_run_names(capsys, argv)] == ["f0"]
    bench = load_benchmark_config(CONFIGS / "default.yaml")
    assert apply_benchmark_overrides(bench, {"holdout_fraction": "0.2"}).folds == (0,)
    assert "folds=[1] must lie in 0..0 (holdout_fraction" in refused(
        capsys, [*argv, "--folds", "1", "--dry-run"]
    )


def test_per_model_entries_of_models_outside_the_grid_are_still_checked(capsys):
    smoke = str(CONFIGS / "smoke.yaml")
    base = ["run", "--config", smoke, "--models", "unet", "--print-config"]
    assert "unknown argument(s) bogus" in refused(capsys, [*base, "--set", "model_kwargs.sk_unet={bogus: 4}"])
    assert main([*base, "--set", "model_kwargs={base_width: 4}"]) == 0  # every model's, but only unet runs
    assert "models: [unet]" in capsys.readouterr().out
    assert main([*base[:-3], "--print-config", "--set", "models=unet, sk_unet"]) == 0  # not ' sk_unet'
    assert "models: [unet, sk_unet]" in capsys.readouterr().out


def test_gpus_per_run_and_the_world_it_makes_are_named(tmp_path, capsys, monkeypatch):
    gpu = ["run", "--config", str(CONFIGS / "gpu.yaml"), "--data-dir", str(tmp_path), "--dry-run"]
    (tmp_path / "train").mkdir()
    err = refused(capsys, [*gpu, "--set", "gpus_per_run=3"])
    assert "not divisible by the 3 training processes" in err and "gpus_per_run=3 GPUs per run" in err
    # The local executor: devices: auto is this machine's GPUs, and gpus_per_run plays no part.
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    with pytest.raises(ConfigError, match=r"by the 3 training processes \(devices x num_nodes\); [^(]*$"):
        grid_configs.build_grid(load_benchmark_config(CONFIGS / "default.yaml"))


def test_a_text_that_reads_as_a_number_is_quoted_when_printed(tmp_path):
    bench = apply_benchmark_overrides(
        load_benchmark_config(CONFIGS / "smoke.yaml"), {"wandb_project": "1e5", "name": "0o17"}
    )
    path = tmp_path / "p.yaml"
    path.write_text(to_yaml(bench))
    loaded = load_benchmark_config(path)
    assert (loaded.train.wandb_project, loaded.name) == ("1e5", "0o17") and loaded == bench


def test_run_finds_its_default_config_from_any_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--print-config"]) == 0
    assert "name: default" in capsys.readouterr().out
    err = refused(capsys, ["run", "--config", str(CONFIGS / "gpu.yaml"), "--dry-run"])
    assert err.startswith(f"error: {CONFIGS / 'gpu.yaml'}: no data to run on: give --data-dir")


@pytest.mark.parametrize("value", ["-5", "nan", "inf", "lots"])
def test_min_free_gb_is_a_number_of_gb_as_its_environment_variable(capsys, value):
    with pytest.raises(SystemExit) as exit_info:  # argparse: usage and one error line, exit 2
        main(["run", "--min-free-gb", value, "--dry-run"])
    assert exit_info.value.code == 2
    assert f"--min-free-gb: expected a number of GB >= 0, got '{value}'" in capsys.readouterr().err


def test_a_misspelt_key_in_a_base_file_is_named_in_that_file(tmp_path):
    """It was reported against the file built on it, which does not hold the key."""
    base = tmp_path / "base.yaml"
    base.write_text(f"base: {CONFIGS / 'smoke.yaml'}\ntrain: {{epoch: 3}}\n")
    top = tmp_path / "top.yaml"
    top.write_text("base: base.yaml\nmodels: [unet]\n")
    with pytest.raises(
        ConfigError, match=rf"^{base}: train: unknown config key 'epoch'; did you mean epochs"
    ):
        load_benchmark_config(top)
    base.write_text(f"base: {CONFIGS / 'smoke.yaml'}\ntrain: {{lr: abc, epochs: 2}}\n")  # a bad value too
    with pytest.raises(ConfigError, match=rf"^{base}: train: lr='abc' should be a finite number"):
        load_benchmark_config(top)
    top.write_text("base: base.yaml\nmodels: [unet]\ntrain: {lr: 0.5, epochs: -1}\n")  # the top's own
    with pytest.raises(ConfigError, match=rf"^{top}: train: epochs=-1 must be >= 1"):
        load_benchmark_config(top)
    base.write_text(f"base: {CONFIGS / 'smoke.yaml'}\nseed: 3\n")
    with pytest.raises(ConfigError, match=rf"^{base}: unknown top-level key 'seed'; did you mean seeds"):
        load_benchmark_config(top)


def test_the_free_space_variable_is_read_as_the_flag(monkeypatch):
    from benchmark.core import preflight

    for text, value in [("2.5", 2.5), ("0", 0.0), ("inf", None), ("-1", None), ("nan", None), ("abc", None)]:
        assert preflight.gigabytes(text) == value, text
    monkeypatch.setenv(preflight.MIN_FREE_ENV, "inf")  # it was taken: a floor no disk can meet
    with pytest.raises(NerveBenchError, match="NERVE_BENCH_MIN_FREE_GB='inf': expected a number of GB >= 0"):
        preflight.min_free_gb_default()


def test_a_data_dir_that_is_a_file_and_a_config_that_is_a_folder_are_named(tmp_path):
    """Both were "not found", though the path was there."""
    from benchmark import fallback
    from datamodules.errors import DataError

    (tmp_path / "a.zip").write_text("")  # the download, not its unpacked folder
    bench = load_benchmark_config(CONFIGS / "smoke.yaml")
    with pytest.raises(DataError, match=r"a.zip: a file, not a directory \(--data-dir / DATA\)"):
        fallback.resolve_data(bench, tmp_path / "a.zip", tmp_path)
    with pytest.raises(ConfigError, match=rf"^{tmp_path}: a directory, not a config file$"):
        load_benchmark_config(tmp_path)


def test_a_printed_fit_config_runs_its_own_fold_and_seed(tmp_path, capsys, synthetic_dir):
    """`run --config` of a `fit --print-config` file ran every fold of seed 0, without a word: the
    train: section's fold and seed are the grid's default axes now, as its model already was."""
    assert main(["fit", "--model", "unet", "--set", "seed=2", "--set", "fold=1", "--print-config"]) == 0
    printed = capsys.readouterr().out
    name = printed.splitlines()[0].split()[1].rstrip(":")  # "# unet__f1__s2__<hash>: `fit --config ..."
    path = tmp_path / "fit.yaml"
    path.write_text(printed)
    argv = ["run", "--config", str(path), "--data-dir", str(synthetic_dir)]
    argv += ["--results-dir", str(tmp_path / "r")]
    assert dry_run_names(capsys, argv) == [name]


def test_a_printed_fit_config_with_its_models_own_recipe_reads_back(tmp_path, capsys, synthetic_dir):
    """`fit --print-config` writes the model's own recipe as train: model_recipe; the file it prints
    reads back to that run (a first version of the model_recipe refusal refused it)."""
    grid = child(tmp_path, "models: [unet, empty]\nmodel_train: {unet: {lr: 0.003}}\n")
    assert main(["fit", "--config", str(grid), "--model", "unet", "--print-config"]) == 0
    printed = capsys.readouterr().out
    name = printed.splitlines()[0].split()[1].rstrip(":")
    path = tmp_path / "fit.yaml"
    path.write_text(printed)
    assert "model_recipe: {lr: 0.001}" in printed and "lr: 0.003" in printed
    assert main(["fit", "--config", str(path), "--print-config"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == printed.splitlines()[1:]  # the same config
    argv = [
        "run",
        "--config",
        str(path),
        "--data-dir",
        str(synthetic_dir),
        "--results-dir",
        str(tmp_path / "r"),
    ]
    assert dry_run_names(capsys, argv) == [name]
    assert main(["run", "--config", str(path), "--print-config"]) == 0  # one model: its recipe kept
    path.write_text(capsys.readouterr().out)
    assert "models: [unet]" in path.read_text() and "model_recipe: {lr: 0.001}" in path.read_text()
    typo = tmp_path / "typo.yaml"
    typo.write_text("train: {lr: 0.003, model_recipe: {lrr: 0.001}}\n")  # a traceback in a first version
    with pytest.raises(ConfigError, match=r"unknown train: model_recipe key 'lrr'; did you mean lr\?"):
        load_benchmark_config(typo)
    assert main(["fit", "--config", str(path), "--print-config"]) == 0
    assert capsys.readouterr().out.splitlines()[0].split()[1].rstrip(":") == name  # the same run


@pytest.mark.parametrize(
    ("train", "problem"),
    [
        ("{seed: 3}", "train: seed 3 is ignored: seeds: [0] sets every run's seed"),
        ("{fold: 0}", "train: fold 0 is ignored: folds: [0, 1, 2, 3, 4] sets every run's fold"),
        (
            "{model_recipe: {lr: 0.1}}",
            "train: model_recipe is one model's: with models: write model_train: {MODEL: {FIELD: VALUE}}",
        ),
    ],
)
def test_a_train_value_that_the_chains_grid_sets_otherwise_is_refused(tmp_path, train, problem):
    """`train: {seed: 3}` over a chain setting seeds: [0] (every shipped config does) ran seed 0, and
    `train: {model_recipe: ...}` over a models: axis was taken as every model's; `--set` refused both."""
    path = child(tmp_path, f"train: {train}\n", base="default.yaml")
    with pytest.raises(ConfigError, match=rf"^{path}: {re.escape(problem)}$"):
        load_benchmark_config(path)
    same = load_benchmark_config(child(tmp_path, "train: {seed: 0}\n", base="default.yaml"))
    assert (same.seeds, same.train.seed) == ((0,), 0)  # the value the grid runs anyway: accepted
    grid = apply_benchmark_overrides(same, {"models": "sk_unet,unet", "seeds": "2,3"})
    assert (grid.train.model, grid.train.seed) == ("sk_unet", 2)  # the first run's (`fit --config`)
    printed = tmp_path / "printed.yaml"
    printed.write_text(to_yaml(grid))  # train: leaves the axes' fields out, so it reads back
    assert load_benchmark_config(printed) == grid


def test_folds_beyond_the_fallbacks_split_still_run_and_its_train_takes_no_grid_field(tmp_path):
    """train: took the grid's first fold (3), and the fallback's split (3 folds) refused it on every
    rebuild of the config: `folds: [3, 4]` over default.yaml stopped even with data (a review)."""
    from benchmark import fallback

    bench = load_benchmark_config(child(tmp_path, "folds: [3, 4]\n", base="default.yaml"))
    again = apply_benchmark_overrides(bench, {"lr": 0.01})  # a rebuild, as run makes
    assert again.train.fold == 3 and fallback.synthetic_benchmark(again).folds == (0, 1, 2)
    with pytest.raises(ConfigError, match=r": synthetic.train: fold, seed is set by models, synthetic.folds"):
        load_benchmark_config(child(tmp_path, "synthetic: {train: {seed: 3, fold: 1}}\n"))
    with pytest.raises(
        ConfigError, match=r"synthetic.train: model_recipe is written by synthetic.model_train"
    ):
        load_benchmark_config(child(tmp_path, "synthetic: {train: {model_recipe: {lr: 0.1}}}\n"))


def test_run_help_names_what_a_file_without_the_grid_axes_gets(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    table = out[out.index("benchmark fields") :]
    shown = {line.split()[0]: line[36:48].strip() for line in table.splitlines()[1:6]}
    assert shown == {
        "name": "file stem",
        "models": "train.model",
        "folds": "every fold",
        "seeds": "train.seed",
        "train": "{}",
    }
    assert "required" not in table[: table.index("TrainConfig fields")]  # a file may leave every field out
    (tmp_path / "mine.yaml").write_text("train: {model: sk_unet, n_folds: 3}\n")
    bench = load_benchmark_config(tmp_path / "mine.yaml")
    assert (bench.name, bench.models, bench.folds, bench.seeds) == ("mine", ("sk_unet",), (0, 1, 2), (0,))

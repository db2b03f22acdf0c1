"""A grid that cannot work with its data or this machine stops before the first run: one line, exit 2,
no run directory (it used to fail run after run, each with a traceback, and exit 1)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark import grid_checks
from benchmark.cli import main
from benchmark.core.config import ConfigError, TrainConfig
from benchmark.core.model_kwargs import build_model, build_models
from datamodules.errors import DataError
from models.registry import ModelError

SMOKE = Path(__file__).resolve().parents[2] / "benchmark" / "configs" / "smoke.yaml"


def _run(synthetic_dir: Path, results: Path, *extra: str) -> list[str]:
    return ["run", "--config", str(SMOKE), "--data-dir", str(synthetic_dir), "--results-dir", str(results),
            "--models", "unet,empty", "--no-report", *extra]  # fmt: skip


SPLIT = "unet fold 0: cannot split by subject: n_folds=7 is more than the 6 subjects; every fold needs one"
BATCH = (
    "unet fold 0: the fit part has 24 images, fewer than one global batch (batch_size=40); lower "
    "batch_size or use more data"
)


@pytest.mark.parametrize(("setting", "words"), [("n_folds=7", SPLIT), ("batch_size=40", BATCH)])
def test_a_split_the_data_cannot_give_stops_the_grid_before_any_run(
    synthetic_dir: Path, tmp_path: Path, capsys, setting: str, words: str
) -> None:
    """6 subjects x 8 frames; with 3 folds, fold 0 holds 2 subjects and the inner set 1: 24 fit. The
    refused run leaves no results directory (an empty one was left), and a dry run on the data it
    decoded refuses with the same line (it listed the grid, exit 0)."""
    results = tmp_path / "results" / "new"
    assert main(_run(synthetic_dir, results, "--set", setting)) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {synthetic_dir}: {words}"]
    assert not results.parent.exists()
    assert main(_run(synthetic_dir, results, "--set", setting, "--dry-run")) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {synthetic_dir}: {words}"]


def test_a_dry_run_on_data_not_decoded_here_says_what_run_checks_then(
    synthetic_dir: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("NERVE_BENCH_CACHE_DIR", str(tmp_path / "empty_cache"))
    assert main(_run(synthetic_dir, tmp_path / "results", "--set", "batch_size=40", "--dry-run")) == 0
    assert capsys.readouterr().out.splitlines()[-2] == (  # before the disk line
        f"data: this node's decoded copy of {synthetic_dir} is not there yet (run makes it): run checks "
        "then that every run's split holds one global batch"
    )
    assert not (tmp_path / "empty_cache").exists() and not (tmp_path / "results").exists()


def test_a_gpu_recipe_where_no_gpu_is_visible_is_one_line_for_run_and_fit(
    synthetic_dir: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    results = tmp_path / "results"
    assert main(_run(synthetic_dir, results, "--set", "accelerator=gpu", "--dry-run")) == 0  # a login node
    capsys.readouterr()
    assert main(_run(synthetic_dir, results, "--set", "accelerator=gpu")) == 2
    fit = ["fit", "--data-dir", str(synthetic_dir), "--out", str(results / "fit"), "--set", "accelerator=gpu"]
    assert main(fit) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(
        e.startswith("error: accelerator=gpu (unet): no CUDA GPU is visible") for e in err
    )
    assert not results.exists()


def test_each_distinct_split_is_checked_once_and_a_feasible_grid_passes(monkeypatch) -> None:
    subjects = np.repeat(np.arange(6), 8)
    positive = np.tile([True, False], 24)
    grid = [
        TrainConfig(model=m, fold=f, n_folds=3, batch_size=4) for m in ("unet", "sk_unet") for f in (0, 1, 2)
    ]
    calls = []
    real = grid_checks.split_for
    monkeypatch.setattr(grid_checks, "split_for", lambda cfg, *a: calls.append(cfg.fold) or real(cfg, *a))
    grid_checks.check_splits(grid, Path("data"), subjects, positive)
    assert calls == [0, 1, 2]  # the second model shares the three splits
    baseline_first = [TrainConfig(model=m, n_folds=3, batch_size=33) for m in ("empty", "unet")]
    with pytest.raises(DataError, match="^data: unet fold 0: the fit part has 24 images"):
        grid_checks.check_splits(baseline_first, Path("data"), subjects, positive)  # empty: no batch
    with pytest.raises(DataError, match="sk_unet fold 0: the fit part has"):
        grid_checks.check_splits(
            [TrainConfig(model="sk_unet", n_folds=3, batch_size=33)], Path("d"), subjects, positive
        )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    grid_checks.check_accelerator(grid)  # accelerator auto / cpu: nothing to say
    with pytest.raises(ConfigError, match="accelerator=cuda"):
        grid_checks.check_accelerator([TrainConfig(accelerator="cuda")])


class _FixedRule(torch.nn.Module):
    """A plugin's rule with nothing to train, under a name that is not the baseline's."""

    trainable = False

    def __init__(self, in_channels: int = 1, encoder_weights: str | None = None) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(1), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1] * 0 + self.bias


class _MetaRefuses(torch.nn.Module):
    """Trainable, but its constructor reads a value back, which the meta device cannot."""

    def __init__(self, in_channels: int = 1, encoder_weights: str | None = None) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(in_channels, 1, 1)
        float(self.conv.weight.sum().item())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_the_batch_check_asks_the_model_whether_it_trains_not_its_name() -> None:
    from models.registry import register, unregister

    subjects, positive = np.repeat(np.arange(6), 8), np.tile([True, False], 24)
    register("fixed_rule_test", paper="test")(_FixedRule)
    register("meta_refuses_test", paper="test")(_MetaRefuses)
    try:
        grid_checks.check_splits(
            [TrainConfig(model="fixed_rule_test", n_folds=3, batch_size=33)], Path("d"), subjects, positive
        )  # 24 fit images, batch 33: nothing to train, so no batch to fill
        with pytest.raises(DataError, match="meta_refuses_test fold 0: the fit part has 24 images"):
            grid_checks.check_splits(  # built on the CPU instead: it trains, so it needs the batch
                [TrainConfig(model="meta_refuses_test", n_folds=3, batch_size=33)],
                Path("d"),
                subjects,
                positive,
            )
        build_models([TrainConfig(model="meta_refuses_test")])  # was "cannot be built": meta's fault
        with pytest.raises(
            ConfigError, match="model 'fixed_rule_test' with model_kwargs {'width': 3}: cannot"
        ):
            build_model(TrainConfig(model="fixed_rule_test", model_kwargs={"width": 3}))
        with pytest.raises(ModelError, match="'fixed_rule_test': unknown argument.s. width"):
            build_models([TrainConfig(model="fixed_rule_test", model_kwargs={"width": 3})])  # by signature
    finally:
        unregister("fixed_rule_test")
        unregister("meta_refuses_test")


def test_an_inner_set_larger_than_the_fit_part_is_pointed_out_once(capsys) -> None:
    """Few subjects of unequal size: one inner subject can outweigh the whole fit part."""
    subjects = np.repeat([1, 2, 3, 4], [2, 2, 20, 20])
    positive = np.tile([True, False], 22)
    warned = 0
    for seed in range(8):
        grid = [TrainConfig(model=m, n_folds=2, split_seed=seed, batch_size=2) for m in ("unet", "sk_unet")]
        fit, inner, *_ = grid_checks.split_for(grid[0], subjects, positive)
        grid_checks.check_splits(grid, Path("data"), subjects, positive)
        err = capsys.readouterr().err.splitlines()
        if len(inner) > len(fit):
            warned += 1
            assert err == [
                f"warning: data: fold 0: the inner selection set ({len(inner)} images) is larger than the "
                f"fit part ({len(fit)}); with so few subjects, use fewer folds or a smaller inner_fraction"
            ]  # once for the two models that share the split
        else:
            assert err == []
    assert 0 < warned < 8


def test_run_decodes_the_data_once_and_hands_it_to_the_executor(synthetic_dir, tmp_path, monkeypatch) -> None:
    """The up-front check decodes into the node's cache, which the runs map; the Ray executor gets
    the same set (it used to be decoded twice: for the check, then for the cache or the object
    store); the local one gets none (its runs map the cache; the driver keeps no copy)."""
    from benchmark import ray_grid
    from benchmark.cli import main
    from datamodules import decoded_cache

    calls, handed = [], []
    real = decoded_cache.load_train
    monkeypatch.setattr(decoded_cache, "load_train", lambda *a, **k: calls.append(a) or real(*a, **k))
    monkeypatch.setenv("NERVE_BENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(ray_grid, "execute", lambda *a, train_set=None, **k: handed.append(train_set) or [])
    args = [
        "run",
        "--data-dir",
        str(synthetic_dir),
        "--results-dir",
        str(tmp_path / "res"),
        "--models",
        "empty",
    ]
    args += ["--folds", "0", "--seeds", "0", "--no-report", "--set", "n_folds=3", "--set", "accelerator=cpu"]
    main(args)
    monkeypatch.setattr(ray_grid, "choose", lambda *a: ("ray", ""))
    main(args)
    assert len(calls) == 1 and handed[0] is None  # decoded once for both invocations: the cache
    assert isinstance(handed[1].images, np.memmap)
    assert handed[1].frame_fingerprints is not None  # from the cache: computed once per node too


def test_the_object_store_gets_plain_arrays_not_the_caches_memmaps(synthetic_dir, tmp_path) -> None:
    """A memmap is pickled whole into the object store (a private copy per task); a plain array is
    one shared, zero-copy, read-only buffer."""
    from benchmark.ray_grid import share_train_set
    from datamodules.decoded_cache import load_train_shared

    class Store:
        def __init__(self) -> None:
            self.put_types: list[type] = []

        def put(self, value):
            self.put_types.append(type(value))
            return value

    train = load_train_shared(synthetic_dir, tmp_path / "cache")
    assert isinstance(train.images, np.memmap)
    store = Store()
    shared = share_train_set(store, synthetic_dir, train)
    assert store.put_types[1:] == [np.ndarray, np.ndarray, np.ndarray]  # images, masks, fingerprints
    assert shared[-1] == train.digest is not None  # the content hash, hashed once for every task


def test_a_gpu_recipe_that_would_train_on_the_cpu_is_refused(monkeypatch, tmp_path, capsys, synthetic_dir):
    """default.yaml on real data and no GPU trained 45 bf16 runs with the GPU data cache on the CPU
    (weeks), first without a word, then after a warning; the Ray executor refused it already."""
    gpu_recipe = TrainConfig(accelerator="auto", precision="bf16-mixed", gpu_cache=True)
    cpu_recipe = TrainConfig(accelerator="auto", precision="32", gpu_cache=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    problem = grid_checks.gpu_recipe_on_cpu([gpu_recipe, cpu_recipe, gpu_recipe])
    assert problem is not None and problem.startswith("no GPU is visible (torch ")
    assert "for 2 run(s) of a GPU recipe (bf16-mixed, gpu_cache)" in problem
    assert "--set accelerator=cpu" in problem and "--set precision=32 --set gpu_cache=false" in problem
    assert grid_checks.gpu_recipe_on_cpu([dataclasses.replace(gpu_recipe, accelerator="cpu")]) is None
    argv = ["run", "--data-dir", str(synthetic_dir), "--results-dir", str(tmp_path / "r"), "--no-report"]
    argv += ["--set", "batch_size=8"]  # default.yaml's 64 is more than these data's fit part: refused too
    assert main([*argv, "--models", "unet,empty"]) == 2 and not (tmp_path / "r").exists()  # nothing written
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0] == f"error: {grid_checks.gpu_recipe_on_cpu([gpu_recipe])}".replace(
        "for 1 run(s)",
        "for 5 run(s)",  # unet's 5 folds: the floor trains nothing
    )
    assert main([*argv, "--models", "unet", "--dry-run"]) == 0
    shown = capsys.readouterr().out
    assert "warning: run without --dry-run refuses this on this machine (exit 2): no GPU is visible" in shown
    gpu_yaml = ["--config", str(Path(grid_checks.__file__).parent / "configs" / "gpu.yaml")]
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # the Ray executor starts its Ray here: no GPU
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)  # as on a GPU box's login node
    assert main([*argv, *gpu_yaml, "--models", "unet", "--dry-run"]) == 0  # said nothing
    shown = capsys.readouterr().out
    assert "refuses this on this machine (exit 2): its Ray would start here, where no GPU" in shown
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # a cluster elsewhere: its GPUs are not known here
    assert main([*argv, *gpu_yaml, "--models", "unet", "--dry-run"]) == 0
    assert "refuses this" not in capsys.readouterr().out
    # Nothing left to train (the floor; a GPU box's finished grid scored on a CPU box): no refusal
    from benchmark import ray_grid

    monkeypatch.setattr(ray_grid, "execute", lambda *a, **k: [])
    main([*argv, "--models", "empty"])
    assert "no GPU is visible" not in capsys.readouterr().err
    assert grid_checks.gpu_recipe_on_cpu([cpu_recipe]) is None
    cached, mixed = (
        TrainConfig(accelerator="auto", precision="auto", gpu_cache=True),
        TrainConfig(accelerator="auto", precision="16-mixed", gpu_cache=False),
    )  # every run's part is named, and "auto" is none
    assert "GPU recipe (16-mixed, gpu_cache)" in (grid_checks.gpu_recipe_on_cpu([cached, mixed]) or "")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert grid_checks.gpu_recipe_on_cpu([gpu_recipe]) is None


def test_fit_refuses_a_gpu_recipe_that_would_train_on_the_cpu(monkeypatch, tmp_path, capsys, synthetic_dir):
    """`fit --config default.yaml` on a CPU box trained one bf16 run with the GPU cache on the CPU
    (hours) while `run` refused the same recipe; a finished run is still reported, not refused."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    default = Path(grid_checks.__file__).parent / "configs" / "default.yaml"
    out = tmp_path / "run"
    argv = ["fit", "--config", str(default), "--model", "unet", "--data-dir", str(synthetic_dir)]
    assert main([*argv, "--out", str(out)]) == 2 and not out.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no GPU is visible" in err[0] and "for 1 run(s) of a GPU recipe" in err[0]
    monkeypatch.setattr("benchmark.pipeline.fit", lambda *a, **k: {})  # training is not the point
    cpu = ["--set", "precision=32", "--set", "gpu_cache=false"]
    assert main([*argv, *cpu, "--out", str(out)]) == 0
    monkeypatch.setattr("benchmark.core.summary.is_complete", lambda *a: True)  # scored again only
    assert main([*argv, "--out", str(out)]) == 0 and "nothing trained" in capsys.readouterr().out


def test_a_ddp_run_needs_as_many_processes_as_its_outside_launcher_started(monkeypatch):
    """An `sbatch --ntasks=1` job with devices: 2 trained on one device without a word (Lightning
    takes its world from SLURM), and a torchrun world of another size failed at the first fit."""
    for var in ("SLURM_NTASKS", "SLURM_JOB_NAME", "TORCHELASTIC_RUN_ID", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    ddp = [TrainConfig(accelerator="cpu", devices=2, batch_size=8), TrainConfig(accelerator="cpu")]
    grid_checks.check_launcher(ddp)  # Lightning's own launcher starts the processes
    nodes = [*ddp, TrainConfig(model="attention_unet", accelerator="cpu", num_nodes=2, batch_size=8)]
    with pytest.raises(  # it waited for the other node, silent and deaf to SIGTERM, until killed
        ConfigError, match=r"^num_nodes=2 \(attention_unet\), but no srun or torchrun started this process"
    ):
        grid_checks.check_launcher(nodes)
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "bench")
    with pytest.raises(
        ConfigError, match=r"^SLURM \(SLURM_NTASKS\) started 1 process\(es\), but unet spans 2 "
    ):
        grid_checks.check_launcher(ddp)
    grid_checks.check_launcher(ddp[1:])  # one process: nothing to start
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "2")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    grid_checks.check_launcher(ddp)
    with pytest.raises(ConfigError, match=r"started 2 processes, but every run is one process"):
        grid_checks.check_launcher(ddp[1:])  # its rank 1 waited for a rank 0 that never came
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "interactive")  # Lightning starts the processes itself
    grid_checks.check_launcher(ddp)
    monkeypatch.delenv("SLURM_NTASKS")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "bench")
    monkeypatch.setenv("WORLD_SIZE", "16")
    with pytest.raises(
        ConfigError, match=r"^torchrun \(WORLD_SIZE\) started 16 process\(es\), but unet spans 2"
    ):
        grid_checks.check_launcher(ddp)
    monkeypatch.setenv("WORLD_SIZE", "2")
    grid_checks.check_launcher(ddp)
    grid_checks.check_launcher(nodes[2:])  # torchrun on 2 nodes of one process each: its world is the run's
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")  # a static rendezvous: every launch alike
    with pytest.raises(ConfigError, match=r"^torchrun: give each launch its own --rdzv-id"):
        grid_checks.check_launcher(ddp)


def test_logger_wandb_without_the_package_is_one_line_before_any_run(
    synthetic_dir, tmp_path, capsys, monkeypatch
):
    """Every run failed in turn ("Requirement 'wandb>=0.12.10' not met"), exit 1."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    line = "error: logger=wandb (unet): the wandb package is not installed here; install it (make install), "
    line += "or set logger: csv\n"
    for dry in ((), ("--dry-run",)):
        args = _run(synthetic_dir, tmp_path / "r", "--models", "unet", "--set", "logger=wandb", *dry)
        assert main(args) == 2 and capsys.readouterr().err == line
    assert not (tmp_path / "r" / "runs").exists()
    fit = ["fit", "--model", "unet", "--data-dir", str(synthetic_dir), "--set", "logger=wandb"]
    assert main([*fit, "--out", str(tmp_path / "f")]) == 2 and capsys.readouterr().err == line
    assert main(_run(synthetic_dir, tmp_path / "r", "--models", "unet", "--dry-run")) == 0  # smoke: none

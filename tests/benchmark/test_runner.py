"""The benchmark grid: selection, synthetic fallback, skipping, failures, interruption and resume."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from benchmark import fallback as fb
from benchmark import grid_configs, runner
from benchmark.cli import main
from benchmark.core.config import ConfigError, load_benchmark_config
from benchmark.core.summary import write_summary
from tests.benchmark.summaries import make_summary

CONFIGS = Path(__file__).resolve().parents[2] / "benchmark" / "configs"
SMOKE = CONFIGS / "smoke.yaml"


def fake_fit(calls, fail=(), interrupt_at=None):
    """A stand-in for train.fit: records calls, writes a complete summary, or fails on request."""

    def fit(cfg, data_dir, out_dir):
        calls.append(cfg.run_name())
        if interrupt_at is not None and len(calls) == interrupt_at:
            raise KeyboardInterrupt
        if cfg.model in fail:
            raise RuntimeError(f"{cfg.model} exploded")
        summary = make_summary(cfg.model, cfg.fold, cfg.seed, [0.5, 1.0], n_folds=cfg.n_folds)
        summary.update(run=cfg.run_name(), config=cfg.to_dict(), config_hash=cfg.hash())
        write_summary(out_dir, summary)
        return summary

    return fit


def test_grid_order_subsets_and_per_model_kwargs():
    bench = load_benchmark_config(SMOKE)
    bench = dataclasses.replace(bench, folds=(0, 1), seeds=(0, 7))
    grid = grid_configs.build_grid(bench)
    assert len(grid) == len(bench.models) * 2 * 2
    assert [(c.model, c.fold, c.seed) for c in grid[:4]] == [
        ("unet", 0, 0),
        ("unet", 0, 7),
        ("unet", 1, 0),
        ("unet", 1, 7),
    ]
    assert grid[0].model_kwargs == {"base_width": 8, "depth": 3} and grid[-1].model_kwargs == {}
    sub = grid_configs.build_grid(bench, models=["empty"], folds=[2], seeds=[3])
    assert [(c.model, c.fold, c.seed) for c in sub] == [("empty", 2, 3)]
    with pytest.raises(ConfigError, match="fold=5"):
        grid_configs.build_grid(bench, folds=[5])
    assert grid_configs.parse_list("0, 1,", int) == [0, 1] and grid_configs.parse_list(None) is None
    with pytest.raises(ConfigError, match="comma-separated"):
        grid_configs.parse_list("a,b", int)


def test_synthetic_fallback_is_announced_and_generated_once(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the README's default data path is relative: absent here
    bench = load_benchmark_config(CONFIGS / "default.yaml")
    tiny = {"subjects": 3, "per_subject": 2, "n_test": 1}
    bench = dataclasses.replace(bench, synthetic={**bench.synthetic, "generator": tiny})
    fallback, data = fb.resolve_data(bench, None, tmp_path)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "no --data-dir given" in out[0] and "synthetic" in out[0]
    assert data == fb.synthetic_data_dir(bench, tmp_path) and data.parent == tmp_path / fb.SYNTHETIC_DIR
    assert len(list((data / "train").glob("*_mask.tif"))) == 6
    assert fallback.train.image_size == 64 and fallback.train.precision == "32"
    assert fallback.folds == (0, 1, 2)  # every outer fold, so the out-of-fold board ranks complete models
    stamp = (data / "train" / "1_1.tif").stat().st_mtime_ns
    fb.resolve_data(bench, fb.DEFAULT_DATA_DIR, tmp_path)  # the Makefile's default DATA, absent
    assert "data/ultrasound-nerve-segmentation not found" in capsys.readouterr().out
    assert (data / "train" / "1_1.tif").stat().st_mtime_ns == stamp  # reused, not regenerated
    real, same = fb.resolve_data(bench, data, tmp_path)  # a dir with train/ is used as is
    assert same == data and real.train.image_size == 256


def test_synthetic_data_of_two_configs_coexist_and_a_damaged_one_is_regenerated(tmp_path):
    """Both configs' fallbacks shared RESULTS/_synthetic_data, and each rmtree'd the other's data set
    while the other command was still training on it."""
    base = load_benchmark_config(SMOKE)
    small = dataclasses.replace(base, synthetic={"generator": {"subjects": 2, "per_subject": 2, "n_test": 0}})
    other = dataclasses.replace(base, synthetic={"generator": {"subjects": 3, "per_subject": 2, "n_test": 0}})
    a = fb.ensure_synthetic(small, fb.synthetic_data_dir(small, tmp_path))
    b = fb.ensure_synthetic(other, fb.synthetic_data_dir(other, tmp_path))
    assert a != b and len(list((a / "train").glob("*_mask.tif"))) == 4
    assert len(list((b / "train").glob("*_mask.tif"))) == 6
    (a / "synthetic.json").write_text("{not json")  # a damaged stamp: regenerated, not a traceback
    assert fb.ensure_synthetic(small, a) == a and len(list((a / "train").glob("*_mask.tif"))) == 4
    assert sorted(p.name for p in (tmp_path / fb.SYNTHETIC_DIR).iterdir()) == sorted([a.name, b.name])


def test_mistyped_data_dir_is_an_error_not_a_synthetic_run(tmp_path, capsys, monkeypatch):
    from datamodules.errors import DataError

    monkeypatch.chdir(tmp_path)
    bench = load_benchmark_config(SMOKE)
    with pytest.raises(DataError, match=r"dta: data directory not found \(--data-dir / DATA\)"):
        fb.resolve_data(bench, tmp_path / "dta", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no train/ directory"):
        fb.resolve_data(bench, tmp_path / "empty", tmp_path)
    fb.DEFAULT_DATA_DIR.mkdir(parents=True)  # the default path, present but without train/
    with pytest.raises(DataError, match="ultrasound-nerve-segmentation: no train/ directory"):
        fb.resolve_data(bench, None, tmp_path)
    assert not (tmp_path / fb.SYNTHETIC_DIR).exists()
    args = ["run", "--config", str(SMOKE), "--data-dir", str(tmp_path / "dta"), "--results-dir", "res"]
    assert main(args) == 2 and main([*args, "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(
        line.startswith(f"error: {tmp_path / 'dta'}: data directory not found") for line in err
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "empty"]  # nothing written


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


def test_dry_run_writes_nothing(tmp_path, capsys, monkeypatch):
    """Not the synthetic data, not the results directory, not a lock: the file system is unchanged."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results" / "runs").mkdir(parents=True)
    before = _tree(tmp_path)
    assert main(["run", "--config", str(SMOKE), "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    smoke = load_benchmark_config(SMOKE)
    assert "no --data-dir given" in lines[0] and len(lines) == 2 + len(smoke.models) * len(smoke.folds)
    assert lines[-1].startswith(f"disk: the {len(smoke.models)} run(s) left need about")
    assert main(["run", "--config", str(SMOKE), "--dry-run", "--results-dir", "elsewhere/new"]) == 0
    assert _tree(tmp_path) == before


def test_a_dry_run_says_which_runs_are_only_scored_again(tmp_path, capsys, monkeypatch):
    """A finished run whose summary is gone keeps trained.json: the dry run says it will not train."""
    from benchmark.training import finished

    monkeypatch.chdir(tmp_path)
    cfg = grid_configs.build_grid(fb.synthetic_benchmark(load_benchmark_config(SMOKE), str(SMOKE)))[0]
    first, ckpts = cfg.run_name(), tmp_path / "results" / "runs" / cfg.run_name() / "checkpoints"
    ckpts.mkdir(parents=True)
    torch.save({"nerve_bench_history": {"epoch": [0]}}, ckpts / "last.ckpt")
    best = {"epoch": 0, "global_step": 3, "hyper_parameters": {"config": cfg.to_dict()}}  # as trained
    torch.save(best, ckpts / "best.ckpt")
    finished.drop_resume_state(ckpts.parent, cfg.hash(), {k: 1 for k in finished.FACTS})
    assert main(["run", "--config", str(SMOKE), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].endswith(f"-> {first} (trained: it is scored again from best.ckpt, not trained)")
    assert not any("scored again" in line for line in lines[2:])


def test_bad_synthetic_section_names_the_key():
    bench = load_benchmark_config(SMOKE)
    with pytest.raises(ConfigError, match="colour"):
        fb.synthetic_benchmark(dataclasses.replace(bench, synthetic={"generator": {"colour": 1}}))
    with pytest.raises(ConfigError, match="config: no data to run on: give --data-dir"):
        fb.synthetic_benchmark(dataclasses.replace(bench, synthetic={}))


def test_failure_is_recorded_and_the_rest_continue(tmp_path, capsys):
    bench = dataclasses.replace(load_benchmark_config(SMOKE), models=("unet", "boom", "empty"))
    calls = []
    grid = grid_configs.build_grid(bench)
    outcomes = runner.run_grid(grid, tmp_path, tmp_path, fit=fake_fit(calls, fail={"boom"}))
    assert [o.status for o in outcomes] == ["trained", "failed", "trained"]
    err = tmp_path / "runs" / outcomes[1].run / "error.txt"
    assert "boom exploded" in err.read_text() and "Traceback" in err.read_text()
    out = capsys.readouterr().out
    assert "[1/3] unet fold 0 seed 0 | elapsed" in out and "ETA" in out and "FAILED" in out
    # second invocation: only the failed run is attempted again; it now succeeds and error.txt goes
    calls.clear()
    outcomes = runner.run_grid(grid_configs.build_grid(bench), tmp_path, tmp_path, fit=fake_fit(calls))
    assert calls == [outcomes[-1].run] and not err.exists()
    assert sorted(o.status for o in outcomes) == ["skipped", "skipped", "trained"]


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_finished_runs_leftover_resume_checkpoint_is_deleted(tmp_path, executor):
    """Finished runs of earlier versions kept last.ckpt (three times best.ckpt); either executor
    replaces it by trained.json when it skips them (Ray is not started: nothing is left to train)."""
    from benchmark import ray_grid

    grid = grid_configs.build_grid(load_benchmark_config(SMOKE), models=["unet", "empty"])
    runner.run_grid(grid, tmp_path, tmp_path, fit=fake_fit([]))
    leftover = tmp_path / "runs" / grid[0].run_name() / "checkpoints" / "last.ckpt"
    leftover.parent.mkdir()
    torch.save({"nerve_bench_history": {"epoch": [0, 1]}, "optimizer_states": [{}]}, leftover)
    best = leftover.with_name("best.ckpt")
    torch.save({"epoch": 1, "global_step": 6}, best)
    weights = best.read_bytes()
    if executor == "local":
        outcomes = runner.run_grid(grid, tmp_path, tmp_path, fit=fake_fit([]))
    else:
        outcomes = ray_grid.run_grid(grid, tmp_path, tmp_path, ray_grid.RaySettings(0.0, 1.0))
    assert [o.status for o in outcomes] == ["skipped", "skipped"]
    assert not leftover.exists() and best.read_bytes() == weights
    # What scoring it again would need stays, with the facts its summary gives.
    record = json.loads(leftover.with_name("trained.json").read_text())
    summary = json.loads((leftover.parent.parent / "summary.json").read_text())
    assert record["history"]["epoch"] == [0, 1] and record["best"] == [1, 6]
    assert (
        record["data_hash"] == summary["dataset"]["content_hash"]
        and record["world_size"] == summary["world_size"]
    )


def test_each_finished_run_prints_name_seconds_and_outer_dice(tmp_path, capsys):
    grid = grid_configs.build_grid(load_benchmark_config(SMOKE), models=["unet", "empty"])
    outcomes = runner.run_grid(grid, tmp_path, tmp_path, fit=fake_fit([]))
    lines = [ln for ln in capsys.readouterr().out.splitlines() if " done " in ln]
    assert [o.dice for o in outcomes] == [0.75, 0.75]  # mean of the fake per-image Dice [0.5, 1.0]
    for i, (line, o) in enumerate(zip(lines, outcomes), start=1):
        assert line == f"[{i}/2] done {o.run} in {o.seconds:.1f} s: outer Kaggle Dice 0.7500"
    assert (
        runner.finished_line(runner.Outcome("r", "trained", 12.345))
        == "done r in 12.3 s: outer Kaggle Dice n/a"
    )
    again = "done r in 3.0 s (scored again from best.ckpt: training had finished): outer Kaggle Dice 0.5000"
    assert runner.finished_line(runner.Outcome("r", "trained", 3.0, dice=0.5, scored_again=True)) == again


def test_a_run_scored_again_says_so(tmp_path, capsys):
    fit = fake_fit([])

    def scored_again(cfg, data_dir, out_dir):
        return {**fit(cfg, data_dir, out_dir), "scored_again": {"device": "cpu"}}

    grid = grid_configs.build_grid(load_benchmark_config(SMOKE), models=["unet"])[:1]
    (outcome,) = runner.run_grid(grid, tmp_path, tmp_path, fit=scored_again)
    assert outcome.status == "trained" and outcome.scored_again
    assert (
        "(scored again from best.ckpt: training had finished): outer Kaggle Dice 0.7500"
        in capsys.readouterr().out
    )


def test_unwritable_error_txt_goes_to_the_log_and_the_grid_goes_on(tmp_path, capsys):
    bench = dataclasses.replace(load_benchmark_config(SMOKE), models=("boom", "unet", "empty"))
    grid = grid_configs.build_grid(bench)
    (tmp_path / "runs" / grid[0].run_name() / "error.txt").mkdir(parents=True)  # cannot become a file
    calls = []
    outcomes = runner.run_grid(grid, tmp_path, tmp_path, fit=fake_fit(calls, fail={"boom"}))
    assert [o.status for o in outcomes] == ["failed", "trained", "trained"] and len(calls) == 3
    err = capsys.readouterr().err.strip().splitlines()
    where = tmp_path / "runs" / grid[0].run_name() / "error.txt"
    assert len(err) == 1 and err[0].startswith(f"error: {where}: cannot record the failure")
    assert err[0].endswith("failed with RuntimeError: boom exploded")


def test_interrupted_grid_resumes_without_retraining(tmp_path):
    grid = grid_configs.build_grid(load_benchmark_config(SMOKE))
    calls = []
    with pytest.raises(KeyboardInterrupt):
        runner.run_grid(grid, tmp_path, tmp_path, fit=fake_fit(calls, interrupt_at=2))
    first = tmp_path / "runs" / grid[0].run_name() / "summary.json"
    mtime = first.stat().st_mtime_ns
    assert not list((tmp_path / "runs").rglob("run.lock"))  # the interrupted run's lock is released
    calls.clear()
    outcomes = runner.run_grid(grid, tmp_path, tmp_path, fit=fake_fit(calls))
    assert calls == [c.run_name() for c in grid[1:]]
    assert (
        first.stat().st_mtime_ns == mtime and [o.status for o in outcomes].count("trained") == len(grid) - 1
    )


@pytest.mark.slow
def test_smoke_benchmark_end_to_end(tmp_path, synthetic_dir, monkeypatch):
    """Real training: interrupted run, resume, no-op re-run, byte-identical report."""
    import benchmark.pipeline as train

    real_fit, calls = train.fit, []

    def interrupt_second(cfg, data_dir, out_dir):
        calls.append(cfg.model)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_fit(cfg, data_dir, out_dir)

    # Both outer folds of a 2-fold split, so every model is complete and the out-of-fold board ranks it.
    args = ["run", "--config", str(SMOKE), "--data-dir", str(synthetic_dir), "--results-dir", str(tmp_path),
            "--set", "n_folds=2", "--folds", "0,1"]  # fmt: skip
    monkeypatch.setattr(train, "fit", interrupt_second)
    assert main(args) == 130
    runs = sorted((tmp_path / "runs").glob("*/summary.json"))
    assert len(runs) == 1 and runs[0].parent.name.startswith("unet__")
    first = runs[0].stat().st_mtime_ns
    monkeypatch.setattr(train, "fit", real_fit)
    assert main(args) == 0
    n_models = len(load_benchmark_config(SMOKE).models)
    assert (
        runs[0].stat().st_mtime_ns == first
        and len(list((tmp_path / "runs").glob("*/summary.json"))) == 2 * n_models
    )
    outputs = [tmp_path / f"leaderboard.{ext}" for ext in ("md", "csv", "json")]
    outputs += [tmp_path / "plots" / f"{name}.png" for name in ("leaderboard", "overlays", "curves")]
    before = {p: p.read_bytes() for p in outputs}
    md = before[tmp_path / "leaderboard.md"].decode()
    from models import BUILTIN, list_models

    assert set(load_benchmark_config(SMOKE).models) == set(list_models(BUILTIN))  # every built-in model
    for model in [m for m in list_models(BUILTIN) if m != "empty"] + ["empty (baseline)"]:
        assert f"| {model} |" in md
    assert "subject bootstrap" in md and "kaggle_dice_ci_lo" in before[tmp_path / "leaderboard.csv"].decode()
    board = json.loads(before[tmp_path / "leaderboard.json"])
    ranks = sorted(r["rank"] for r in board["rows"])
    assert not board["incomplete"] and ranks == list(range(1, n_models + 1))  # all complete, all ranked

    def must_not_train(*a, **k):
        raise AssertionError("a finished run was retrained")

    monkeypatch.setattr(train, "fit", must_not_train)
    assert main(args) == 0
    assert main(["report", "--results", str(tmp_path)]) == 0
    assert {p: p.read_bytes() for p in outputs} == before
    # Finished runs are never silently reused for (or overwritten by) a different data set.
    from datamodules.synth import generate

    other = tmp_path / "other-data"
    generate(other, subjects=3, per_subject=4, n_test=1, seed=7)
    assert main([*args[:3], "--data-dir", str(other), "--results-dir", str(tmp_path), *args[7:]]) == 2
    assert {p: p.read_bytes() for p in outputs} == before


def test_dry_run_lists_the_grid_and_bad_model_names_fail_fast(tmp_path, synthetic_dir, capsys):
    base = ["run", "--config", str(SMOKE), "--data-dir", str(synthetic_dir), "--results-dir", str(tmp_path)]
    assert main([*base, "--dry-run", "--models", "unet,empty", "--seeds", "0,1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5 and lines[0].startswith("[1/4] unet fold 0 seed 0 -> unet__f0__s0__")
    assert lines[4].startswith(f"disk: the 4 run(s) left need about 0.01 GB in {tmp_path} (")
    assert not (tmp_path / "runs").exists()
    assert main([*base, "--dry-run", "--models", "unett"]) == 2
    assert "unknown model 'unett'" in capsys.readouterr().err


def test_results_dir_refuses_runs_with_another_split_seed(tmp_path):
    """One results directory holds one fold assignment; `seed` may vary, `split_seed` may not, nor
    `link_subjects` where the data has linked subjects."""
    from benchmark import grid_checks
    from benchmark.core.config import ConfigError
    from benchmark.core.summary import write_summary

    config = {"split_seed": 1, "link_subjects": True}
    write_summary(tmp_path / "runs" / "unet__f0__s0__x", {"config": config, "status": "complete"})
    grid_checks.check_split_seed(tmp_path, 1)  # same split: fine
    with pytest.raises(ConfigError, match="split_seed 1, but this benchmark uses 0"):
        grid_checks.check_split_seed(tmp_path, 0)
    links = [(17, 18, 12, 9)]
    grid_checks.check_link_subjects(tmp_path, True, links)
    grid_checks.check_link_subjects(tmp_path, False, [])  # data without links: both splits are the same
    with pytest.raises(
        ConfigError, match=r"link_subjects true, but this benchmark uses link_subjects false .*\(17\+18\)"
    ):
        grid_checks.check_link_subjects(tmp_path, False, links)
    # a summary written before link_subjects split by plain subjects: another fold assignment here
    write_summary(tmp_path / "runs" / "unet__f0__s0__x", {"config": {"split_seed": 1}, "status": "complete"})
    grid_checks.check_link_subjects(tmp_path, False, links)
    before = (
        r"made before link_subjects \(split by plain subjects\), but this benchmark uses link_subjects true"
    )
    with pytest.raises(ConfigError, match=before):
        grid_checks.check_link_subjects(tmp_path, True, links)


def test_a_dry_run_refuses_what_the_run_would_refuse(synthetic_dir, tmp_path, capsys):
    """Another split_seed, or where the data has linked subjects another link_subjects."""
    from benchmark.core.summary import write_summary
    from datamodules.decoded_cache import load_train_shared

    load_train_shared(synthetic_dir)  # decoded here: the dry run checks the data hash (synthetic: let be)
    synthetic = {"dataset": {"synthetic": True, "content_hash": "x"}, "status": "complete"}
    write_summary(tmp_path / "runs" / "unet__f0__s0__x", {"config": {"split_seed": 1}, **synthetic})
    args = ["run", "--data-dir", str(synthetic_dir), "--results-dir", str(tmp_path), "--dry-run"]
    assert main([*args, "--models", "empty"]) == 2
    assert "made with split_seed 1, but this benchmark uses 0" in capsys.readouterr().err
    # link_subjects: the dry run decodes no data; the summaries record the data's linked subjects
    split = {"linked_subjects": [{"subjects": [17, 18], "matching_frames": [12, 9]}]}
    summary = {"config": {"split_seed": 0, "link_subjects": True}, "split": split, **synthetic}
    write_summary(tmp_path / "runs" / "unet__f0__s0__x", summary)
    assert main([*args, "--models", "empty"]) == 0  # the default: link_subjects true
    capsys.readouterr()
    assert main([*args, "--models", "empty", "--set", "link_subjects=false"]) == 2
    assert "this data has linked subjects (17+18), so the folds differ" in capsys.readouterr().err
    write_summary(tmp_path / "runs" / "unet__f0__s0__x", {**summary, "split": {"linked_subjects": []}})
    assert main([*args, "--models", "empty", "--set", "link_subjects=false"]) == 0  # no links: one split


def test_the_grid_line_counts_runs_scored_again_apart_from_trained_ones():
    from benchmark.commands.run import done_line

    outcomes = [runner.Outcome("a", "trained", 60.0), runner.Outcome("b", "trained", 2.0, scored_again=True),
                runner.Outcome("c", "skipped"), runner.Outcome("d", "held")]  # fmt: skip
    assert done_line(outcomes, 62.0) == (
        "grid done in 1m02s: 1 trained, 1 scored again, 1 skipped, 1 held by another process"
    )
    assert (
        done_line(outcomes[:1], 60.0) == "grid done in 1m00s: 1 trained, 0 skipped, 0 held by another process"
    )

"""What refuses or stops a grid rather than one run (benchmark/runner.py): a results directory of
other data, and a signal whose exception a loader error replaced."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from benchmark import grid_configs, runner
from benchmark.cli import Terminated
from benchmark.core.config import ConfigError, load_benchmark_config
from tests.benchmark.summaries import summary_fit

SMOKE = Path(__file__).resolve().parents[2] / "benchmark" / "configs" / "smoke.yaml"


def fit_on(content: str, synthetic: bool, calls: list[str]):
    """:func:`summary_fit`, each call recorded by its model's name."""
    return summary_fit(content, calls, synthetic, key=lambda cfg: cfg.model)


def grid_of(model: str, fold: int = 0) -> list:
    return grid_configs.build_grid(
        dataclasses.replace(load_benchmark_config(SMOKE), models=(model,), folds=(fold,))
    )


def test_a_results_directory_holds_one_data_set_whatever_the_grid(tmp_path):
    """Runs of another model on other data were only left off the board with a note, and the new runs
    trained beside them; only a run of this very grid was refused."""
    first = grid_of("unet")
    runner.run_grid(first, tmp_path, tmp_path, fit=fit_on("real-a", False, []), data_hash="real-a")
    calls: list[str] = []
    with pytest.raises(ConfigError, match=rf"{first[0].run_name()}: made on data with content hash real-a, "):
        runner.run_grid(
            grid_of("empty"), tmp_path, tmp_path, fit=fit_on("real-b", False, calls), data_hash="real-b"
        )
    assert calls == []
    again = runner.run_grid(
        grid_of("empty"), tmp_path, tmp_path, fit=fit_on("real-a", False, calls), data_hash="real-a"
    )
    assert [o.status for o in again] == ["trained"]


def test_the_synthetic_fallbacks_runs_do_not_block_the_real_data(tmp_path):
    """The README's first `make benchmark` (no data: the synthetic fallback) and the next one after the
    download share results/: the synthetic runs stay, the real grid trains, and the board is the
    real one even while it has fewer runs."""
    from benchmark.reporting import leaderboard
    from benchmark.reporting.report import load_summaries

    for fold in (1, 2):
        synth = fit_on("synth", True, [])
        runner.run_grid(grid_of("unet", fold), tmp_path, tmp_path, fit=synth, data_hash="synth")
    calls: list[str] = []
    real = fit_on("real", False, calls)
    outcomes = runner.run_grid(grid_of("unet"), tmp_path, tmp_path, fit=real, data_hash="real")
    assert [o.status for o in outcomes] == ["trained"] and calls == ["unet"]
    kept, ignored = leaderboard.select_runs([s for _, s in load_summaries(tmp_path)])
    assert [s["dataset"]["content_hash"] for s in kept] == ["real"] and len(ignored) == 2
    # A synthetic run of this very grid (the same run name: the fallback changed no hashed field) is
    # not skipped as complete on the real data: refused, as any run of other data is.
    with pytest.raises(ConfigError, match=r"__f1__s0__\w+: made on data with content hash synth, "):
        runner.run_grid(grid_of("unet", 1), tmp_path, tmp_path, fit=real, data_hash="real")
    assert calls == ["unet"]


def test_two_synthetic_data_sets_are_two_data_sets(tmp_path):
    """`benchmark synth` marks its data synthetic.json as the fallback's is: runs on a second such
    data set went into a results directory of the first and were left off its board (exit 0)."""
    data = tmp_path / "synth-b"
    data.mkdir()
    (data / "synthetic.json").write_text("{}\n")
    runner.run_grid(grid_of("unet", 1), tmp_path, tmp_path, fit=fit_on("synth", True, []), data_hash="synth")
    calls: list[str] = []
    with pytest.raises(ConfigError, match="made on data with content hash synth, but .* has synth-b; one"):
        runner.run_grid(
            grid_of("unet", 2), data, tmp_path, fit=fit_on("synth-b", True, calls), data_hash="synth-b"
        )
    assert calls == []


def test_a_signal_that_a_loader_error_replaced_stops_the_grid_not_only_the_run(tmp_path, capsys):
    """SIGTERM to the process group kills the loader workers too; the loader's "worker killed by
    signal" RuntimeError, raised while the SIGTERM's exception unwinds, was counted as the run's
    failure and the grid went on (measured: exit 1 and the next run trained, not 143)."""
    bench = dataclasses.replace(load_benchmark_config(SMOKE), models=("unet", "empty"))
    calls = []

    def fit(cfg, data_dir, out_dir):
        calls.append(cfg.model)
        try:
            raise Terminated
        except Terminated:
            raise RuntimeError("DataLoader worker (pid 1) is killed by signal: Terminated.") from None

    with pytest.raises(Terminated):
        runner.run_grid(grid_configs.build_grid(bench), tmp_path, tmp_path, fit=fit)
    assert calls == ["unet"] and not list(tmp_path.glob("runs/*/error.txt"))
    assert "interrupted unet__f0__s0__" in capsys.readouterr().out


def test_only_an_interrupt_behind_an_error_is_one():
    """A run's own error stays its failure, also one raised while a generator closed (GeneratorExit
    is not an Exception either, but no one asked the command to stop)."""
    assert runner.interrupt_behind(RuntimeError("plain")) is None
    wrapped = SystemExit(1)  # Lightning's sys.exit(1) around a Ctrl-C: the Ctrl-C itself is re-raised
    wrapped.__context__ = ctrl_c = KeyboardInterrupt()
    assert runner.interrupt_behind(_raised_while_handling(wrapped)) is ctrl_c
    for cause, stops in [(GeneratorExit(), False), (KeyboardInterrupt(), True), (Terminated(), True)]:
        assert (runner.interrupt_behind(_raised_while_handling(cause)) is cause) == stops, cause


def _raised_while_handling(cause: BaseException) -> RuntimeError:
    try:
        try:
            raise cause
        except BaseException:  # noqa: BLE001 - the cause under test
            raise RuntimeError("while handling it") from None
    except RuntimeError as exc:
        return exc


def test_a_dry_run_refuses_results_of_other_data_as_the_run_does(
    tmp_path, synthetic_dir, capsys, monkeypatch
):
    """It listed them as complete and exited 0, while `run` refused the directory (exit 2); it decodes
    no data, so it checks where this node's decoded copy knows the content hash, and says so if not."""
    import benchmark.pipeline as pipeline
    from benchmark.cli import main
    from datamodules.decoded_cache import CACHE_ENV, known_content_hash, load_train_shared
    from datamodules.kaggle import content_hash, load_train

    results = tmp_path / "res"
    monkeypatch.setattr(pipeline, "fit", summary_fit("0123456789abcdef", [], synthetic=False))
    run = ["run", "--config", str(SMOKE), "--data-dir", str(synthetic_dir), "--results-dir", str(results),
           "--models", "unet", "--folds", "0", "--no-report", "--min-free-gb", "0"]  # fmt: skip
    assert main(run) == 0  # a complete run, its summary of other data (the hash in the fake fit)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "fresh-cache"))  # another node: nothing decoded
    capsys.readouterr()
    assert main([*run, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "(complete)" in out and f"data: this node's decoded copy of {synthetic_dir} is not there" in out
    decoded = load_train_shared(synthetic_dir)
    assert (
        known_content_hash(synthetic_dir) == content_hash(decoded) == content_hash(load_train(synthetic_dir))
    )
    assert main([*run, "--dry-run"]) == 2
    out, err = capsys.readouterr()
    assert "made on data with content hash 0123456789abcdef, but" in err and "(complete)" not in out
    assert main(run) == 2 and "made on data with content hash 0123456789abcdef" in capsys.readouterr().err


def test_a_dry_run_checks_the_results_directory_as_the_run_does(tmp_path, synthetic_dir, capsys):
    """It exited 0 where run refuses (exit 2) a results directory short of space, and 1 with an ENOTDIR
    where it is a file; it still creates nothing."""
    from benchmark.cli import main

    def dry(results: Path, *more: str) -> tuple[int, str]:
        code = main(["run", "--config", str(SMOKE), "--data-dir", str(synthetic_dir), "--results-dir",
                     str(results), "--models", "unet", "--dry-run", *more])  # fmt: skip
        return code, capsys.readouterr().err

    fresh = tmp_path / "new" / "results"
    assert dry(fresh)[0] == 0 and not (tmp_path / "new").exists()
    (tmp_path / "file").write_text("")
    assert dry(tmp_path / "file") == (
        2,
        f"error: {tmp_path / 'file'}: results directory is a file, not a directory\n",
    )
    (tmp_path / "r" / "runs").parent.mkdir()
    (tmp_path / "r" / "runs").write_text("")
    code, err = dry(tmp_path / "r")
    assert code == 2 and err.startswith(f"error: {tmp_path / 'r' / 'runs'}: not a directory")
    code, err = dry(fresh, "--min-free-gb", "1e9")
    assert code == 2 and " GB free, need 1e+09 GB (--min-free-gb" in err and not (tmp_path / "new").exists()


def test_a_dry_run_counts_the_resume_checkpoints_run_deletes_first_as_room(
    tmp_path, synthetic_dir, capsys, monkeypatch
):
    """run deletes the last.ckpt that complete runs still hold before it measures the room; the dry
    run deletes nothing, so it refused (exit 2) a directory that run accepts."""
    import shutil
    from collections import namedtuple

    import benchmark.pipeline as pipeline
    from benchmark.cli import main
    from benchmark.core import preflight
    from datamodules.kaggle import check_dataset

    monkeypatch.setattr(pipeline, "fit", summary_fit(check_dataset(synthetic_dir)["content_hash"], []))
    results = tmp_path / "res"
    args = ["run", "--config", str(SMOKE), "--data-dir", str(synthetic_dir), "--results-dir", str(results),
            "--folds", "0", "--no-report"]  # fmt: skip
    assert main([*args, "--models", "unet", "--min-free-gb", "0"]) == 0
    kept = next((results / "runs").iterdir()) / runner.LAST_CKPT
    kept.parent.mkdir(exist_ok=True)
    kept.write_bytes(b"\0" * 3_000_000)  # an earlier version's resume state beside a complete run
    monkeypatch.setattr(preflight, "DEFAULT_MIN_FREE_GB", 0.0)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**10, 10**10 - 1_500_000, 1_500_000))
    dry = [*args, "--models", "unet,empty", "--dry-run"]
    assert main(dry) == 0, capsys.readouterr().err  # empty's 2 MB fit in 1.5 MB free + the 3 MB run frees
    kept.unlink()
    assert main(dry) == 2 and "only 0.00 GB free, but the 1 run(s) left need" in capsys.readouterr().err

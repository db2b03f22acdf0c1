"""File-system faults at the edge: one line naming the path, exit 2 for usage and 1 for runtime
problems, checked before any data is generated or any run trains; one run's fault never stops the grid."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections import namedtuple
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from benchmark import grid_configs, runner
from benchmark.cli import main
from benchmark.core import preflight
from benchmark.core.config import load_benchmark_config
from benchmark.core.files import os_error_line
from tests.benchmark.test_runner import SMOKE, fake_fit


def _run(data: Path, results: Path, *extra: str) -> list[str]:
    return ["run", "--config", str(SMOKE), "--data-dir", str(data), "--results-dir", str(results),
            "--models", "empty", "--no-report", *extra]  # fmt: skip


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    return err[0]


def _must_not_train(*args, **kwargs):
    raise AssertionError("training started despite a results-dir problem")


@pytest.fixture
def no_training(monkeypatch):
    import benchmark.pipeline as pipeline

    monkeypatch.setattr(pipeline, "fit", _must_not_train)


@pytest.mark.parametrize("dry", [(), ("--dry-run",)], ids=["run", "dry-run"])
def test_results_dir_that_is_a_file_or_under_a_file_is_exit_2(
    tmp_path, synthetic_dir, capsys, no_training, dry
):
    """The dry run says what the run says (it exited 0, or 1 with an ENOTDIR, or "Permission denied")."""
    (tmp_path / "file").write_text("x")
    assert main(_run(synthetic_dir, tmp_path / "file", *dry)) == 2
    assert (
        _one_error_line(capsys) == f"error: {tmp_path / 'file'}: results directory is a file, not a directory"
    )
    assert main(_run(synthetic_dir, tmp_path / "file" / "results", *dry)) == 2
    line = _one_error_line(capsys)
    assert (
        line == f"error: {tmp_path / 'file' / 'results'}: results directory is not writable (Not a directory)"
    )
    # its runs/ a file: each run failed in turn (exit 1), pointing at an error.txt that cannot exist
    (tmp_path / "res").mkdir()
    (tmp_path / "res" / "runs").write_text("x")
    assert main(_run(synthetic_dir, tmp_path / "res", *dry)) == 2
    assert _one_error_line(capsys) == f"error: {tmp_path / 'res' / 'runs'}: not a directory (each run's " + (
        "directory goes there); move it away"
    )


def test_read_only_results_dir_is_exit_2_before_any_work(
    tmp_path, synthetic_dir, capsys, no_training, monkeypatch
):
    results = tmp_path / "ro"
    results.mkdir()
    if os.geteuid() != 0:
        results.chmod(0o555)
    else:  # root writes through permission bits: fail the way a read-only mount does
        real = tempfile.mkstemp

        def read_only(*args, dir=None, **kwargs):
            if dir is not None and Path(dir) == results:
                raise OSError(errno.EROFS, "Read-only file system", str(Path(dir) / ".probe"))
            return real(*args, dir=dir, **kwargs)

        monkeypatch.setattr(tempfile, "mkstemp", read_only)
    try:
        assert main(_run(synthetic_dir, results)) == 2
    finally:
        results.chmod(0o755)
    line = _one_error_line(capsys)
    assert line.startswith(f"error: {results}: results directory is not writable (")
    assert not list(results.iterdir())


def test_a_read_only_mount_is_named_alike_by_the_run_and_its_dry_run(
    tmp_path, synthetic_dir, capsys, no_training, monkeypatch
):
    """The dry run judged by permission bits and said "Permission denied" where `run` said
    "Read-only file system"; a read-only mount is simulated for both (root writes through bits)."""
    results = tmp_path / "ro"
    results.mkdir()
    real_mkstemp, real_statvfs = tempfile.mkstemp, os.statvfs

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == results:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(Path(dir) / ".probe"))
        return real_mkstemp(*args, dir=dir, **kwargs)

    def statvfs(path):
        real = real_statvfs(path)
        if Path(path) != results:
            return real
        fields = {k: getattr(real, k) for k in dir(real) if k.startswith("f_")}
        return SimpleNamespace(**{**fields, "f_flag": real.f_flag | os.ST_RDONLY})

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "statvfs", statvfs)
    lines = []
    for dry in ((), ("--dry-run",)):
        assert main(_run(synthetic_dir, results, *dry)) == 2
        lines.append(_one_error_line(capsys))
    assert lines == [f"error: {results}: results directory is not writable (Read-only file system)"] * 2


def test_too_little_free_space_before_the_first_run_is_exit_2_naming_the_path(
    tmp_path, synthetic_dir, capsys, no_training, monkeypatch
):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**10, 10**10 - 3 * 10**8, 3 * 10**8))
    results = tmp_path / "results"
    assert main(_run(synthetic_dir, results)) == 2  # found before the first run, like a missing GPU
    line = _one_error_line(capsys)
    assert line.startswith(f"error: {results}: only 0.30 GB free, need 1 GB (--min-free-gb")
    assert main(_run(synthetic_dir, results, "--min-free-gb", "0.5")) == 2
    assert "need 0.5 GB" in _one_error_line(capsys)
    monkeypatch.setenv(preflight.MIN_FREE_ENV, "0.2")  # a smaller threshold lets the grid start
    monkeypatch.setattr(runner, "run_grid", lambda *a, **k: [runner.Outcome("r", "trained", 1.0)])
    assert main(_run(synthetic_dir, results)) == 0


def test_the_room_a_grid_needs_is_its_checkpoints_summaries_and_one_resume_state():
    # best.ckpt 4 B per value + 2 MB of summary and overlays each; 2 x 12 B per value of the largest
    assert preflight.grid_need_bytes([10, 20]) == (40 + 2_000_000) + (80 + 2_000_000) + 24 * 20
    assert preflight.grid_need_bytes([]) == 0
    # Ray trains several at once: a resume state for each of the largest runs in flight
    sizes = [10, 30, 20]
    assert preflight.grid_need_bytes(sizes, in_flight=2) == sum(4 * v + 2_000_000 for v in sizes) + 24 * (
        30 + 20
    )
    assert preflight.grid_need_bytes(sizes, in_flight=5) == sum(4 * v + 2_000_000 for v in sizes) + 24 * 60


def test_a_run_only_scored_again_writes_its_files_but_needs_no_resume_checkpoint(
    tmp_path, synthetic_dir, capsys
):
    # 10 values train, 20 are scored again: the resume reserve is the 10's (24 B per value), not the 20's
    assert preflight.grid_need_bytes([10], scored_again=[20]) == (40 + 2_000_000) + (80 + 2_000_000) + 24 * 10
    import torch

    from benchmark.training.callbacks import HISTORY_CKPT_KEY
    from benchmark.training.finished import drop_resume_state

    grid = grid_configs.build_grid(load_benchmark_config(SMOKE), models=["unet"])  # 121,751 values
    ckpt_dir = tmp_path / "runs" / grid[0].run_name() / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    history = {"epoch": [0], "train_loss": [0.9], "val_loss": [0.8]}
    torch.save({HISTORY_CKPT_KEY: history, "epoch": 0, "global_step": 4}, ckpt_dir / "last.ckpt")
    torch.save(
        {"epoch": 0, "global_step": 4, "hyper_parameters": {"config": grid[0].to_dict()}},
        ckpt_dir / "best.ckpt",
    )
    facts = {"world_size": 1, "environment": {}, "data_hash": "d"}
    drop_resume_state(ckpt_dir.parent, grid[0].hash(), facts)  # finished; its summary is gone
    args = [*_run(synthetic_dir, tmp_path)[:-3], "--models", "unet", "--dry-run"]
    assert main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    need = 4 * 121_751 + 2_000_000 - (ckpt_dir / "best.ckpt").stat().st_size  # it holds best.ckpt
    assert lines[0].endswith("(trained: it is scored again from best.ckpt, not trained)")
    # 0.00 GB; with a resume checkpoint's 24 B per value it would read 0.01 GB
    assert lines[-1].startswith(f"disk: the 1 run(s) left need about {need / 1e9:.2f} GB")


def test_a_grid_that_will_not_fit_is_refused_before_the_first_run(
    tmp_path, synthetic_dir, capsys, no_training, monkeypatch
):
    """Two tiny runs need 7.4 MB (2 MB of files each, their weights, one resume state): 3.5 MB free
    is refused once the 1 GB floor is out of the way."""
    from benchmark.core.config import load_benchmark_config
    from benchmark.core.model_kwargs import build_models

    grid = grid_configs.build_grid(load_benchmark_config(SMOKE), models=["unet", "empty"])
    sizes = build_models(grid)
    # The smoke U-Net (base_width 8, depth 3) stores 121,751 values; `empty` one buffer.
    assert sizes == {grid[0].run_name(): 121_751, grid[1].run_name(): 1}
    need = preflight.grid_need_bytes(list(sizes.values()))
    assert need == 2 * 2_000_000 + 4 * (121_751 + 1) + 24 * 121_751
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(preflight, "DEFAULT_MIN_FREE_GB", 0.0)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**10, 10**10 - 3_500_000, 3_500_000))
    results, args = tmp_path / "results", ["--models", "unet,empty"]
    assert main([*_run(synthetic_dir, results), *args]) == 2
    assert _one_error_line(capsys) == (
        f"error: {results}: only 0.00 GB free, but the 2 run(s) left need about {need / 1e9:.2f} GB "
        "(best.ckpt, summary and overlays each, and room for the resume checkpoint of the run in flight); "
        "free space, use another --results-dir, or set --min-free-gb (or $NERVE_BENCH_MIN_FREE_GB) to decide "
        "yourself"
    )
    monkeypatch.setattr(runner, "run_grid", lambda *a, **k: [runner.Outcome("r", "trained", 1.0)])
    assert main([*_run(synthetic_dir, results), *args, "--min-free-gb", "0"]) == 0  # the user decides
    capsys.readouterr()
    assert main([*_run(synthetic_dir, results), *args, "--dry-run"]) == 2  # as the run: it exited 0
    assert _one_error_line(capsys).startswith(f"error: {results}: only 0.00 GB free, but the 2 run(s) left")
    assert main([*_run(synthetic_dir, results), *args, "--dry-run", "--min-free-gb", "0"]) == 0
    disk = capsys.readouterr().out.strip().splitlines()[-1]
    assert disk == (
        f"disk: the 2 run(s) left need about {need / 1e9:.2f} GB in {results} (0.00 GB free; one run at a "
        "time)"
    )


def test_the_dry_run_counts_a_resume_checkpoint_per_run_a_local_ray_trains_at_once(
    tmp_path, synthetic_dir, capsys, monkeypatch
):
    """Ray started here trains (CPUs // cpus_per_run) CPU runs at once, each holding a resume
    checkpoint; a GPU grid listed where no GPU is, or a cluster elsewhere, counts one."""
    pytest.importorskip("ray")
    monkeypatch.setattr(os, "cpu_count", lambda: 4)  # as Ray counts them
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 0, 10**12))  # other tests write
    ray_cpu = ["--set", "executor=ray", "--set", "accelerator=cpu", "--set", "cpus_per_run=2"]
    args = [*_run(synthetic_dir, tmp_path / "r")[:-3], "--models", "unet", "--folds", "0,1,2", "--dry-run"]
    assert main([*args, *ray_cpu]) == 0
    unet = 121_751  # the smoke U-Net's stored values: three runs, two in flight
    need = preflight.grid_need_bytes([unet] * 3, in_flight=2)
    assert need - preflight.grid_need_bytes([unet] * 3) == 24 * unet  # one resume checkpoint more
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        f"disk: the 3 run(s) left need about {need / 1e9:.2f} GB in {tmp_path / 'r'} "
        "(1000.00 GB free; a local Ray here trains up to 2 at a time "
        "(4 CPUs, 0 GPUs), each with its resume checkpoint)"
    )
    assert main([*args, "--set", "executor=ray", "--set", "accelerator=gpu"]) == 0
    assert "this machine has no GPU for a local Ray" in capsys.readouterr().out
    assert main([*args, *ray_cpu, "--set", "ray_address=10.0.0.1:6379"]) == 0
    assert "on the Ray cluster at 10.0.0.1:6379, Ray adds" in capsys.readouterr().out
    assert main([*args, *ray_cpu, "--set", "cpus_per_run=8"]) == 2  # refused, as the run refuses it
    assert "no Ray node has 8 CPUs and 0 GPUs free for one run" in _one_error_line(capsys)


def test_the_room_check_counts_what_runs_left_already_hold_and_frees_what_finished_runs_kept(
    tmp_path, capsys, monkeypatch
):
    usage = namedtuple("usage", "total used free")
    need = preflight.grid_need_bytes([1000, 2000])  # 4 MB of files, 12 kB of weights, one resume state
    monkeypatch.setattr(preflight, "DEFAULT_MIN_FREE_GB", 0.0)  # the estimate alone
    for free, refused in ((need - 500_000 - 1, True), (need - 500_000, False)):
        monkeypatch.setattr(shutil, "disk_usage", lambda path, free=free: usage(10**10, 10**10 - free, free))
        check = lambda: preflight.check_room(tmp_path, None, [1000, 2000], held_bytes=500_000)  # noqa: E731
        if refused:
            with pytest.raises(preflight.NerveBenchError, match="the 2 run"):
                check()
        else:
            check()  # a resumed run replaces the checkpoints it holds: they count as room
    # A finished run's leftover last.ckpt is deleted before the check, as the grid would delete it.
    grid = grid_configs.build_grid(load_benchmark_config(SMOKE), models=["empty"])
    results = tmp_path / "results"
    runner.run_grid(grid, results, results, fit=fake_fit([]))
    leftover = results / "runs" / grid[0].run_name() / "checkpoints" / "last.ckpt"
    leftover.parent.mkdir()
    leftover.write_bytes(b"resume state")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**10, 10**10, 0))
    assert main(["run", "--config", str(SMOKE), "--results-dir", str(results), "--models", "unet,empty"]) == 2
    assert not leftover.exists() and "need about" in _one_error_line(capsys)


def test_full_disk_while_probing_is_exit_2(tmp_path, synthetic_dir, capsys, no_training, monkeypatch):
    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    assert main(_run(synthetic_dir, tmp_path / "results")) == 2  # before the first run
    monkeypatch.undo()
    assert _one_error_line(capsys) == f"error: {tmp_path / 'results'}: no space left on device"


def test_a_run_dir_that_cannot_be_created_fails_that_run_only(tmp_path, capsys):
    grid = grid_configs.build_grid(load_benchmark_config(SMOKE), models=["unet", "empty"])
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / grid[0].run_name()).write_text("in the way")
    outcomes = runner.run_grid(grid, tmp_path, tmp_path, fit=fake_fit([]))
    assert [o.status for o in outcomes] == ["failed", "trained"]
    assert outcomes[0].error.startswith(f"{tmp_path / 'runs' / grid[0].run_name()}: cannot claim the run (")
    assert "FAILED" in capsys.readouterr().out


def test_os_error_line_names_the_path():
    assert (
        os_error_line(OSError(errno.ENOSPC, "No space left on device", "/r/x"))
        == "/r/x: No space left on device"
    )
    assert os_error_line(OSError(errno.EXDEV, "Invalid cross-device link", "/a", None, "/b")) == (
        "/a -> /b: Invalid cross-device link"
    )
    assert os_error_line(OSError("plain\nmessage")) == "plain message"


def test_csv_messages_never_echo_a_whole_rle(tmp_path, synthetic_dir, capsys):
    data = Path(shutil.copytree(synthetic_dir, tmp_path / "data"))
    csv_path = data / "train_masks.csv"
    rows = csv_path.read_text().splitlines()[1:]
    long_rle = " ".join(f"{1 + 4 * i} 2" for i in range(2000))  # about 17 KB, like a real Kaggle row
    csv_path.write_text("\n".join([f"1,1,{long_rle}", *rows[1:]]) + "\n")  # the header line is missing
    assert main(["data", "check", "--data-dir", str(data)]) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"error: {csv_path}: line 1: no header (starts with data '1,1,1 2 5 2 9 2")
    assert line.endswith("...'); expected the header subject,img,pixels") and len(line) < 150 + len(
        str(csv_path)
    )
    csv_path.write_text(
        "\n".join(["subject,img,pixels", f"{long_rle},1,", *rows[1:]]) + "\n"
    )  # shifted column
    assert main(["data", "check", "--data-dir", str(data)]) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"error: {csv_path}: line 2: subject '1 2 5 2") and len(line) < 100 + len(
        str(csv_path)
    )


def test_a_run_out_of_space_ends_the_grid_with_one_line_and_exit_1(
    tmp_path, synthetic_dir, monkeypatch, capsys
):
    """A full disk or quota fails every later run the same way, each after training until its first
    checkpoint: the grid stops at the first, keeps what finished and says how to go on."""
    import benchmark.pipeline as train

    calls: list[str] = []
    finish = fake_fit(calls)

    def fill_up(cfg, data_dir, out_dir):
        if calls:  # the second run: Lightning re-raises the write's OSError from its own error
            calls.append(cfg.run_name())
            full = OSError(errno.EDQUOT, "Disk quota exceeded", str(out_dir / "checkpoints" / "last.ckpt"))
            raise RuntimeError("saving the checkpoint failed") from full
        return finish(cfg, data_dir, out_dir)

    monkeypatch.setattr(train, "fit", fill_up)
    args = ["run", "--config", str(SMOKE), "--data-dir", str(synthetic_dir), "--results-dir", str(tmp_path),
            "--models", "empty,unet,sk_unet"]  # fmt: skip
    assert main(args) == 1
    empty, unet = (
        grid_configs.build_grid(load_benchmark_config(SMOKE), models=[m])[0].run_name()
        for m in ("empty", "unet")
    )
    assert calls == [empty, unet]  # sk_unet never started
    assert (tmp_path / "runs" / empty / "summary.json").is_file()
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    where = tmp_path / "runs" / unet / "checkpoints" / "last.ckpt"
    assert errors == [
        f"error: {where}: Disk quota exceeded (while {unet} ran); the grid stops here, since every later "
        "run would fail the same way: the finished runs and the checkpoints written so far are kept; "
        "free space, then re-run the same command"
    ]


def test_a_retried_run_out_of_space_also_ends_the_grid(tmp_path):
    """A run held by a process that died is taken over at the end of the grid: the same stop."""
    grid = grid_configs.build_grid(load_benchmark_config(SMOKE), models=["unet", "empty"])

    def full(cfg, data_dir, out_dir):
        raise OSError(errno.ENOSPC, "No space left on device", str(out_dir / "summary.json"))

    held = [runner.Outcome(c.run_name(), "held") for c in grid]  # no lock on disk: their holder is gone
    with pytest.raises(
        preflight.OutOfSpace, match=f"summary.json: No space left on device \\(while {grid[0].run_name()}"
    ):
        runner.retry_released(grid, held, tmp_path, tmp_path, full)
    assert held[1].status == "held"  # the second was never started


def test_out_of_space_is_found_through_the_exception_chain():
    from benchmark.core.preflight import out_of_space

    full = OSError(errno.ENOSPC, "No space left on device", "/r/x")
    try:
        try:
            raise full
        except OSError:
            raise ValueError("while handling") from None  # __context__ kept, __cause__ suppressed
    except ValueError as wrapped:
        assert out_of_space(wrapped) is full
    assert out_of_space(RuntimeError("x")) is None
    assert out_of_space(OSError(errno.EACCES, "Permission denied", "/r")) is None

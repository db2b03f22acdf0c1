"""A stop signal is never lost: Ray's own handlers do not replace the CLI's, and a SIGTERM whose
exception a finalizer dropped still stops the grid (``benchmark.core.stop``) with 143."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from benchmark.cli import EXIT_SIGTERM, main
from tests.benchmark.test_interrupts import BOUND_S, ROOT
from tests.benchmark.test_runner import SMOKE, fake_fit

RAY_SIGTERM = """
import os, signal, time
from benchmark import cli, ray_cluster

signal.signal(signal.SIGTERM, cli._on_sigterm)  # as main() installs it
ray, started = ray_cluster.connect(None, {})
try:
    print("handler kept" if signal.getsignal(signal.SIGTERM) is cli._on_sigterm else "handler replaced")
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(60)
except cli.Terminated:
    print("Terminated raised")
finally:
    ray.shutdown()
"""


@pytest.mark.slow
def test_starting_ray_keeps_the_clis_sigterm_handler():
    """ray.init installs its own SIGTERM handlers (Python's sys.exit(15) and a C++ one that aborts:
    exit 134): a Ray grid's driver then ignored the CLI's 143 and its lines."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", RAY_SIGTERM], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=BOUND_S)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n")[:2] == ["handler kept", "Terminated raised"], done.stdout


class _SwallowsSigterm:
    """A finalizer during which SIGTERM lands: Python drops the handler's exception ("Exception
    ignored in ...") and the code around goes on."""

    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped exception
def test_a_sigterm_a_finalizer_swallowed_still_stops_the_grid_with_143(tmp_path, capsys, monkeypatch):
    import benchmark.pipeline as pipeline
    from benchmark.core import stop
    from benchmark.training.callbacks import StopRequested

    calls = []

    def fit(cfg, data_dir, out_dir):
        calls.append(cfg.model)
        _SwallowsSigterm()  # collected at once
        return fake_fit(cfg, data_dir, out_dir)

    monkeypatch.setattr(pipeline, "fit", fit)
    monkeypatch.chdir(tmp_path)  # the smoke config's synthetic fallback (see the requeue test)
    args = ["run", "--config", str(SMOKE), "--results-dir", str(tmp_path / "res"), "--models", "empty,unet",
            "--no-report", "--min-free-gb", "0"]  # fmt: skip
    # What the process had (SIG_DFL, or the handler an earlier in-process ray.init of this test
    # worker left: the suite's order decides) is what the command must put back.
    before = signal.getsignal(signal.SIGTERM)
    assert main(args) == EXIT_SIGTERM
    assert calls == ["empty"]  # it stopped before the next run, not after the grid, and not with 0
    assert "interrupted by SIGTERM: finished runs are kept" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before
    # the command's end and a training batch are the other places a dropped stop is raised again
    monkeypatch.setattr("benchmark.commands.models._table", lambda rows: _SwallowsSigterm() and "")
    assert main(["models"]) == EXIT_SIGTERM and "interrupted by SIGTERM" in capsys.readouterr().err
    stop.request(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        StopRequested().on_train_batch_end(None, None, None, None, 0)
    stop.clear()
    StopRequested().on_train_batch_end(None, None, None, None, 0)  # nothing pending: nothing raised


def test_a_stop_kept_by_an_earlier_command_is_not_the_next_ones(capsys):
    """A signal landing in a command's clean-up, in a process that runs several (a notebook, a test)."""
    from benchmark.cli import Terminated
    from benchmark.core import stop

    stop.request(Terminated())
    assert main(["models"]) == 0 and "interrupted" not in capsys.readouterr().err


def test_our_signal_handlers_let_ray_start_outside_the_main_thread():
    """signal.signal raises there; ray.init itself only skips its handler."""
    import threading

    from benchmark.ray_cluster import our_signal_handlers

    failed: list[BaseException] = []

    def start() -> None:
        try:
            with our_signal_handlers():
                pass
        except BaseException as exc:  # noqa: BLE001 - reported below
            failed.append(exc)

    thread = threading.Thread(target=start)
    thread.start()
    thread.join(BOUND_S)
    assert not thread.is_alive() and failed == []  # ended, and without raising

"""Shared fixtures: a small synthetic Kaggle-layout dataset and the optional real samples."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

# Tests hold under load: no per-example time limit (a busy 2-core CI box ran a 200 ms default over).
settings.register_profile("nerve-bench", deadline=None)
settings.load_profile("nerve-bench")

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
if "NERVE_BENCH_CACHE_DIR" not in os.environ:  # the decoded-data cache: per session, not the user's
    _CACHE = tempfile.mkdtemp(prefix="nerve-bench-test-cache-")
    os.environ["NERVE_BENCH_CACHE_DIR"] = _CACHE
    atexit.register(shutil.rmtree, _CACHE, True)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _share_the_cores() -> None:
    """Under pytest-xdist each of N workers gets cores // N threads, it and the processes it starts
    (DDP ranks, Ray workers, CLI runs): torch's default of a thread per core in every worker
    oversubscribes them (the 2-core suite took 498 s with 2 workers that way, 346 s split).
    An OMP_NUM_THREADS the user set is kept."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers < 2 or os.environ.get("OMP_NUM_THREADS"):
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, cores // workers)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if "torch" in sys.modules:  # imported by a plugin before this file: set it there too
        sys.modules["torch"].set_num_threads(threads)


_share_the_cores()


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 subjects x 8 frames (about half with a nerve) and 5 test images, generated once per session."""
    from datamodules.synth import generate

    out = tmp_path_factory.mktemp("synthetic")
    generate(out, subjects=6, per_subject=8, n_test=5, seed=0)
    return out


@pytest.fixture(scope="session")
def uns_sample() -> Path:
    """The 26 real Kaggle training pairs and 25 test images; skipped when ../shared is absent."""
    path = SHARED_DATA / "uns-sample"
    if not (path / "train").is_dir():
        pytest.skip(f"real sample data not found at {path}")
    return path


@pytest.fixture(scope="session")
def fit_runs(tmp_path_factory: pytest.TempPathFactory):
    """Fitted `unet` and `empty` runs on a synthetic dataset (tests/benchmark/fitting.py), trained once."""
    from tests.benchmark.fitting import build_runs

    return build_runs(tmp_path_factory)


@pytest.fixture(scope="session")
def example_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/plugin_model installed into a temporary site folder (tests/plugin_site.py), once."""
    from tests.plugin_site import installed_example

    site, _ = installed_example(tmp_path_factory.mktemp("example-plugin"))
    return site


@pytest.fixture
def nondeterministic() -> Iterator[None]:
    """A process that has not built a Trainer yet: torch's deterministic algorithms off, whatever an
    earlier test in this worker left on, so a check that a Trainer's switch does not leak can fail."""
    import torch  # not at the top: _share_the_cores sets OMP_NUM_THREADS before torch loads

    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    torch.use_deterministic_algorithms(False)
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])


@pytest.fixture(autouse=True)
def _no_sticky_ddp_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lightning's launchers leave MASTER_PORT in the environment and reuse it: every later DDP test
    in this worker would take the first one's port, which another worker may have picked meanwhile."""
    monkeypatch.delenv("MASTER_PORT", raising=False)


@pytest.fixture(autouse=True)
def _no_inherited_grid_owner(monkeypatch: pytest.MonkeyPatch) -> None:
    """A grid run in-process as rank 0 exports its owner and record name for the ranks it starts;
    left set, a later test's subprocess would take them for its own launch's."""
    from benchmark.core.lock import OWNER_ENV
    from benchmark.core.rank0 import GRID_ENV

    for name in (OWNER_ENV, GRID_ENV):
        monkeypatch.delenv(name, raising=False)

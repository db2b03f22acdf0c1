"""`make test` runs the suite on every core (pytest-xdist): the workers split the cores' threads."""

from __future__ import annotations

import os

import pytest
import torch

from tests import conftest


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_each_of_n_workers_gets_its_share_of_the_cores(monkeypatch, threads):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    conftest._share_the_cores()
    assert os.environ["OMP_NUM_THREADS"] == "2" and torch.get_num_threads() == 2  # 8 // 3
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "16")
    monkeypatch.delenv("OMP_NUM_THREADS")
    conftest._share_the_cores()
    assert os.environ["OMP_NUM_THREADS"] == "1"  # never 0


def test_a_single_process_or_the_users_setting_is_left_alone(monkeypatch, threads):
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    conftest._share_the_cores()
    assert os.environ["OMP_NUM_THREADS"] == "5"
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT")
    conftest._share_the_cores()
    assert "OMP_NUM_THREADS" not in os.environ

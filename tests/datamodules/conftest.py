"""Fixtures for the data-layer tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.datamodules.tiny_data import write_tiny_dataset


@pytest.fixture(scope="session")
def tiny_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny") / "data")


@pytest.fixture
def tiny(tiny_template: Path, tmp_path: Path) -> Path:
    """A private, writable copy of the tiny dataset."""
    return Path(shutil.copytree(tiny_template, tmp_path / "data"))

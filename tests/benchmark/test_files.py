"""Atomic writes: the old file survives a failure, the new one arrives whole, with ordinary permissions."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from benchmark.core.files import atomic_path, atomic_write


def test_new_content_replaces_old_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a.json"
    atomic_write(target, "old")
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_failure_mid_write_keeps_the_previous_file_and_names_the_path(tmp_path):
    target = tmp_path / "board.md"
    atomic_write(target, "previous")
    with pytest.raises(OSError) as info, atomic_path(target) as tmp:
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert info.value.filename == str(target)
    assert target.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["board.md"]


def test_files_get_umask_permissions_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "x.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.txt").stat().st_mode) == 0o644

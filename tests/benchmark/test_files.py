"""Atomic writes: the old file survives a failure, the new one arrives whole, with ordinary permissions."""

from __future__ import annotations

import errno
import stat

import pytest

from benchmark.core import files
from benchmark.core.files import atomic_path, atomic_write, check_output_dir, check_output_file
from datamodules.errors import NerveBenchError


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


def test_a_file_where_the_folder_belongs_is_named_as_such(tmp_path):
    """`report` said "error: results/plots: File exists" when plots/ was a file."""
    (tmp_path / "plots").write_text("")
    with pytest.raises(NotADirectoryError) as info:
        atomic_write(tmp_path / "plots" / "leaderboard.png", b"png")
    assert (info.value.filename, info.value.strerror) == (str(tmp_path / "plots"), "a file, not a folder")


def test_files_get_umask_permissions_not_mkstemps_0600(tmp_path):
    atomic_write(tmp_path / "x.txt", "x")
    # What any ordinary file gets here (0o644 under umask 022), not the module's own reading of the umask.
    (tmp_path / "plain.txt").write_text("x")
    expected = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    if expected == 0o600:
        pytest.skip("umask 077: an ordinary file is 0600 too, so mkstemp's mode cannot be told apart")
    assert stat.S_IMODE((tmp_path / "x.txt").stat().st_mode) == expected


def test_overlays_survive_a_failed_rewrite(tmp_path, monkeypatch):
    """overlays.npz went through np.savez_compressed straight onto its name; a kill left half a file."""
    import numpy as np

    from benchmark.evaluation import finalize

    path = tmp_path / "overlays.npz"
    stack = np.zeros((1, 420, 580), np.uint8)
    finalize.write_overlays(path, ["1_1"], stack, stack, stack)
    before = path.read_bytes()

    def half_then_fail(fh, **arrays):
        fh.write(b"PK\x03\x04 half a zip")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(finalize.np, "savez_compressed", half_then_fail)
    with pytest.raises(OSError):
        finalize.write_overlays(path, ["1_2"], stack, stack, stack)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["overlays.npz"]


def test_an_output_place_that_cannot_be_written_is_one_line_before_the_work(tmp_path, monkeypatch):
    """A read-only --out was found at the write, after every image was scored or predicted (exit 1,
    the work lost). The probe asks the nearest existing folder, as the command creates the rest, and
    leaves nothing behind."""
    check_output_file(tmp_path / "new" / "deeper" / "e.json", "--out", "a .json file")
    check_output_dir(tmp_path / "masks", "--out", "a folder")
    assert list(tmp_path.iterdir()) == []  # no probe left, no folder made

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(files.tempfile, "TemporaryFile", read_only)
    for check, path in ((check_output_file, tmp_path / "new" / "e.json"), (check_output_dir, tmp_path / "m")):
        with pytest.raises(NerveBenchError) as info:
            check(path, "--out", "x")
        assert (
            str(info.value)
            == f"{tmp_path}: cannot write there (Read-only file system); --out {path} needs it"
        )


def test_an_output_that_is_an_input_by_another_name_is_refused(tmp_path):
    source = tmp_path / "best.ckpt"
    source.write_bytes(b"weights")
    (tmp_path / "link.ckpt").symlink_to(source)
    same = [("best.ckpt", "best.ckpt"), ("link.ckpt", "best.ckpt"), ("best.ckpt", "absent/../best.ckpt")]
    for out, read in same:  # one name, a link to it, a name through a folder that does not exist
        with pytest.raises(NerveBenchError, match="a file this command reads"):
            check_output_file(tmp_path / out, "--out", "x", [tmp_path / read])
    check_output_file(tmp_path / "other.ckpt", "--out", "x", [source, tmp_path / "absent.csv"])

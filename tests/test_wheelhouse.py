"""tools/wheelhouse.py builds the right pip commands (no network here: only --dry-run and pure parts)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("wheelhouse", ROOT / "tools" / "wheelhouse.py")
wheelhouse = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(wheelhouse)


def _flag_values(cmd: list[str], flag: str) -> list[str]:
    return [cmd[i + 1] for i, part in enumerate(cmd) if part == flag]


def test_manylinux_platform_expands_to_every_older_glibc():
    tags = wheelhouse.platform_tags("manylinux_2_28_x86_64")
    assert tags[0] == "manylinux_2_28_x86_64" and tags[-1] == "manylinux1_x86_64"
    assert {
        "manylinux_2_27_x86_64",
        "manylinux_2_17_x86_64",
        "manylinux2014_x86_64",
        "manylinux2010_x86_64",
    } <= set(tags)
    assert "manylinux_2_29_x86_64" not in tags and len(tags) == 24 + 3  # glibc 2.28 .. 2.5 and 3 legacy names
    assert wheelhouse.platform_tags("win_amd64") == ["win_amd64"]


def test_cuda_build_is_one_pinned_download_from_pypi(tmp_path):
    (cmd,) = wheelhouse.commands("3.12", "manylinux_2_28_x86_64", "cuda", tmp_path, python="py")
    assert cmd[:4] == ["py", "-m", "pip", "download"] and "--only-binary=:all:" in cmd
    assert _flag_values(cmd, "--python-version") == ["3.12"] and _flag_values(cmd, "--abi") == ["cp312"]
    assert _flag_values(cmd, "--implementation") == ["cp"] and "manylinux_2_17_x86_64" in _flag_values(
        cmd, "--platform"
    )
    assert _flag_values(cmd, "-c") == [str(wheelhouse.CONSTRAINTS)] and _flag_values(cmd, "--dest") == [
        str(tmp_path)
    ]
    assert "--index-url" not in cmd and "--no-deps" not in cmd
    names = {
        wheelhouse.normalise(r.split(">")[0].split("<")[0].split("=")[0]) for r in cmd if r[:1].isalpha()
    }
    assert {"torch", "torchvision", "lightning", "ray", "pytest", "ruff", "setuptools"} <= names


def test_cpu_build_takes_torch_from_the_pytorch_index_first(tmp_path):
    first, rest = wheelhouse.commands("3.11", "manylinux_2_28_x86_64", "cpu", tmp_path, python="py")
    locked = wheelhouse.pins()
    assert (
        _flag_values(first, "--index-url") == ["https://download.pytorch.org/whl/cpu"]
        and "--no-deps" in first
    )
    assert first[-2:] == [f"torch=={locked['torch']}", f"torchvision=={locked['torchvision']}"]
    assert _flag_values(rest, "--find-links") == [str(tmp_path)]  # the second step reuses that torch
    custom = wheelhouse.commands("3.12", "manylinux_2_28_x86_64", "cuda", tmp_path, "https://x/cu126", "py")
    assert _flag_values(custom[0], "--index-url") == ["https://x/cu126"]
    with pytest.raises(ValueError, match="--torch"):
        wheelhouse.commands("3.12", "manylinux_2_28_x86_64", "rocm", tmp_path)


def test_lock_pins_and_unpinned_report(tmp_path):
    locked = wheelhouse.pins()
    assert locked["torch"] == "2.13.0" and locked["segmentation-models-pytorch"] == "0.6.0"
    for name in (
        "torch-2.13.0-cp312-cp312-manylinux_2_28_x86_64.whl",
        "nvidia_nccl_cu13-2.1-py3-none-any.whl",
        "PyYAML-6.0.4-cp312-cp312-manylinux_2_17_x86_64.whl",
    ):
        (tmp_path / name).write_bytes(b"")
    assert wheelhouse.unpinned(tmp_path) == ["nvidia-nccl-cu13"]


def test_dry_run_prints_and_downloads_nothing(tmp_path, capsys):
    out = tmp_path / "wh"
    assert wheelhouse.main(["--python-version", "3.12", "--out", str(out), "--dry-run"]) == 0
    assert "pip download" in capsys.readouterr().out and not out.exists()
    with pytest.raises(SystemExit):
        wheelhouse.main(["--python-version", "312", "--dry-run"])


def test_every_extra_that_make_install_installs_is_downloaded():
    """tools/install.sh installs .[dev,onnx,nnunet]; a wheelhouse of the dev extra alone stopped the
    documented offline `make install` at the first onnx or nnunetv2 requirement."""
    installed = re.search(r'-e "\.\[([a-z,]+)\]"', (ROOT / "tools" / "install.sh").read_text())
    assert installed is not None
    wanted = {re.split(r"[<>=!~ ]", r)[0] for r in wheelhouse.project_requirements()}
    assert set(installed.group(1).split(",")) == {"dev", "onnx", "nnunet"}
    extras = {"pytest", "onnx", "onnxscript", "onnxruntime", "nnunetv2", "dynamic-network-architectures"}
    assert extras <= wanted


def test_source_only_pins_are_built_here_as_pure_wheels(tmp_path):
    """acvl-utils 0.2.6 (nnunetv2's) publishes no wheel, so a wheels-only download could not resolve
    nnunetv2 for any target; it is built here first, and only a py3-none-any build may serve another
    Python or platform."""
    (cmd,) = wheelhouse.source_builds(tmp_path, python="py")
    assert cmd == ["py", "-m", "pip", "wheel", "--no-deps", "--no-binary", "acvl-utils", "--wheel-dir",
                   str(tmp_path), f"acvl-utils=={wheelhouse.pins()['acvl-utils']}"]  # fmt: skip
    (tmp_path / "acvl_utils-0.2.6-py3-none-any.whl").write_bytes(b"")
    (tmp_path / "numpy-2.3.0-cp312-cp312-manylinux_2_17_x86_64.whl").write_bytes(b"")  # downloaded: fine
    assert wheelhouse.impure(tmp_path) == []
    (tmp_path / "acvl_utils-0.2.6-cp311-cp311-linux_x86_64.whl").write_bytes(b"")
    assert wheelhouse.impure(tmp_path) == ["acvl_utils-0.2.6-cp311-cp311-linux_x86_64.whl"]


def test_an_impure_source_build_stops_before_any_download(tmp_path, monkeypatch, capsys):
    """A platform-tagged build of a source-only package cannot serve the target: say so at once,
    not after gigabytes of downloads whose resolution would fail on it anyway."""
    ran = []

    def fake_run(cmd):
        ran.append(cmd[3])
        if cmd[3] == "wheel":
            (tmp_path / "acvl_utils-0.2.6-cp311-cp311-linux_x86_64.whl").write_bytes(b"")
        return type("Done", (), {"returncode": 0})()

    monkeypatch.setattr(wheelhouse.subprocess, "run", fake_run)
    assert wheelhouse.main(["--python-version", "3.12", "--out", str(tmp_path)]) == 1
    assert ran == ["wheel"] and "built for this machine only" in capsys.readouterr().out

"""Putting a plugin package on ``sys.path`` for one test, the way an install would, without the network.

``installed_example`` builds ``examples/plugin_model`` with pip (``--no-index --no-deps
--no-build-isolation --target`` on a copy: no network, nothing written into the repository or the
venv) when setuptools is importable; otherwise it writes the same ``*.dist-info`` with the entry
points read from the example's pyproject.toml. ``activate`` prepends such a site folder to
``sys.path`` (and PYTHONPATH, for subprocesses) and loads its plugins; undoing it unregisters them.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "plugin_model"
EXAMPLE_MODEL = "tiny_unet"
EXAMPLE_PACKAGE = "nerve-bench-example-plugin"


def write_dist_info(site: Path, dist: str, version: str, entry_points: dict[str, str]) -> Path:
    """A minimal installed-distribution record: METADATA plus entry_points.txt for nerve_bench.models."""
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[nerve_bench.models]\n{lines}")
    return info


def _example_entry_points() -> dict[str, str]:
    import tomllib

    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    return dict(project["entry-points"]["nerve_bench.models"])


def installed_example(root: Path) -> tuple[Path, str]:
    """A site folder holding the installed example plugin, and how it got there ("pip" or "dist-info")."""
    site = root / "site"
    if importlib.util.find_spec("setuptools") is not None:
        source = root / "source"
        shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-index",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(source),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if done.returncode == 0:
            return site, "pip"
        shutil.rmtree(site, ignore_errors=True)
    shutil.copytree(EXAMPLE / "nerve_bench_example", site / "nerve_bench_example")
    write_dist_info(site, EXAMPLE_PACKAGE, "0.1.0", _example_entry_points())
    return site, "dist-info"


@contextlib.contextmanager
def activate(site: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list]:
    """Plugins of ``site`` loaded for the block (the loaded ``Plugin`` records are yielded)."""
    from models.plugins import failed_plugins, forget_plugin, load_plugins

    failed = set(failed_plugins())
    before = set(sys.modules)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", f"{site}:{ROOT}")
    importlib.invalidate_caches()
    loaded = load_plugins()
    try:
        yield loaded
    finally:
        for plugin in loaded:
            forget_plugin(plugin)
        for key in set(failed_plugins()) - failed:
            forget_plugin(key)
        sites = [Path(entry).resolve() for entry in sys.path if entry and _foreign(Path(entry))]
        for name in set(sys.modules) - before:  # plugin modules: the next activation imports them afresh
            file = getattr(sys.modules[name], "__file__", None)
            if file and any(Path(file).resolve().is_relative_to(s) for s in sites):
                del sys.modules[name]


def _foreign(path: Path) -> bool:
    """A sys.path entry outside the virtualenv, the interpreter and this repository (a plugin site)."""
    path = path.resolve()
    return not any(path.is_relative_to(Path(base).resolve()) for base in (sys.prefix, sys.base_prefix, ROOT))

"""Download every pinned dependency as wheels for a named Python and platform (`make wheelhouse`).

For air-gapped GPU clusters: run this where PyPI is reachable, copy the repository with its
``wheelhouse/`` to the cluster, and install there without an index::

    PIP_NO_INDEX=1 PIP_FIND_LINKS="$PWD/wheelhouse" make install PYTHON=python3.12

What is downloaded: the project's dependencies and every extra ``make install`` installs (``dev``,
``onnx``, ``nnunet``: all of pyproject.toml's optional groups) at the versions pinned by
requirements/constraints.txt, with everything they pull in, plus setuptools
(the build backend ``pip install -e .`` needs offline). Only wheels (``--only-binary=:all:``), so
nothing is compiled on the cluster; the few pinned packages that publish no wheel (``SOURCE_ONLY``)
are pure Python and built here into ``py3-none-any`` wheels first. torch comes as one of two builds:

- ``--torch cuda`` (default): the PyPI wheel, which on Linux x86_64 is the CUDA build and brings its
  ``nvidia-*`` runtime wheels (several GB); torchvision from PyPI matches it. Another CUDA version:
  ``--torch-index https://download.pytorch.org/whl/cu126`` (any PyTorch wheel index).
- ``--torch cpu``: torch and torchvision from https://download.pytorch.org/whl/cpu (a few hundred MB).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "requirements" / "constraints.txt"
TORCH_INDEX = {"cuda": None, "cpu": "https://download.pytorch.org/whl/cpu"}  # None: PyPI
TORCH_PACKAGES = ("torch", "torchvision")
BUILD = ("setuptools>=61",)  # pyproject's build-system
# Pinned packages that publish no wheel at all (nnunetv2 needs acvl-utils 0.2.6: sdist only). Each is
# pure Python, so a wheel built here once (py3-none-any) serves every target Python and platform.
SOURCE_ONLY = ("acvl-utils",)


def project_requirements(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """The dependencies and every optional group of pyproject.toml (ranges; the lock pins them):
    tools/install.sh installs ``.[dev,onnx,nnunet]``, so an offline install needs all of them."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        sys.exit(
            "wheelhouse: needs Python >= 3.11 to read pyproject.toml (PYTHON=python3.11 make wheelhouse)"
        )
    project = tomllib.loads(pyproject.read_text())["project"]
    extras = [req for group in project["optional-dependencies"].values() for req in group]
    return [*project["dependencies"], *extras, *BUILD]


def pins(constraints: Path = CONSTRAINTS) -> dict[str, str]:
    """Normalised name -> pinned version of every ``name==version`` line of the lock."""
    out = {}
    for line in constraints.read_text().splitlines():
        m = re.match(r"^\s*([A-Za-z0-9_.-]+)==([^\s;#]+)", line)
        if m:
            out[normalise(m.group(1))] = m.group(2)
    return out


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


LEGACY_MANYLINUX = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}


def platform_tags(platform: str) -> list[str]:
    """``platform`` and every older tag a machine with it also runs: ``manylinux_2_28_x86_64`` accepts
    wheels built for glibc 2.28 down to 2.5 (``manylinux2014`` is 2.17). pip 23 does not expand this
    itself for a foreign ``--platform``, and many pinned wheels are tagged ``manylinux_2_17`` only."""
    m = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", platform)
    if not m:
        return [platform]
    glibc, arch = int(m.group(1)), m.group(2)
    tags = []
    for minor in range(glibc, 4, -1):
        tags.append(f"manylinux_2_{minor}_{arch}")
        if minor in LEGACY_MANYLINUX:
            tags.append(f"{LEGACY_MANYLINUX[minor]}_{arch}")
    return tags


def target_flags(python_version: str, platform: str) -> list[str]:
    """pip's flags for a foreign interpreter: wheels only, CPython ``python_version`` on ``platform``."""
    digits = python_version.replace(".", "")
    flags = ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp"]
    flags += ["--abi", f"cp{digits}"]
    for tag in platform_tags(platform):
        flags += ["--platform", tag]
    return flags


def commands(
    python_version: str,
    platform: str,
    torch: str,
    out: Path,
    torch_index: str | None = None,
    python: str = sys.executable,
) -> list[list[str]]:
    """The pip download commands: the torch build first when it comes from its own index, then
    everything else pinned by the lock (finding that torch in ``out``)."""
    if torch not in TORCH_INDEX:
        raise ValueError(f"--torch must be one of {', '.join(TORCH_INDEX)}, got {torch!r}")
    index = torch_index or TORCH_INDEX[torch]
    base = [python, "-m", "pip", "download", "--dest", str(out), *target_flags(python_version, platform)]
    locked = pins()
    cmds = []
    if index is not None:
        torch_pins = [f"{p}=={locked[p]}" for p in TORCH_PACKAGES if p in locked]
        cmds.append([*base, "--no-deps", "--index-url", index, *torch_pins])
    rest = [*base, "--find-links", str(out), "-c", str(CONSTRAINTS), *project_requirements()]
    cmds.append(rest)
    return cmds


def source_builds(out: Path, python: str = sys.executable) -> list[list[str]]:
    """``pip wheel`` of each pinned SOURCE_ONLY package into ``out``, before the downloads find it there."""
    locked = pins()
    return [
        [python, "-m", "pip", "wheel", "--no-deps", "--no-binary", name, "--wheel-dir", str(out),
         f"{name}=={locked[name]}"]
        for name in SOURCE_ONLY
        if name in locked
    ]  # fmt: skip


def impure(out: Path) -> list[str]:
    """Wheels built from SOURCE_ONLY packages that are not ``py3-none-any``: they would only install on
    this machine's Python and platform, not on the target's."""
    built = [w for w in out.glob("*.whl") if normalise(w.name.split("-")[0]) in SOURCE_ONLY]
    return sorted(w.name for w in built if not w.name.endswith("-py3-none-any.whl"))


def unpinned(out: Path) -> list[str]:
    """Downloaded distributions the lock does not pin (torch's nvidia-* runtime, setuptools, ...)."""
    locked = pins()
    names = {normalise(w.name.split("-")[0]) for w in out.glob("*.whl")}
    return sorted(n for n in names if n not in locked)


def run_all(cmds: list[list[str]], what: str, out: Path) -> bool:
    for cmd in cmds:
        if subprocess.run(cmd).returncode != 0:
            print(f"wheelhouse: {what} failed (see above); the wheels so far stay in {out}")
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--python-version", required=True, help="target CPython, e.g. 3.12")
    p.add_argument("--platform", default="manylinux_2_28_x86_64", help="wheel platform tag (glibc >= 2.28)")
    p.add_argument("--torch", default="cuda", choices=sorted(TORCH_INDEX), help="torch build")
    p.add_argument("--torch-index", default=None, help="PyTorch wheel index for torch/torchvision")
    p.add_argument("--out", type=Path, default=ROOT / "wheelhouse")
    p.add_argument("--dry-run", action="store_true", help="print the pip commands only")
    args = p.parse_args(argv)
    if not re.fullmatch(r"3\.\d+", args.python_version):
        p.error(f"--python-version: expected 3.X, got {args.python_version!r}")
    builds = source_builds(args.out)
    downloads = commands(args.python_version, args.platform, args.torch, args.out, args.torch_index)
    for cmd in builds + downloads:
        print(" ".join(cmd), flush=True)
    if args.dry_run:
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if not run_all(builds, "pip wheel", args.out):
        return 1
    local_only = impure(args.out)
    if local_only:  # before gigabytes of downloads that could not resolve with it anyway
        print(f"wheelhouse: built for this machine only, not the target: {', '.join(local_only)}")
        return 1
    if not run_all(downloads, "pip download", args.out):
        return 1
    wheels = sorted(args.out.glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels) / 2**30
    seconds = time.perf_counter() - start
    print(f"wheelhouse: {len(wheels)} wheels, {size:.2f} GiB in {args.out} ({seconds:.0f} s)")
    extra = unpinned(args.out)
    if extra:
        print(f"wheelhouse: not pinned by the lock (chosen by their dependents): {', '.join(extra)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The kit that lets a lent GPU machine (the developers' ``device`` tool) run ``benchmark doctor`` and a
short real-data benchmark: ``python tools/devkit.py build`` here, ``tools/device_check.sh`` there.

That machine's image (/work/.library/device/KINDS.md) has torch, lightning, timm, torchmetrics,
tifffile and opencv but not smp, albumentations, ray or imagecodecs, nothing can be fetched there,
and a call may carry at most 64 MiB with the working tree. The kit (``.devkit/``, git-ignored):

- ``wheels/``: the missing packages and what they need beyond the image, at the lock's versions;
- ``ray.tar.xz``: Ray's wheel is 79 MB, so it travels unpacked and repacked without its Java jars,
  the dashboard's web client and the libraries on Ray core (Data, Serve, Tune, Train, RLlib, ...),
  with the symbol tables stripped from its three binaries (``strip --strip-unneeded``; the dynamic
  symbols stay), xz-compressed: 23.5 MiB (ray 2.60.0); the other wheels 8.3 MiB;
- ``data/``: uns-positive's JPEGs, its layout script and the masks of those images (23.4 MiB).
  ``layout`` rebuilds the Kaggle layout there UNCOMPRESSED, so imagecodecs (28 MB, only for LZW)
  stays behind; W&B (20 MB and a dozen dependencies) stays behind too: the check logs to CSV.

Measured here: the kit is 55.1 MiB, the tracked tree 5.5 MiB. Rehearsed on this CPU box in a copy of
the project's virtualenv without the kit's packages, W&B and imagecodecs (Python 3.11, so the kit
was built with ``--python-version 3.11``): both stages of device_check.sh passed (doctor 18 OK).
Rehearsed again against the image's own versions, in a Python 3.12 virtualenv holding torch==2.11.0
(the cu130 wheel, seeing no GPU), torchvision==0.26.0, numpy==2.5.2, huggingface_hub==1.33.0,
onnx==1.23.1 and Ray's needs that the image has (msgpack, protobuf, requests, click): device_check.sh
doctor passed with this kit, and so did the whole test suite once the kit was installed there.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # wheelhouse.py, beside this file
ROOT = Path(__file__).resolve().parents[1]
KIT = ROOT / ".devkit"
IMAGE = Path(__file__).with_name("device_image.txt")  # the image's packages, from KINDS.md
LIMIT_MIB = 64  # what one device call may carry, working tree included
ROOM_MIB = 2  # kept free below it: files that appear between the check and the call travel too
# Dependencies of the project that stay behind: LZW decoding (the kit's layout is uncompressed) and
# W&B (the check logs to CSV).
LEFT_BEHIND = ("imagecodecs", "wandb")
# Missing from the image, with their own needs that it lacks. Ray travels apart (ray.tar.xz).
MISSING = (
    "segmentation-models-pytorch", "albumentations", "albucore", "stringzilla", "simsimd",
    "pydantic", "pydantic-core", "annotated-types", "typing-inspection",
    "jsonschema", "jsonschema-specifications", "referencing", "rpds-py",
)  # fmt: skip
# In the image, but older than the lock: pydantic needs typing_extensions >= 4.16 (ahead on the path,
# the carried one serves torch as well).
NEWER = ("typing-extensions",)
WHEELS = (*MISSING, *NEWER)
RAY_LIBRARIES = ("rllib", "data", "serve", "tune", "train", "llm", "air")
RAY_DROP = tuple(f"ray/{d}" for d in ("jars", "dashboard/client/build", *RAY_LIBRARIES))
RAY_BINARIES = ("ray/_raylet.so", "ray/core/src/ray/gcs/gcs_server", "ray/core/src/ray/raylet/raylet")
PYTHON_VERSION, PLATFORM = "3.12", "manylinux_2_28_x86_64"  # the image's python3
PYTHON_FILE = "python.txt"  # the Python the kit's wheels are for, checked before the device installs them


def image_packages(path: Path = IMAGE) -> set[str]:
    """Normalised names of the packages the device image holds."""
    from wheelhouse import normalise

    words = (w for line in path.read_text().splitlines() if not line.startswith("#") for w in line.split())
    return {normalise(w) for w in words}


def download_command(names: list[str], out: Path, python_version: str = PYTHON_VERSION) -> list[str]:
    """pip download of ``names`` at the lock's versions for the image's Python, without dependencies."""
    from wheelhouse import normalise, pins, target_flags

    pinned = pins()
    missing = [n for n in names if normalise(n) not in pinned]
    if missing:
        raise SystemExit(f"devkit: not pinned in requirements/constraints.txt: {', '.join(missing)}")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(out)]
    return [*cmd, *target_flags(python_version, PLATFORM), *(f"{n}=={pinned[normalise(n)]}" for n in names)]


def slim(tree: Path) -> None:
    """Removes what a local Ray cluster never loads, and the binaries' symbol tables."""
    for rel in RAY_DROP:
        shutil.rmtree(tree / rel, ignore_errors=True)
    strip = shutil.which("strip")
    for rel in RAY_BINARIES if strip else ():
        subprocess.run([strip, "--strip-unneeded", str(tree / rel)], check=True)


def repack_ray(wheel: Path, out: Path) -> None:
    """``wheel`` unpacked, slimmed and written as ``out`` (tar.xz of the site-packages entries)."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp)
        with zipfile.ZipFile(wheel) as z:
            for info in z.infolist():  # zipfile drops the executable bits: the binaries need them
                path = Path(z.extract(info, tree))
                path.chmod((info.external_attr >> 16) & 0o777 or 0o644)
        slim(tree)
        with tarfile.open(out, "w:xz", preset=6) as tar:
            for entry in sorted(tree.iterdir()):
                tar.add(entry, arcname=entry.name)


def copy_data(shared: Path, out: Path) -> int:
    """uns-positive's JPEGs and layout script, and the CSV rows of exactly those images."""
    src = shared / "uns-positive"
    (out / "images").mkdir(parents=True, exist_ok=True)
    stems = set()
    for jpeg in sorted((src / "images").glob("*.jpg")):
        shutil.copyfile(jpeg, out / "images" / jpeg.name)
        stems.add(jpeg.stem)
    shutil.copyfile(src / "make_kaggle_layout.py", out / "make_kaggle_layout.py")
    with (shared / "uns-sample" / "train_masks.csv").open() as f, (out / "train_masks.csv").open("w") as g:
        rows = csv.DictReader(f)
        writer = csv.DictWriter(g, fieldnames=rows.fieldnames or [])
        writer.writeheader()
        writer.writerows(r for r in rows if f"{r['subject']}_{r['img']}" in stems)
    return len(stems)


def tree_mib(paths: list[Path]) -> float:
    return sum(p.stat().st_size for p in paths if p.is_file()) / 2**20


def travelling_files() -> list[Path]:
    """What a device call sends besides the kit: tracked files and untracked ones git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout  # fmt: skip
    return [ROOT / p for p in listed.decode().split("\0") if p]


def sizes_mib(kit: Path) -> tuple[float, float]:
    """(the kit, the working tree that travels with it), MiB."""
    return tree_mib(list(kit.rglob("*"))), tree_mib(travelling_files())


def wheel_problems(kit: Path) -> list[str]:
    """Wheels the kit's recorded Python cannot install: a compiled tag for another interpreter."""
    version = (kit / PYTHON_FILE).read_text().strip()
    tag = "cp" + version.replace(".", "")
    bad = []
    for wheel in sorted((kit / "wheels").glob("*.whl")):
        python_tag, abi = wheel.stem.split("-")[-3:-1]
        if abi != "none" and tag not in python_tag.split(".") and abi != "abi3":
            bad.append(f"{wheel.name}: built for {python_tag}, the kit is for Python {version}")
    return bad


def check(kit: Path = KIT) -> int:
    """(Here, before a device call.) 0 when the kit is complete, its wheels fit its Python, and it
    travels with the working tree within the limit; else one line per problem and 1."""
    if not (kit / PYTHON_FILE).is_file() or not (kit / "ray.tar.xz").is_file():
        print(f"devkit: {kit} is incomplete: run 'python tools/devkit.py build'", file=sys.stderr)
        return 1
    problems = wheel_problems(kit)
    total = sum(sizes_mib(kit))
    if total > LIMIT_MIB - ROOM_MIB:
        problems.append(f"kit and working tree are {total:.1f} MiB, over the {LIMIT_MIB} MiB a call carries")
    for line in problems:
        print(f"devkit: {line}", file=sys.stderr)
    if not problems:
        version = (kit / PYTHON_FILE).read_text().strip()
        print(f"devkit: ready for Python {version}: {total:.1f} MiB travel with the working tree")
    return 1 if problems else 0


def build(shared: Path, kit: Path = KIT, python_version: str = PYTHON_VERSION) -> int:
    """Writes the kit; 1 when it and the working tree would not travel in one call, 2 without the data.
    (Another ``python_version`` rehearses the device on this box: a 3.11 kit in a 3.11 virtualenv.)"""
    needed = (shared / "uns-positive" / "images", shared / "uns-sample" / "train_masks.csv")
    absent = [str(p) for p in needed if not p.exists()]
    if absent:
        print(
            f"devkit: not found: {', '.join(absent)} (--shared names the folder of uns-positive/)",
            file=sys.stderr,
        )
        return 2
    if kit.exists():
        shutil.rmtree(kit)
    (kit / "wheels").mkdir(parents=True)
    subprocess.run(download_command(list(WHEELS), kit / "wheels", python_version), check=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(download_command(["ray"], Path(tmp), python_version), check=True)
        repack_ray(next(Path(tmp).glob("ray-*.whl")), kit / "ray.tar.xz")
    images = copy_data(shared, kit / "data")
    (kit / PYTHON_FILE).write_text(python_version + "\n")  # device_check.sh compares its python3
    kit_mib, tree = sizes_mib(kit)
    print(f"devkit: {kit} {kit_mib:.1f} MiB ({images} images) + working tree {tree:.1f} MiB")
    if kit_mib + tree > LIMIT_MIB - ROOM_MIB:
        print(f"devkit: over the {LIMIT_MIB} MiB a device call carries", file=sys.stderr)
        return 1
    return 0


def layout(kit: Path, out: Path) -> int:
    """(On the device.) The Kaggle layout of the kit's images, tifs uncompressed (no imagecodecs)."""
    from datamodules.io import write_tif

    spec = importlib.util.spec_from_file_location("layout", kit / "data" / "make_kaggle_layout.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    (out / "train").mkdir(parents=True, exist_ok=True)
    with (kit / "data" / "train_masks.csv").open() as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        stem = f"{row['subject']}_{row['img']}"
        image = script.restore(kit / "data" / "images" / f"{stem}.jpg")
        write_tif(out / "train" / f"{stem}.tif", image, lzw=False)
        write_tif(out / "train" / f"{stem}_mask.tif", script.rle_decode(row["pixels"]), lzw=False)
    shutil.copyfile(kit / "data" / "train_masks.csv", out / "train_masks.csv")
    print(f"devkit: {len(rows)} uncompressed pairs in {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write .devkit/ here (needs the package index and ../shared/data)")
    b.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    b.add_argument("--out", type=Path, default=KIT)
    b.add_argument("--python-version", default=PYTHON_VERSION, help="the device's python3 (3.12)")
    c = sub.add_parser("check", help="(here, before a call) the kit complete, its wheels' Python, the size")
    c.add_argument("--kit", type=Path, default=KIT)
    lay = sub.add_parser("layout", help="(on the device) rebuild uns-positive from the kit, uncompressed")
    lay.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.cmd == "build":
        return build(args.shared, args.out, args.python_version)
    if args.cmd == "check":
        return check(args.kit)
    return layout(KIT, args.out)


if __name__ == "__main__":
    sys.exit(main())

"""tools/devkit.py: the kit for a lent GPU machine closes the gap between its image and the project, at
the lock's versions; Ray's repack keeps its core; the layout it rebuilds there needs no imagecodecs."""

from __future__ import annotations

import csv
import importlib.metadata as md
import stat
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from packaging.requirements import Requirement
from PIL import Image

from datamodules.io import read_tif
from datamodules.rle import encode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))  # tools/ is no package; devkit imports wheelhouse from there
import devkit  # noqa: E402
from wheelhouse import normalise, pins  # noqa: E402

# The image's interpreter: markers are evaluated for it, not for the Python running the tests.
IMAGE_ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "extra": ""}


def _needs(name: str) -> list[str]:
    """Names a package requires on the image's Python (installed metadata; extras excluded)."""
    out = []
    for text in md.requires(name) or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate(IMAGE_ENV):
            out.append(normalise(req.name))
    return out


def test_the_kit_closes_the_gap_between_the_image_and_the_project():
    import tomllib

    image, kit = devkit.image_packages(), {normalise(w) for w in (*devkit.MISSING, "ray")}
    assert {"torch", "lightning", "timm", "tifffile"} <= image and not kit & image
    assert {normalise(n) for n in devkit.NEWER} <= image  # carried for a newer version only
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    todo = [normalise(Requirement(r).name) for r in project]
    left = {normalise(n) for n in devkit.LEFT_BEHIND}
    assert left <= set(todo)  # left behind on purpose, and still what the project declares
    seen, unmet = set(), []
    while todo:
        name = todo.pop()
        if name in seen or name in image or name in left:
            continue  # the image's own packages bring their own dependencies
        seen.add(name)
        if name not in kit:
            unmet.append(name)
        todo.extend(_needs(name))
    assert unmet == [] and seen == kit  # every carried wheel is needed, and nothing needed is missing


def test_download_command_pins_every_wheel_for_the_image_python(tmp_path):
    cmd = devkit.download_command(list(devkit.WHEELS), tmp_path)
    locked = pins()
    assert "--no-deps" in cmd and "--only-binary=:all:" in cmd
    assert cmd[cmd.index("--python-version") + 1] == "3.12"
    assert f"segmentation-models-pytorch=={locked['segmentation-models-pytorch']}" in cmd
    assert sum(a.count("==") for a in cmd) == len(devkit.WHEELS)
    with pytest.raises(SystemExit, match="not-a-package"):
        devkit.download_command(["not-a-package"], tmp_path)


def _fake_ray_wheel(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as z:
        for name in ("ray/__init__.py", "ray/util/scheduling_strategies.py", "ray/jars/ray_dist.jar",
                     "ray/data/__init__.py", "ray/tune/__init__.py", "ray/dashboard/client/build/a.js",
                     "ray/dashboard/agent.py", "ray-2.60.0.dist-info/METADATA"):  # fmt: skip
            z.writestr(name, "x")
        binary = zipfile.ZipInfo("ray/core/src/ray/raylet/raylet")
        binary.external_attr = (stat.S_IFREG | 0o755) << 16
        z.writestr(binary, "\x7fELF")


def test_ray_repack_keeps_core_and_executables_and_drops_the_libraries(tmp_path, monkeypatch):
    monkeypatch.setattr(devkit.shutil, "which", lambda _: None)  # no strip for fake binaries
    _fake_ray_wheel(tmp_path / "ray.whl")
    devkit.repack_ray(tmp_path / "ray.whl", tmp_path / "ray.tar.xz")
    with tarfile.open(tmp_path / "ray.tar.xz") as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
    assert set(members) == {
        "ray/__init__.py", "ray/util/scheduling_strategies.py", "ray/dashboard/agent.py",
        "ray-2.60.0.dist-info/METADATA", "ray/core/src/ray/raylet/raylet",
    }  # fmt: skip
    assert members["ray/core/src/ray/raylet/raylet"].mode & 0o111 == 0o111
    assert members["ray/__init__.py"].mode & 0o111 == 0


def _fake_shared(root: Path) -> dict[str, np.ndarray]:
    """Two subjects' JPEGs (one without a CSV row) and a masks CSV with one extra row."""
    images = root / "uns-positive" / "images"
    images.mkdir(parents=True)
    (root / "uns-sample").mkdir()
    (root / "uns-positive" / "make_kaggle_layout.py").write_text(
        "import numpy as np\nfrom PIL import Image\nH, W = 420, 580\n"
        "def restore(p):\n    return np.asarray(Image.open(p).convert('L'))\n"
        "def rle_decode(s):\n    from datamodules.rle import decode\n    return decode(s, (H, W)) * 255\n"
    )
    masks, rows = {}, []
    for subject, img in ((1, 1), (1, 2), (3, 7)):
        mask = np.zeros((420, 580), np.uint8)
        mask[100 + img : 140, 200 : 260 + subject] = 255
        masks[f"{subject}_{img}"] = mask
        rows.append({"subject": subject, "img": img, "pixels": encode(mask)})
        if (subject, img) != (3, 7):  # (3, 7) has a row but no image: it stays out of the kit
            Image.fromarray(np.full((420, 580), 40 * img, np.uint8)).save(images / f"{subject}_{img}.jpg")
    with (root / "uns-sample" / "train_masks.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["subject", "img", "pixels"])
        writer.writeheader()
        writer.writerows(rows)
    return masks


def test_layout_rebuilds_uncompressed_pairs_of_exactly_the_kit_images(tmp_path):
    masks = _fake_shared(tmp_path / "shared")
    kit = tmp_path / "kit"
    assert devkit.copy_data(tmp_path / "shared", kit / "data") == 2
    assert devkit.layout(kit, tmp_path / "layout") == 0
    train = tmp_path / "layout" / "train"
    assert sorted(p.name for p in train.iterdir()) == ["1_1.tif", "1_1_mask.tif", "1_2.tif", "1_2_mask.tif"]
    for stem in ("1_1", "1_2"):
        with tifffile.TiffFile(train / f"{stem}_mask.tif") as tif:
            assert tif.pages[0].compression == tifffile.COMPRESSION.NONE  # readable without imagecodecs
        assert np.array_equal(read_tif(train / f"{stem}_mask.tif"), masks[stem])
        assert read_tif(train / f"{stem}.tif").shape == (420, 580)
    with (tmp_path / "layout" / "train_masks.csv").open() as f:
        assert [(r["subject"], r["img"]) for r in csv.DictReader(f)] == [("1", "1"), ("1", "2")]


def _fake_kit(kit: Path, python: str, wheels: list[str]) -> None:
    (kit / "wheels").mkdir(parents=True)
    for name in wheels:
        (kit / "wheels" / name).write_bytes(b"w")
    (kit / "ray.tar.xz").write_bytes(b"r")
    (kit / devkit.PYTHON_FILE).write_text(python + "\n")


def test_check_refuses_a_kit_whose_wheels_or_size_would_fail_on_the_device(tmp_path, capsys, monkeypatch):
    """A kit built for another Python (a rehearsal's 3.11) fails at pip on the device after a
    machine start: `devkit check` says so here, before the call."""
    monkeypatch.setattr(devkit, "travelling_files", lambda: [])
    fits = ["albucore-0.0.24-py3-none-any.whl", "pydantic_core-2.33.2-cp312-cp312-manylinux_2_28_x86_64.whl"]
    _fake_kit(tmp_path / "ok", "3.12", [*fits, "simsimd-6.5.0-cp37-abi3-manylinux_2_28_x86_64.whl"])
    assert devkit.check(tmp_path / "ok") == 0 and "ready for Python 3.12" in capsys.readouterr().out
    _fake_kit(tmp_path / "old", "3.12", [*fits, "rpds_py-0.27.0-cp311-cp311-manylinux_2_28_x86_64.whl"])
    assert devkit.check(tmp_path / "old") == 1
    assert capsys.readouterr().err == (
        "devkit: rpds_py-0.27.0-cp311-cp311-manylinux_2_28_x86_64.whl: built for cp311,"
        " the kit is for Python 3.12\n"
    )
    (tmp_path / "ok" / "big").write_bytes(b"\0" * (devkit.LIMIT_MIB << 20))
    assert devkit.check(tmp_path / "ok") == 1 and "over the 64 MiB" in capsys.readouterr().err
    assert devkit.check(tmp_path / "absent") == 1 and "incomplete" in capsys.readouterr().err


def test_the_travelling_files_include_untracked_ones_git_does_not_ignore(tmp_path, monkeypatch):
    import subprocess

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("ignored.txt\n")
    for name in ("stray.out", "ignored.txt"):
        (tmp_path / name).write_text("x")
    monkeypatch.setattr(devkit, "ROOT", tmp_path)
    assert sorted(p.name for p in devkit.travelling_files()) == [".gitignore", "stray.out"]


def test_device_check_stops_in_seconds_on_a_kit_for_another_python(tmp_path):
    """No install, no layout, no GPU minute spent: one line and exit 2."""
    import shutil
    import subprocess

    (tmp_path / "tools").mkdir()
    shutil.copy(ROOT / "tools" / "device_check.sh", tmp_path / "tools")
    _fake_kit(tmp_path / ".devkit", "2.7", [])
    done = subprocess.run(
        ["bash", str(tmp_path / "tools" / "device_check.sh"), "doctor"],
        capture_output=True, text=True, timeout=300,
        env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "OUT": str(tmp_path / "out")},
    )  # fmt: skip
    assert done.returncode == 2 and not (tmp_path / "out" / "doctor.txt").exists()
    assert done.stderr.startswith("device_check: the kit is for Python 2.7, python3 here is 3.")

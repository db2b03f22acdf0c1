"""summary.json: the one result file per (model, fold, seed) run, plus environment capture.

The schema (``SCHEMA_VERSION``) is documented in docs/architecture.md; the leaderboard reads only
these files, so they are written atomically and durably (:mod:`benchmark.core.files`) with sorted
keys, and NaN or infinity become ``null`` (strict JSON).
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmark.core.config import SCHEMA_VERSION
from benchmark.core.files import atomic_write
from datamodules.errors import DataError

SUMMARY_NAME = "summary.json"
# Top-level keys every complete summary carries (docs/architecture.md). Since schema 2 (nested
# protocol): "metrics" and "per_image" are the OUTER fold's (scored once, never used for a decision);
# "selection" holds the inner-set metrics that chose the epoch and tuned the post-processing.
# Schema 3: "global_batch" is the config's batch_size on any number of devices ("world_size").
SUMMARY_KEYS = (
    "schema_version", "run", "model", "fold", "n_folds", "seed", "config", "config_hash", "dataset",
    "best_epoch", "epochs_run", "train_time_s", "metrics", "selection", "split", "global_batch", "world_size",
    "per_image", "postprocess", "cost", "history", "overlays", "environment", "status",
)  # fmt: skip
METRIC_BLOCKS = ("raw", "post")
SELECTION_KEYS = ("metrics", "n_images", "subjects", "best_epoch", "select")
SPLIT_KEYS = ("split_seed", "n_folds", "fold", "inner_fraction", "outer_subjects", "inner_subjects",
              "fit_subjects", "folds")  # fmt: skip
PER_IMAGE_KEYS = ("index", "stem", "subject", "true_empty", "dice_raw", "dice", "iou", "presence_prob")
COST_KEYS = ("params", "gflops", "train_img_s", "infer_img_s", "latency_ms", "peak_mem_mb")
HISTORY_KEYS = ("epoch", "train_loss", "val_loss", "val_kaggle_dice")
_PACKAGES = {"torch": "torch", "lightning": "lightning", "smp": "segmentation-models-pytorch", "timm": "timm"}


def to_jsonable(value: Any) -> Any:
    """Recursively convert numpy scalars/arrays and tuples to JSON types; NaN/inf become None."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return to_jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def dumps(obj: dict) -> str:
    """The canonical text form: sorted keys, 2-space indent, strict JSON."""
    return json.dumps(to_jsonable(obj), sort_keys=True, indent=2, allow_nan=False) + "\n"


def write_json_atomic(path: str | Path, obj: dict) -> Path:
    """Write ``obj`` as canonical JSON; readers never see a half-written file."""
    return atomic_write(path, dumps(obj))


def write_summary(path: str | Path, summary: dict) -> Path:
    """Write a run summary (``path`` may be the run directory or the file)."""
    path = Path(path)
    if path.suffix != ".json":
        path = path / SUMMARY_NAME
    return write_json_atomic(path, {"schema_version": SCHEMA_VERSION, **summary})


def read_summary(path: str | Path) -> dict:
    """Read a summary (file or run directory); DataError naming the file when missing or invalid."""
    path = Path(path)
    if path.is_dir() and path.name != SUMMARY_NAME:
        path = path / SUMMARY_NAME
    if not path.is_file():
        why = "a directory, not a summary file" if path.is_dir() else "summary file not found"
        raise DataError(path, why)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(path, f"invalid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise DataError(path, "expected a JSON object")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        hint = "; re-run its fit with this version (the training recipe changed)" if _older(version) else ""
        raise DataError(path, f"schema_version {version!r} is not the supported {SCHEMA_VERSION}{hint}")
    return data


def _older(version: Any) -> bool:
    return isinstance(version, int) and not isinstance(version, bool) and version < SCHEMA_VERSION


def is_complete(path: str | Path, config_hash: str) -> bool:
    """True when ``path`` holds a readable, complete summary of the config with this hash."""
    try:
        data = read_summary(path)
    except DataError:
        return False
    return data.get("status") == "complete" and data.get("config_hash") == config_hash


def package_version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def model_source(name: str) -> dict[str, str] | None:
    """Where model ``name`` comes from: the package that registered it, that package's version and
    the paper it cites; what makes a plugin's row traceable to its code. None when not registered
    (an imported outside method's name)."""
    from models.registry import ModelError, get_info

    try:
        info = get_info(name)
    except ModelError:
        return None
    return {"package": info.package, "version": package_version(info.package), "paper": info.paper}


def git_sha(cwd: str | Path | None = None) -> str:
    """HEAD of the repository holding this package (or ``cwd``), with ``-dirty`` when a tracked file
    differs from it (the code that ran is then not that commit's); "unknown" outside git."""
    cwd = Path(cwd) if cwd else Path(__file__).resolve().parent
    head = _git(cwd, "rev-parse", "HEAD")
    if not head:
        return "unknown"
    changed = _git(cwd, "status", "--porcelain", "--untracked-files=no")
    return f"{head}-dirty" if changed else head  # a status git cannot give: the sha it had


def _git(cwd: Path, *args: str) -> str:
    """git's output (stripped), or "" when git is missing or fails; never writes (no index refresh)."""
    try:
        done = subprocess.run(
            ["git", "--no-optional-locks", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


def device_name(device: Any = None) -> str:
    """The name of ``device`` (a torch.device or its string), or of the GPU when there is one. A CPU
    run on a GPU box is named by its CPU."""
    import torch

    dev = None if device is None else torch.device(device)
    if torch.cuda.is_available() and (dev is None or dev.type != "cpu"):
        return torch.cuda.get_device_name(dev)
    return _cpu_model() or platform.processor() or platform.machine() or "cpu"


def _cpu_model() -> str:
    """The CPU's marketing name with its core count (Linux), e.g. 'AMD EPYC 9554 (2 cores)'."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    names = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")]
    return f"{names[0]} ({os.cpu_count()} cores)" if names else ""


def environment(device: Any = None) -> dict[str, str]:
    """Versions, device (``device``'s name, else the GPU's when there is one) and git sha: what is
    needed to reproduce a number."""
    env = {key: package_version(dist) for key, dist in _PACKAGES.items()}
    env.update(
        python=platform.python_version(),
        device=device_name(device),
        git_sha=git_sha(),
        platform=platform.platform(),
    )
    return env

"""The files ``report`` reads, checked before anything is aggregated: a run's summary.json and its
overlays.npz.

A summary whose fields lack the types the leaderboard and the plots rely on (a hand edit such as
``"per_image": "x"`` or ``"fold": "zero"``), or an overlays.npz that is truncated, foreign or
damaged: a summary makes its run *unreadable*: :func:`run_problem` names the file and the problem in
one line, the report leaves the run out (its model then shows as incomplete) and goes on with the
rest. Overlays feed one figure only: a damaged one is named and left out of it, its run kept. This
is a check of structure and types, not a second schema: fields the report does not read are free.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

OVERLAY_KEYS = ("stem", "image", "truth", "pred")
PER_IMAGE_LISTS = {"index": "int", "subject": "id", "true_empty": "bool", "dice": "score",
                   "dice_raw": "score", "iou": "score"}  # fmt: skip


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_ITEM: dict[str, Callable[[Any], bool]] = {
    "int": _is_int,
    "num": lambda v: v is None or _is_num(v),
    "score": lambda v: v is None or (_is_num(v) and 0 <= v <= 1),  # Dice, IoU: 2.0 once ranked first
    "bool": lambda v: isinstance(v, bool) or v in (0, 1),
    "id": lambda v: isinstance(v, str) or _is_int(v),
}
_WORDS = {
    "int": "integers",
    "num": "numbers or null",
    "score": "numbers in [0, 1] or null",
    "bool": "booleans",
    "id": "integers or strings",
}
# Top-level fields: (key, check, what it must be); None is allowed where the report has a default.
_FIELDS: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("run", lambda v: isinstance(v, str) and bool(v), "a non-empty string"),
    ("model", lambda v: isinstance(v, str) and bool(v), "a non-empty string"),
    ("status", lambda v: isinstance(v, str), "a string"),
    ("fold", _is_int, "an integer"),
    ("seed", _is_int, "an integer"),
    ("n_folds", lambda v: v is None or _is_int(v), "an integer"),
    ("global_batch", lambda v: v is None or _is_int(v), "an integer"),
    ("train_time_s", lambda v: v is None or _is_num(v), "a number"),
    ("config_hash", lambda v: v is None or isinstance(v, str), "a string"),
    ("overlays", lambda v: v is None or isinstance(v, str), "a file name"),
    *((k, lambda v: v is None or isinstance(v, dict), "a mapping") for k in (
        "config", "dataset", "split", "selection", "metrics", "cost", "history", "environment")),
)  # fmt: skip


def _metric_blocks(value: Any, where: str) -> str | None:
    """``{"raw": {name: number|null}, "post": {...}}`` (either block may be absent)."""
    for stage, block in (value or {}).items():
        if not isinstance(block, dict):
            return f"{where}.{stage} should be a mapping of metrics, got {_shown(block)}"
        bad = [k for k, v in block.items() if not (v is None or _is_num(v))]
        if bad:
            return f"{where}.{stage}.{bad[0]} should be a number, got {_shown(block[bad[0]])}"
    return None


def _per_image(per_image: Any) -> str | None:
    if not isinstance(per_image, dict):
        return f"per_image should be a mapping of per-image lists, got {_shown(per_image)}"
    lengths = {}
    for key, kind in PER_IMAGE_LISTS.items():
        values = per_image.get(key)
        if not isinstance(values, list) or not all(_ITEM[kind](v) for v in values):
            return f"per_image.{key} should be a list of {_WORDS[kind]}, got {_shown(values)}"
        lengths[key] = len(values)
    units = per_image.get("unit")  # optional: summaries written before link_subjects have none
    if units is not None:
        if not isinstance(units, list) or not all(_ITEM["id"](v) for v in units):
            return f"per_image.unit should be a list of {_WORDS['id']}, got {_shown(units)}"
        lengths["unit"] = len(units)
    if len(set(lengths.values())) > 1:
        return f"per_image lists differ in length ({', '.join(f'{k} {n}' for k, n in lengths.items())})"
    return None


def _selection(selection: dict[str, Any]) -> str | None:
    metrics, subjects = selection.get("metrics"), selection.get("subjects")
    if metrics is not None and not isinstance(metrics, dict):
        return f"selection.metrics should be a mapping, got {_shown(metrics)}"
    if subjects is not None and not (isinstance(subjects, list) and all(_is_int(v) for v in subjects)):
        return f"selection.subjects should be a list of subject ids, got {_shown(subjects)}"
    if not (selection.get("n_images") is None or _is_int(selection["n_images"])):
        return f"selection.n_images should be an integer, got {_shown(selection['n_images'])}"
    return _metric_blocks(metrics, "selection.metrics")


def _split(split: dict[str, Any]) -> str | None:
    if not (split.get("n_folds") is None or _is_int(split["n_folds"])):
        return f"split.n_folds should be an integer, got {_shown(split['n_folds'])}"
    rows = split.get("folds")
    fine = isinstance(rows, list) and all(
        isinstance(r, dict) and _is_int(r.get("fold")) and _is_int(r.get("n_images")) for r in rows
    )
    return None if rows is None or fine else f"split.folds should be a list of fold rows, got {_shown(rows)}"


def _numbers(block: dict[str, Any], where: str, lists: bool = False) -> str | None:
    for key, value in block.items():
        ok = (
            isinstance(value, list) and all(v is None or _is_num(v) for v in value)
            if lists
            else value is None or _is_num(value)
        )
        if not ok:
            return (
                f"{where}.{key} should be {'a list of numbers' if lists else 'a number'}, got {_shown(value)}"
            )
    return None


def _cost(cost: dict[str, Any]) -> str | None:
    """The cost columns are numbers (None: pending or unknown); ``measured`` says how, as a mapping."""
    measured = cost.get("measured")
    if measured is not None and not isinstance(measured, dict):
        return f"cost.measured should be a mapping, got {_shown(measured)}"
    return _numbers({k: v for k, v in cost.items() if k != "measured"}, "cost")


def _nested(summary: dict[str, Any]) -> str | None:
    """The blocks the leaderboard and the plots read inside (their types were checked above)."""
    return (
        _metric_blocks(summary.get("metrics"), "metrics")
        or _selection(summary.get("selection") or {})
        or _split(summary.get("split") or {})
        or _cost(summary.get("cost") or {})
        or _numbers(summary.get("history") or {}, "history", lists=True)
        or _per_image(summary.get("per_image"))
    )


def _consistent(summary: dict[str, Any]) -> str | None:
    """What the types allow but no run writes: a fold outside its split, a fold or seed other than its
    config's, an outer fold of no image. The board showed such a run's model as missing a fold, with
    no warning, while `run` skipped the run as complete and exited 0."""
    fold, config = summary["fold"], summary.get("config") or {}
    n_folds = summary.get("n_folds") or (summary.get("split") or {}).get("n_folds")
    if n_folds is not None and not 0 <= fold < n_folds:
        return f"fold {fold} is outside its split of {n_folds} folds"
    for key in ("fold", "seed"):
        if key in config and config[key] != summary[key]:
            return f"{key} {summary[key]} is not its config's {_shown(config[key])}"
    if not summary["per_image"]["dice"]:
        return "per_image holds no image (an outer fold always has some)"
    index = summary["per_image"]["index"]
    if len(set(index)) < len(index) or min(index) < 0:
        return "per_image.index repeats an image or holds a negative one (each outer image is scored once)"
    if summary.get("status") == "complete" and not isinstance(
        (summary.get("dataset") or {}).get("content_hash"), str
    ):
        # without it the run counted as a board of real data of its own, preferred to every other run
        return "dataset.content_hash is missing (every finished run records the data it was made on)"
    return None


def summary_problem(summary: dict[str, Any]) -> str | None:
    """Why the report cannot use this (schema-valid JSON) summary, or None."""
    for key, check, what in _FIELDS:
        if not check(summary.get(key)):
            return f"{key} should be {what}, got {_shown(summary.get(key))}"
    return _nested(summary) or _consistent(summary)


def _header(zf: zipfile.ZipFile, name: str) -> tuple[tuple[int, ...], np.dtype]:
    with zf.open(name) as fh:
        version = np.lib.format.read_magic(fh)
        read = (
            np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        )
        shape, _, dtype = read(fh)
    return shape, dtype


def overlay_problem(path: Path) -> str | None:
    """Why ``path`` (written by finalize: stem, image, truth, pred) cannot be drawn, or None; an
    absent file is fine (the run has no overlay panel). Every member's CRC is checked."""
    if not path.is_file():
        return None
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            absent = [k for k in OVERLAY_KEYS if f"{k}.npy" not in names]
            if absent:
                return (
                    f"not a nerve-bench overlays file: no {', '.join(absent)} array (has {sorted(names)[:6]})"
                )
            damaged = zf.testzip()
            if damaged is not None:
                return f"damaged: {damaged} fails its CRC check"
            shapes = {k: _header(zf, f"{k}.npy") for k in OVERLAY_KEYS}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
        return f"unreadable overlays ({type(exc).__name__}: {' '.join(str(exc).split())[:120]})"
    (n,) = shapes["stem"][0] if len(shapes["stem"][0]) == 1 else (None,)
    grid = shapes["image"][0]
    if n is None or len(grid) != 3 or grid[0] != n or any(shapes[k][0] != grid for k in ("truth", "pred")):
        listed = ", ".join(f"{k} {shapes[k][0]}" for k in OVERLAY_KEYS)
        return (
            f"overlay arrays do not fit together (want stem (N,), image/truth/pred (N, H, W); got {listed})"
        )
    if any(dtype.hasobject for _, dtype in shapes.values()):
        return "overlay arrays hold Python objects (refused: only plain arrays are read)"
    return None


def run_problem(run_dir: Path, summary: dict[str, Any]) -> str | None:
    """``PATH: problem`` when the run cannot be reported (its summary), else None."""
    problem = summary_problem(summary)
    return f"{run_dir / 'summary.json'}: {problem}" if problem else None


def overlays_of(run_dir: Path, summary: dict[str, Any]) -> Path:
    """The run's overlays.npz (named in its summary)."""
    return run_dir / str(summary.get("overlays") or "overlays.npz")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."

"""The embedded CPU benchmark: a config's ``synthetic:`` section and its generated data set, used
when no data directory is given (or only the README's absent default path).

The data is generated once per generator setting into ``RESULTS/_synthetic_data/synthetic-<hash>``
(aside, then renamed in), so concurrent commands and configs never replace each other's data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmark.core.config import BenchmarkConfig, ConfigError, every_fold
from benchmark.core.files import atomic_write
from benchmark.core.parsing import coerce
from benchmark.core.ranks import global_rank
from benchmark.core.synthetic_section import section_train
from benchmark.runner import say
from datamodules.errors import DataError

SYNTHETIC_DIR = "_synthetic_data"
# The README's data path (the Makefile's DATA default): the only path that may be absent.
DEFAULT_DATA_DIR = Path("data/ultrasound-nerve-segmentation")


def _synthetic_section(bench: BenchmarkConfig, source: str) -> dict[str, Any]:
    """The config's ``synthetic:`` section (checked when the config was read)."""
    if not bench.synthetic:
        raise ConfigError(
            f"{source}: no data to run on: give --data-dir (the Kaggle layout: train/, test/), or use a "
            "config with a `synthetic:` section to fall back to (benchmark/configs/default.yaml)"
        )
    return bench.synthetic


def synthetic_benchmark(bench: BenchmarkConfig, source: str = "config") -> BenchmarkConfig:
    """The CPU-sized fallback: ``synthetic.train`` overrides, optional ``folds``/``seeds``, and
    ``model_kwargs``/``model_train`` replacing the main ones when given. Its own ``synthetic:`` keeps
    only the generator, so it falls back to itself unchanged (``run --print-config`` prints it)."""
    syn = _synthetic_section(bench, source)
    try:
        train = section_train(bench.train, syn.get("train") or {})
    except ConfigError as exc:
        raise ConfigError(f"{source}: synthetic.train: {exc}") from None
    if train.holdout_fraction is not None:  # one hold-out set: the section's folds collapse to it
        folds = every_fold(train)
    elif "folds" in syn:  # read as the top level's are: "0,1" and 0 too (a traceback before)
        folds = coerce("synthetic.folds", syn["folds"], tuple[int, ...])
    else:
        folds = tuple(f for f in bench.folds if f in every_fold(train))
    seeds = coerce("synthetic.seeds", syn["seeds"], tuple[int, ...]) if "seeds" in syn else bench.seeds
    kwargs = {str(k): dict(v) for k, v in (syn.get("model_kwargs") or bench.model_kwargs).items()}
    recipes = {str(k): dict(v) for k, v in (syn.get("model_train") or bench.model_train).items()}
    return dataclasses.replace(
        bench,
        train=train,
        folds=folds,
        seeds=seeds,
        model_kwargs=kwargs,
        model_train=recipes,
        synthetic={"generator": dict(syn.get("generator") or {})},
    )


def _generator_params(bench: BenchmarkConfig) -> dict[str, Any]:
    return dict(sorted((_synthetic_section(bench, "config").get("generator") or {}).items()))


def synthetic_data_dir(bench: BenchmarkConfig, results_dir: Path) -> Path:
    """``RESULTS/_synthetic_data/synthetic-<params hash>``: one directory per generator setting, so
    two configs (or two commands) sharing a results directory never replace each other's data."""
    tag = hashlib.sha256(json.dumps(_generator_params(bench), sort_keys=True).encode()).hexdigest()[:8]
    return results_dir / SYNTHETIC_DIR / f"synthetic-{tag}"


def _stamp_matches(out_dir: Path, params: dict[str, Any]) -> bool:
    try:
        return (out_dir / "train").is_dir() and json.loads((out_dir / "synthetic.json").read_text()) == params
    except (OSError, ValueError):  # missing or damaged stamp: regenerate
        return False


def ensure_synthetic(bench: BenchmarkConfig, out_dir: Path) -> Path:
    """Generate the synthetic data set into ``out_dir`` unless it exists with the same parameters.

    The data is generated in a temporary sibling and renamed into place, so a concurrent command
    sees either no directory or a complete one; if another process finished first, its copy wins.
    """
    from datamodules.synth import generate

    params = _generator_params(bench)
    if global_rank() != 0:  # rank 0 generates it; ranks srun or torchrun start beside it wait for it
        deadline = time.monotonic() + 600
        while not _stamp_matches(out_dir, params) and time.monotonic() < deadline:
            time.sleep(0.5)
        return out_dir
    if _stamp_matches(out_dir, params):
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        generate(tmp, **params)
        atomic_write(tmp / "synthetic.json", json.dumps(params, sort_keys=True) + "\n")
        if out_dir.exists() and not _stamp_matches(out_dir, params):
            shutil.rmtree(out_dir)  # a damaged leftover of this very setting (its name is the params hash)
        with contextlib.suppress(OSError):  # another process renamed its complete copy in first
            os.rename(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def uses_synthetic(data_dir: Path | None) -> bool:
    """True when no data directory was given, or only the README's default path and it is absent.

    Any other path is the user's: a typo must be an error, never a silent synthetic benchmark.
    """
    if data_dir is None:
        return not DEFAULT_DATA_DIR.exists()
    return not data_dir.exists() and data_dir.absolute() == DEFAULT_DATA_DIR.absolute()


def resolve_data(
    bench: BenchmarkConfig,
    data_dir: Path | None,
    results_dir: Path,
    generate: bool = True,
    source: str = "config",
) -> tuple[BenchmarkConfig, Path]:
    """The benchmark and data directory to run: ``data_dir`` (it must hold ``train/``; DataError naming
    it otherwise) or, per :func:`uses_synthetic`, the synthetic fallback of the config (the file
    ``source``), announced once. ``generate=False`` (``--dry-run``) only names the fallback directory
    and writes nothing."""
    if not uses_synthetic(data_dir):
        path = DEFAULT_DATA_DIR if data_dir is None else data_dir
        if not path.is_dir():
            found = "a file, not a directory" if path.exists() else "data directory not found"
            raise DataError(path, f"{found} (--data-dir / DATA): expected the Kaggle layout")
        if not (path / "train").is_dir():
            from datamodules.kaggle import parent_hint

            layout = "expected the Kaggle layout: train/, test/, train_masks.csv"
            raise DataError(path, f"no train/ directory ({layout}){parent_hint(path)}")
        return bench, path
    fallback = synthetic_benchmark(bench, source)
    out = synthetic_data_dir(bench, results_dir)
    why = "no --data-dir given" if data_dir is None else f"{data_dir} not found"
    say(
        f"{why}: the grid is the embedded CPU benchmark on synthetic data in {out} "
        f"(the `synthetic:` section of the {bench.name} config)"
    )
    return fallback, ensure_synthetic(bench, out) if generate else out

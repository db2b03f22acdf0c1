"""Reference implementations the tests check production code against (none of them is used by it).

* ``field_help``: each config field's help text, read straight from the dataclass metadata; the
  ``--help`` test checks the CLI shows every one of them.
* ``missing_keys``: the schema keys a summary lacks, from the schema tuples in
  :mod:`benchmark.core.summary`; the fit and import tests check real summaries have none missing.
* ``paired_bootstrap_pvalue``: the per-image paired bootstrap test the board must NOT use; the
  simulation shows it rejects far too often on clustered frames.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from benchmark.core.summary import (
    COST_KEYS,
    HISTORY_KEYS,
    METRIC_BLOCKS,
    PER_IMAGE_KEYS,
    SELECTION_KEYS,
    SPLIT_KEYS,
    SUMMARY_KEYS,
)

_BLOCKS = (
    ("per_image", PER_IMAGE_KEYS),
    ("cost", COST_KEYS),
    ("history", HISTORY_KEYS),
    ("selection", SELECTION_KEYS),
    ("split", SPLIT_KEYS),
    ("metrics", METRIC_BLOCKS),
    ("selection.metrics", METRIC_BLOCKS),
)


def field_help(cls: type) -> dict[str, str]:
    """Field name -> its one-line help text."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def missing_keys(summary: dict) -> list[str]:
    """Schema keys absent from ``summary`` (top level and its blocks, including raw/post metrics)."""
    missing = [k for k in SUMMARY_KEYS if k not in summary]
    for block, keys in _BLOCKS:
        value: Any = summary
        for part in block.split("."):
            value = value.get(part, {}) if isinstance(value, dict) else {}
        missing += [f"{block}.{k}" for k in keys if k not in value]
    return missing


def paired_bootstrap_pvalue(a: np.ndarray, b: np.ndarray, n_boot: int = 10000, seed: int = 0) -> float:
    """Two-sided p-value of H0 "mean(a - b) = 0" on per-image paired values.

    The differences are centred (H0 imposed) and resampled; p = (1 + #{|mean*| >= |observed|}) /
    (1 + n_boot). Identical vectors give exactly 1.
    """
    x = np.asarray(a, dtype=np.float64).reshape(-1)
    y = np.asarray(b, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"paired samples differ in length: {x.size} vs {y.size}")
    d = x - y
    observed = abs(float(d.mean()))
    idx = np.random.default_rng(seed).integers(0, d.size, size=(n_boot, d.size))
    null = np.abs((d - d.mean())[idx].mean(axis=1))
    # Tolerance: centred resample means of an all-equal vector are ~1e-17, not exactly 0.
    extreme = int(np.count_nonzero(null >= observed - 1e-12))
    return (1 + extreme) / (1 + n_boot)

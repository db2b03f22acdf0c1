"""A config as text: ``--print-config`` YAML that reads back to the same config, and the field
tables of ``fit --help`` / ``run --help``."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from typing import Any

import yaml

from benchmark.core.config import GRID_AXIS_FIELDS, BenchmarkConfig, TrainConfig, field_types
from benchmark.core.parsing import FLOAT_12, INT_12, type_name


class _Dumper(yaml.SafeDumper):
    """Quotes a string that our loader would read as a number (``wandb_project: "1e5"``)."""


_Dumper.add_implicit_resolver("tag:yaml.org,2002:float", FLOAT_12, list("-+0123456789."))
_Dumper.add_implicit_resolver("tag:yaml.org,2002:int", INT_12, list("-+0123456789"))  # "0o17" too


def to_yaml(cfg: TrainConfig | BenchmarkConfig) -> str:
    """``--print-config``: YAML that ``load_benchmark_config`` (``--config``) reads back to the same
    config; a TrainConfig is written as the ``train:`` section of a one-model benchmark."""
    data = dataclasses.asdict(cfg) if isinstance(cfg, BenchmarkConfig) else {"train": cfg.to_dict()}
    if isinstance(cfg, BenchmarkConfig):  # the axes set them (a file may not say otherwise)
        data["train"] = {k: v for k, v in data["train"].items() if k not in GRID_AXIS_FIELDS}
    return yaml.dump(_plain(data), Dumper=_Dumper, sort_keys=False, default_flow_style=None, width=100)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def help_table(cls: type, skip: Iterable[str] = ()) -> str:
    """One line per field: name, type, default and help (the epilog of ``fit --help``/``run --help``)."""
    rows = []
    for f in dataclasses.fields(cls):
        if f.name not in skip:
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            shown = (
                f.metadata.get("shown") or "required" if default is dataclasses.MISSING else _show(default)
            )
            kind = type_name(field_types(cls)[f.name])
            rows.append(f"  {f.name:<19} {kind:<13} {shown:<11} {f.metadata.get('help', '')}")
    return "\n".join(rows)


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(_plain(value))

"""Where a model's training recipe differs from the benchmark's, read from the runs' own configs.

Every model of a board trains the same way unless the config states a per-model recipe
(``model_train``, e.g. a learning rate for one encoder). Each such run records, in its config's
``model_recipe``, the fields it overrides and the benchmark's shared value of each; the reader
finds every difference named under the board, taken from the runs, not from a config file.
"""

from __future__ import annotations

import json
from typing import Any

# A run's own fields: the grid's (model, fold, seed), the architecture's kwargs and its own recipe.
RUN_KEYS = frozenset({"model", "model_kwargs", "model_recipe", "fold", "seed"})


def differences(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """``{"per_model": {model: {field: [its values]}}, "common": {field: shared value}}`` over the
    runs whose config records a ``model_recipe`` (sorted, so the runs' order does not matter)."""
    found: dict[str, dict[str, set[str]]] = {}
    shared: dict[str, set[str]] = {}
    for s in runs:
        cfg: dict[str, Any] = s["config"] if isinstance(s.get("config"), dict) else {}
        for key, base in sorted((cfg.get("model_recipe") or {}).items()):
            found.setdefault(str(s["model"]), {}).setdefault(key, set()).add(json.dumps(cfg.get(key)))
            shared.setdefault(key, set()).add(json.dumps(base))
    per_model = {
        m: {k: [json.loads(v) for v in sorted(vs)] for k, vs in sorted(f.items())}
        for m, f in sorted(found.items())
    }
    common = {k: [json.loads(v) for v in sorted(vs)] for k, vs in sorted(shared.items())}
    return {"per_model": per_model, "common": {k: v[0] if len(v) == 1 else v for k, v in common.items()}}


def shared_recipe(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Every hashed training field of the runs with the benchmark's shared value (a per-model
    recipe's field with the value it replaced), the grid's own fields left out: how every model was
    trained, which the board states so that two boards can be told apart by more than a hash."""
    from benchmark.core.config import NOT_HASHED

    found: dict[str, set[str]] = {}
    for s in runs:
        cfg: dict[str, Any] = s["config"] if isinstance(s.get("config"), dict) else {}
        for key, value in {**cfg, **(cfg.get("model_recipe") or {})}.items():
            if key not in NOT_HASHED | RUN_KEYS:
                found.setdefault(key, set()).add(json.dumps(value, sort_keys=True))
    values = {k: [json.loads(v) for v in sorted(vs)] for k, vs in sorted(found.items())}
    return {k: v[0] if len(v) == 1 else v for k, v in values.items()}


def recipe_line(shared: dict[str, Any]) -> str | None:
    """:func:`shared_recipe` as one Markdown line of ``field value`` pairs (None: no run recorded one)."""
    if not shared:
        return None
    pairs = ", ".join(f"{k} {_word(v)}" for k, v in shared.items())
    return f"- **Recipe** (every run; per-model differences in a note under the table): {pairs}"


def _word(value: Any) -> str:
    """A value as a config file writes it: true, null, 0.001, cosine."""
    return value if isinstance(value, str) else json.dumps(value)


def note(recipe: dict[str, Any]) -> str | None:
    """One line naming every per-model recipe, e.g. ``unet_mobilenet_v2: lr 0.003 (the others 0.001)``."""
    if not recipe["per_model"]:
        return None
    common, parts = recipe["common"], []
    for model, fields in recipe["per_model"].items():
        values = (f"{k} {'/'.join(map(str, v))} (the others {common[k]})" for k, v in fields.items())
        parts.append(f"{model}: {', '.join(values)}")
    return (
        "Per-model recipe (stated in the config's `model_train`, recorded in each run's summary): "
        + "; ".join(parts)
        + "."
    )

"""A finished run's training, kept small: ``checkpoints/trained.json`` replaces ``last.ckpt``.

A finished run is never resumed, and with AdamW's two moments ``last.ckpt`` is three times
``best.ckpt`` (the default grid's 40 trained runs kept 5.2 GiB of them beside 1.7 GiB of
``best.ckpt``). What scoring the run again needs of its training stays in ``trained.json``: the
per-epoch history, the world size, environment and data it trained with, and which ``best.ckpt`` it
selected (epoch and step). A run whose summary is removed is then tuned and scored again from
``best.ckpt`` instead of trained again (``benchmark.pipeline``). The record counts only while it
matches: this config and schema, no training under way (``last.ckpt``), and the same ``best.ckpt``.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from benchmark.core.config import SCHEMA_VERSION, ConfigError
from benchmark.core.files import atomic_write
from benchmark.core.ranks import global_rank
from benchmark.training.callbacks import HISTORY_KEYS, checkpoint_history
from benchmark.training.checkpoint import BEST, LAST, load_plain, load_problem
from benchmark.training.module import config_from_dict

TRAINED = "trained.json"
# What the summary says of the training, kept in the record (finalize.training_facts reads them).
FACTS = ("world_size", "environment", "data_hash")


def _selected(best: dict) -> list[int]:
    """Which best.ckpt: its epoch and global step (a retrain's best.ckpt differs in one or both)."""
    return [int(best.get("epoch", -1)), int(best.get("global_step", -1))]


def drop_resume_state(run_dir: Path, config_hash: str, facts: dict[str, Any]) -> None:
    """Replace a finished run's ``last.ckpt`` by ``trained.json``. Where no record can be made (a full
    disk, an unreadable ``best.ckpt``), ``last.ckpt`` stays; an unreadable one is deleted, as it could
    not be resumed either."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    last = ckpt_dir / LAST
    if not last.is_file():
        return
    kept = {k: facts[k] for k in FACTS}  # a KeyError is the caller's: last.ckpt stays
    if facts.get("model_source"):  # the code that trained it (summaries before the field have none)
        kept["model_source"] = facts["model_source"]
    try:
        history = checkpoint_history(load_plain(last, mmap=True))
    except Exception:  # noqa: BLE001 - it could not be resumed either
        history = None
    if history is not None:
        try:
            selected = _selected(load_plain(ckpt_dir / BEST, mmap=True))
        except Exception:  # noqa: BLE001 - the selected weights are gone: keep the final ones
            return
        record = {"schema_version": SCHEMA_VERSION, "config_hash": config_hash, "history": history,
                  "best": selected, **kept}  # fmt: skip
        try:
            atomic_write(ckpt_dir / TRAINED, json.dumps(record))
        except OSError:
            return
    with contextlib.suppress(OSError):
        last.unlink(missing_ok=True)


def trained_record(run_dir: Path, config_hash: str) -> dict[str, Any] | None:
    """The record of the finished training in ``run_dir``, or None: there is none, training is under
    way again, its schema differs (the recipe changed with it, for the same config hash), or
    ``best.ckpt`` is not the one it selected. ConfigError when it is a finished run of another config:
    training this one there would overwrite it, as ``last.ckpt`` of another config is refused."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    try:
        record = json.loads((ckpt_dir / TRAINED).read_text())
        if (ckpt_dir / LAST).is_file() or record["schema_version"] != SCHEMA_VERSION:
            return None
        saved, history = str(record["config_hash"]), dict(record["history"])
        history = {k: history.get(k, []) for k in HISTORY_KEYS}
        if not all(isinstance(v, list) for v in history.values()):
            raise TypeError("history values must be lists")  # a damaged record is none
        facts = {k: record[k] for k in FACTS}
        facts |= {"model_source": record["model_source"]} if record.get("model_source") else {}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if saved != config_hash:
        raise ConfigError(
            f"{ckpt_dir / TRAINED}: a finished run of a different config (hash {saved} != {config_hash});"
            " use another output directory or delete it"
        )
    if not _is_selected(ckpt_dir / BEST, record.get("best"), saved):
        return None
    return {"history": history, **facts}


def _is_selected(best: Path, selected: Any, config_hash: str) -> bool:
    """Whether ``best`` is the checkpoint the finished training selected: its epoch and step, and of
    this config (another run's best.ckpt copied in matched both, and was scored on images it had
    trained on). One that is not, or is unreadable, is not, with one warning line (the run trains again)."""
    if not best.is_file():
        return False
    try:
        ckpt = load_plain(best, mmap=True)
        saved = config_from_dict(dict(ckpt["hyper_parameters"]["config"])).hash()
    except Exception as exc:  # noqa: BLE001 - whatever is wrong with it, it cannot be scored
        _warn(f"{best}: unreadable ({load_problem(exc)})")
        return False
    if saved != config_hash:
        _warn(f"{best}: the checkpoint of a different config (hash {saved} != {config_hash})")
        return False
    return _selected(ckpt) == selected


def _warn(problem: str) -> None:
    if global_rank() == 0:
        print(f"warning: {problem}; training the run again", file=sys.stderr)


def forget(run_dir: Path) -> None:
    """Remove the record before the run trains again: from then on ``best.ckpt`` is the new training's."""
    with contextlib.suppress(OSError):
        (Path(run_dir) / "checkpoints" / TRAINED).unlink(missing_ok=True)

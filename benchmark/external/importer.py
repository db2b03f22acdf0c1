"""`benchmark import`: put an outside method's outer-fold predictions on the board as one run.

Every check runs before anything is written (one line naming the file and the problem, exit 2):
the row name, the data's content hash against the results directory, the fold, the split seed,
an optional folds file, then every mask (see :mod:`benchmark.external.masks`).
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark.core.config import ConfigError, TrainConfig
from benchmark.core.summary import to_jsonable
from benchmark.external import entry
from benchmark.external.board_config import complete_summaries, train_config
from benchmark.external.folds import FOLDS_FORMAT, Fold, check_fold, split_fold
from benchmark.external.masks import read_predictions
from datamodules.errors import DataError
from datamodules.kaggle import TrainSet, content_hash, load_train

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def check_name(name: str, results_dir: Path) -> None:
    """A row name of its own: not a nerve-bench model, not a model our recipe trained in this directory."""
    import models  # noqa: F401 - registers every architecture
    from models.registry import ModelError, get_info

    if not _NAME.match(name):
        raise ConfigError(f"--name {name!r}: use letters, digits and _ . + - (it names the run directory)")
    try:
        get_info(name)
    except ModelError:
        pass
    else:
        raise ConfigError(
            f"--name {name!r} is a nerve-bench model; an imported method needs a name of its own"
        )
    for path, summary in complete_summaries(results_dir):
        if summary.get("model") == name and not summary.get("external"):
            raise ConfigError(f"--name {name!r}: {path} is a run of that name trained by nerve-bench")


FOLDS_UNCHECKED = "not checked"  # no --folds-file: the method's training split is its author's word


def check_folds_file(path: Path, fold: Fold, data_hash: str) -> None:
    """The folds file the outside method trained on must be this split of this data."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(path, f"cannot read the folds file ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FOLDS_FORMAT:
        raise DataError(path, f"not a folds file written by `benchmark folds` (format {FOLDS_FORMAT!r})")
    if doc.get("content_hash") != data_hash:
        raise DataError(path, f"made on data with content hash {doc.get('content_hash')}, not {data_hash}")
    listed = [e for e in doc.get("folds") or [] if isinstance(e, dict)]
    entries = {e["fold"]: e for e in listed if isinstance(e.get("fold"), int)}  # hand-edited: not a key
    mine = entries.get(fold.cfg.fold) or {}
    if doc.get("split_seed") != fold.cfg.split_seed or mine.get("outer") != fold.outer:
        raise DataError(
            path, f"fold {fold.cfg.fold} of this file is not this benchmark's fold ({_how_split(doc, fold)})"
        )
    outer = set(fold.outer)
    for part, ours in (("train", fold.train), ("inner", fold.inner)):
        theirs = mine.get(part)
        seen = outer & {x for x in theirs if isinstance(x, str)} if isinstance(theirs, list) else set()
        if seen:  # trained or tuned on what is scored: never on the board
            raise DataError(path, f"fold {fold.cfg.fold}'s {part} set holds {len(seen)} of its outer images")
        if theirs != ours:
            raise DataError(
                path, f"fold {fold.cfg.fold}'s {part} set is not this benchmark's ({_how_split(doc, fold)})"
            )


def _earlier_imports(run_dir: Path) -> list[dict[str, Any]]:
    """The imports a --replace overwrites (the one on disk and those it replaced): source and Dice."""
    try:
        old = json.loads((run_dir / "summary.json").read_text())
        ext = old["external"]
        this = {"source": ext.get("source"), "kaggle_dice": old["metrics"]["post"]["kaggle_dice"]}
        earlier = list(ext.get("replaced") or [])
        return earlier if earlier[-1:] == [this] else [*earlier, this]  # a rerun of the same files: once
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError):
        return [{"source": "an unreadable summary.json", "kaggle_dice": None}]


def _on_the_board(external: dict[str, Any], kaggle_dice: float) -> dict[str, Any]:
    """``external`` with its provenance saying what the board cannot check: a training split taken on
    the author's word, and earlier imports of other masks (each printed its outer-fold score)."""
    text = str(external.get("provenance") or "external")
    if external.get("folds") == FOLDS_UNCHECKED:
        text += "; training split not checked (imported without --folds-file)"
    other = [e for e in external.get("replaced") or [] if e.get("kaggle_dice") != kaggle_dice]
    if other:
        scores = ", ".join("?" if e["kaggle_dice"] is None else f"{e['kaggle_dice']:.4f}" for e in other)
        text += f"; replaced {len(other)} earlier import(s) of other masks (outer-fold Kaggle Dice {scores})"
    return {**external, "provenance": text}


def _yaml(value: Any) -> str:
    """A value as the config would spell it (true, not True; null, not None)."""
    return json.dumps(value) if value is None or isinstance(value, bool) else str(value)


def _how_split(doc: dict[str, Any], fold: Fold) -> str:
    """What differs between the file's split and the board's, and the likely remedy."""
    split: dict[str, Any] = doc["split"] if isinstance(doc.get("split"), dict) else {}
    cfg = fold.cfg
    ours = {"split_seed": cfg.split_seed, "n_folds": 1 if cfg.holdout_fraction is not None else cfg.n_folds,
            "inner_fraction": cfg.inner_fraction, "holdout_fraction": cfg.holdout_fraction,
            "link_subjects": cfg.link_subjects, "clean_contradictory": cfg.clean_contradictory}  # fmt: skip
    theirs = {"split_seed": doc.get("split_seed"), **{k: split.get(k) for k in list(ours)[1:]}}
    theirs["link_subjects"] = split.get("link_subjects", False)  # files before link_subjects: not linked
    differ = [
        f"{k} {_yaml(theirs[k])} here, {_yaml(ours[k])} on the board" for k in ours if theirs[k] != ours[k]
    ]
    return (
        "; ".join(differ) + "; write the folds file from the board's config and train on it again"
        if differ
        else "the same split settings, other images: edited, or written by another version of nerve-bench?"
    )


def check_seed(board: Board, seed: int) -> None:
    """A ranked model needs every seed of the board: a seed the other rows lack would take each of
    them off the ranking (and this row too, lacking theirs)."""
    from benchmark.reporting.leaderboard import select_runs

    kept, _ = select_runs([s for _, s in complete_summaries(board.results_dir)])
    seeds = sorted({int(s["seed"]) for s in kept if s.get("model") != board.name})
    if seeds and seed not in seeds:
        raise ConfigError(
            f"--seed {seed}: the other rows in {board.results_dir} have seed(s) "
            f"{', '.join(map(str, seeds))}; a row needs every seed of the board, so import one of those "
            "(or use another --results-dir)"
        )


def _refuse_other_board(summary: dict[str, Any], saved: list[tuple[Path, dict]], results_dir: Path) -> None:
    """An import under another benchmark config starts a second board in the results directory; the
    report shows the bigger one, so a few imports took the board over (a warning said so, exit 0)."""
    from benchmark.reporting.leaderboard import benchmark_hash, select_runs

    kept, _ = select_runs([s for _, s in saved])
    if kept and benchmark_hash(kept[0]) != benchmark_hash(summary):
        raise ConfigError(
            f"{results_dir} holds runs of another benchmark config; an import joins its board (pass no "
            "--config), or goes to another --results-dir"
        )


@dataclass
class Board:
    """What every fold of an import shares: the data (read and hashed once) and the benchmark config."""

    name: str
    data_dir: Path
    results_dir: Path
    train_set: TrainSet
    data_hash: str
    cfg: TrainConfig


def open_board(
    name: str, data_dir: Path, results_dir: Path, config: Path | None = None, sets: list[str] | None = None
) -> Board:
    """Check the name, read and hash the data, check it against the results directory, pick the config."""
    from benchmark.core.files import check_output_dir
    from benchmark.grid_checks import check_link_subjects, check_same_data, check_split_seed

    # a file there was found at the write (exit 1)
    check_output_dir(results_dir, "--results-dir", "a results directory")
    check_name(name, results_dir)
    train_set = load_train(data_dir)
    data_hash = content_hash(train_set)
    check_same_data(results_dir, data_dir, data_hash)  # one data set per results directory
    cfg = train_config(config, sets, results_dir, data_hash)
    check_split_seed(results_dir, cfg.split_seed)
    check_link_subjects(results_dir, cfg.link_subjects, train_set.units()[1])
    return Board(name, data_dir, results_dir, train_set, data_hash, cfg)


def board_fold(board: Board, fold: int, seed: int) -> Fold:
    """Fold ``fold`` of the board's split, with the row's name and ``seed`` in its config."""
    check_fold(board.cfg, fold)
    return entry.with_model(split_fold(board.cfg, board.data_dir, fold, board.train_set), board.name, seed)


def import_fold(
    board: Board,
    split: Fold,
    predictions: Path,
    external: dict[str, Any] | None = None,
    folds_file: Path | None = None,
    facts: dict[str, Any] | None = None,
    replace: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """Read and check every mask of ``split``'s outer fold, score them, write the run summary. An
    earlier import of the same row, fold and seed is refused unless ``replace``."""
    run_dir = board.results_dir / "runs" / split.cfg.run_name()
    if not replace:
        _refuse_overwrite(run_dir, split)
    folds = FOLDS_UNCHECKED
    if folds_file is not None:
        check_folds_file(folds_file, split, board.data_hash)
        folds = f"checked against {folds_file.resolve()}"
    pred = read_predictions(predictions, split.outer, split.cfg.fold)
    provenance = {
        "source": str(predictions.resolve()),
        "provenance": f"predictions imported from {predictions}",
        "folds": folds,
    }
    external = {**provenance, **(external or {}), "replaced": _earlier_imports(run_dir) if replace else []}
    summary = entry.imported_summary(split, board.data_dir, pred, external, facts)
    summary["external"] = _on_the_board(external, summary["metrics"]["post"]["kaggle_dice"])
    saved = complete_summaries(board.results_dir)  # read once for both checks
    _refuse_other_board(summary, saved, board.results_dir)
    _warn_same_masks(summary, saved)

    def settle() -> None:
        """Under the run's lock: an import of this fold that finished while these masks were read
        and scored is refused (without --replace) or listed as replaced, never silently overwritten."""
        if not replace:
            _refuse_overwrite(run_dir, split)
        now = {**external, "replaced": _earlier_imports(run_dir) if replace else []}
        summary["external"] = _on_the_board(now, summary["metrics"]["post"]["kaggle_dice"])

    return run_dir, entry.write_imported(run_dir, summary, split, pred, settle)


def _warn_same_masks(summary: dict[str, Any], saved: list[tuple[Path, dict]]) -> None:
    """One warning when another seed of this row and fold scored exactly these per-image numbers:
    the same masks under two seeds show no training randomness (Seed SD 0), which the board's tests
    would then take as measured."""
    mine = to_jsonable({k: summary["per_image"].get(k) for k in ("index", "dice")})
    for path, other in saved:
        same_fold = (other.get("model"), other.get("fold")) == (summary["model"], summary["fold"])
        theirs = {k: (other.get("per_image") or {}).get(k) for k in ("index", "dice")}
        if same_fold and other.get("seed") != summary["seed"] and theirs == mine:
            print(
                f"warning: {path}: seed {other['seed']} scored the same per-image numbers; the same masks "
                "under two seeds show no training randomness (import each seed's own training)",
                file=sys.stderr,
            )
            return


def _refuse_overwrite(run_dir: Path, split: Fold) -> None:
    """A second import of a row's fold would silently replace the scores already on the board."""
    path = run_dir / "summary.json"
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
        was = f"Kaggle Dice {old['metrics']['post']['kaggle_dice']:.4f}, from {old['external']['source']}"
    except (OSError, ValueError, KeyError, TypeError):
        was = "unreadable"
    raise ConfigError(
        f"{path}: {split.cfg.model} fold {split.cfg.fold} seed {split.cfg.seed} is already imported "
        f"({was}); --replace to overwrite it"
    )


def import_predictions(
    name: str,
    data_dir: Path,
    results_dir: Path,
    fold: int,
    predictions: Path,
    seed: int = 0,
    config: Path | None = None,
    sets: list[str] | None = None,
    external: dict[str, Any] | None = None,
    folds_file: Path | None = None,
    facts: dict[str, Any] | None = None,
    replace: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """`benchmark import`: check everything, score the masks, write ``runs/<run>/summary.json``."""
    board = open_board(name, data_dir, results_dir, config, sets)
    check_seed(board, seed)
    split = board_fold(board, fold, seed)
    return import_fold(board, split, predictions, external, folds_file, facts, replace)

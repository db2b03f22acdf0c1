"""`benchmark nnunet`: nnU-Net v2 trained and predicted through its own code on our folds, then imported.

Step by step (every step skips what is already done, so re-running the command resumes):

1. the data is read and hashed, the benchmark config chosen and split exactly as ``import`` does;
2. the Kaggle layout becomes nnU-Net's raw 2D dataset and our folds its ``splits_final.json``
   (:mod:`benchmark.external.nnunet_layout`);
3. nnU-Net fingerprints, plans (default or ResEnc M planner) and preprocesses the ``2d`` configuration;
4. per seed and outer fold: ``nnUNetTrainer`` trains nnU-Net's fold k (our train part, validating on
   our inner set), resuming an interrupted fold like ``nnUNetv2_train --c``; the final checkpoint
   predicts the outer fold (nnU-Net's raw prediction: its sliding window and mirroring, no
   post-processing chosen on anything); the masks are imported as the row ``nnunet_2d`` or
   ``nnunet_resenc_m_2d``. A fold whose summary exists with the same settings is skipped.

nnU-Net runs in child processes (:mod:`benchmark.external.nnunet_steps`) whose output goes to
``RESULTS/nnunet/logs/``; a failed step is one line naming its log.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.core.files import atomic_write
from benchmark.core.lock import LOCK_NAME, claim
from benchmark.core.summary import read_summary
from benchmark.external import importer
from benchmark.external.board_config import complete_summaries
from benchmark.external.folds import Fold, check_fold, fold_ids
from benchmark.external.nnunet_layout import (
    CONFIGURATION,
    DATASET_ID,
    PLANNERS,
    Layout,
    convert,
    source_stamp,
)
from benchmark.external.nnunet_steps import FACTS
from datamodules.errors import DataError, NerveBenchError

ONE_ROW = "one row, one recipe (give those settings, or use another --results-dir)"
INSTALL_HINT = "nnU-Net is not installed: `pip install -e .[nnunet]` or `make install` (see README, nnU-Net)"
DEFAULT_EPOCHS, DEFAULT_ITERATIONS = 1000, 250  # nnUNetTrainer's own
SETUP_POLL_S = 5.0  # how often a process waiting for another's conversion and planning looks again


class NnUNetError(RuntimeError):
    """An nnU-Net step failed (a runtime failure: exit 1, its log named)."""


@dataclass(frozen=True)
class NnUNetSettings:
    planner: str = "default"  # PLANNERS key
    epochs: int = DEFAULT_EPOCHS
    device: str = "cuda"
    folds: tuple[int, ...] | None = None  # None: every outer fold
    seeds: tuple[int, ...] = (0,)
    # Below: nnU-Net's defaults unless a budgeted or test run sets them from Python.
    iterations_per_epoch: int | None = None  # nnUNetTrainer: 250
    val_iterations: int | None = None  # nnUNetTrainer: 50
    plans_2d: dict = field(
        default_factory=dict
    )  # merged into the plans' 2d configuration (patch, batch, ...)
    mirroring: bool = True  # nnU-Net's test-time mirroring
    tile_step_size: float = 0.5
    validate: bool = True  # nnU-Net's own final validation (on our inner set; its numbers stay in its folder)
    num_processes: int = 1  # fingerprint and preprocessing workers

    def __post_init__(self) -> None:
        if self.planner not in PLANNERS:
            raise NerveBenchError(f"--planner {self.planner!r}: choose one of {', '.join(PLANNERS)}")
        if self.epochs < 1 or self.device not in ("cuda", "cpu"):
            raise NerveBenchError(
                f"need --epochs >= 1 and --device cuda or cpu, got {self.epochs}, {self.device!r}"
            )
        if self.iterations_per_epoch is not None and self.iterations_per_epoch < 1:
            raise NerveBenchError(f"--iterations-per-epoch {self.iterations_per_epoch}: need 1 or more")

    @property
    def plans(self) -> str:
        return PLANNERS[self.planner][1]

    @property
    def row(self) -> str:
        return PLANNERS[self.planner][2]

    def recipe(self) -> dict[str, Any]:
        """What decides the trained model (recorded in each summary; a fold is skipped only on a match)."""
        keys = ("planner", "epochs", "iterations_per_epoch", "plans_2d", "mirroring", "tile_step_size")
        return {k: getattr(self, k) for k in keys}


def require_extra() -> str:
    """nnunetv2's version; NerveBenchError with the install line when the extra is missing."""
    try:
        importlib.import_module("nnunetv2")
        importlib.import_module("dynamic_network_architectures")
    except ImportError:
        raise NerveBenchError(INSTALL_HINT) from None
    from importlib.metadata import version

    return version("nnunetv2")


def _check_device(device: str) -> None:
    """Before the conversion and planning (minutes on the full set): nnU-Net asks CUDA only to train."""
    import torch

    from benchmark.core.world import torch_build

    if device == "cuda" and not torch.cuda.is_available():
        raise NerveBenchError(
            f"--device cuda, but no CUDA GPU is visible ({torch_build()}); use --device cpu"
        )


def provenance(settings: NnUNetSettings, version: str) -> str:
    its = settings.iterations_per_epoch or DEFAULT_ITERATIONS
    budget = (
        "nnU-Net's default" if settings.epochs == DEFAULT_EPOCHS and its == DEFAULT_ITERATIONS else "budgeted"
    )
    tta = "mirroring TTA" if settings.mirroring else "no TTA"
    return (
        f"nnU-Net v{version} through its own code: {PLANNERS[settings.planner][0]} / {settings.plans} "
        f"{CONFIGURATION}, nnUNetTrainer {settings.epochs} epochs x {its} iterations ({budget}), trained on "
        f"the fold's train part and validated on its inner set, final checkpoint, raw prediction "
        f"({tta}, no post-processing)"
    )


def _work(layout: Layout, seed: int, device: str, job: dict[str, Any], log: Path) -> int:
    """Run nnU-Net's steps in one child process with its environment; its exit code."""
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "benchmark.external.nnunet_steps", json.dumps(job)]
    with open(log, "ab") as out:
        env = layout.env(seed, device)
        return subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=layout.work).returncode


def _plan_job(layout: Layout, settings: NnUNetSettings) -> dict[str, Any] | None:
    """The planning job, or None when these plans were made already (with these settings)."""
    marker = _plan_marker(layout, settings)
    wanted = {"planner": settings.planner, "plans_2d": settings.plans_2d}
    if marker.is_file():
        try:
            saved = json.loads(marker.read_text())
        except ValueError:
            raise DataError(marker, "unreadable plan record; delete it to plan again") from None
        if saved != wanted:
            raise DataError(marker, f"planned with {saved}, not {wanted}; use another --results-dir")
        return None
    return {
        "dataset_id": DATASET_ID,
        "planner": PLANNERS[settings.planner][0],
        "plans_2d": settings.plans_2d,
        "preprocessed": str(layout.preprocessed),
        "num_processes": settings.num_processes,
    }


@contextlib.contextmanager
def _setting_up(layout: Layout, say: Any) -> Iterator[None]:
    """One process at a time converts the data and plans, the others wait for it: machines sharing
    the results directory (`--folds` spread over them) planned into one folder at once, and one
    crashed in nnU-Net's preprocessing while the other trained on files rewritten under it."""
    folder, waiting = layout.work / "setup", False
    while (held := claim(folder)) is None:
        if not waiting:
            say(f"waiting for the process holding {folder / LOCK_NAME} (converting the data or planning)")
            waiting = True
        time.sleep(SETUP_POLL_S)
    with held:
        yield


def _plan(layout: Layout, settings: NnUNetSettings) -> None:
    """nnU-Net's fingerprint, plans and preprocessing, unless these plans were made already."""
    plan = _plan_job(layout, settings)
    if plan is None:
        return
    log = layout.log(f"{settings.plans}_plan")
    code = _work(layout, 0, settings.device, {"plan": plan, "folds": []}, log)
    if code != 0:
        raise NnUNetError(f"nnU-Net planning failed (exit {code}); its output is in {log}")
    record = {"planner": settings.planner, "plans_2d": settings.plans_2d}
    atomic_write(_plan_marker(layout, settings), json.dumps(record, sort_keys=True) + "\n")


def _plan_marker(layout: Layout, settings: NnUNetSettings) -> Path:
    return layout.preprocessed / f"{settings.plans}.nerve_bench.json"


def _done(run_dir: Path, recipe: dict[str, Any]) -> bool:
    """A complete summary of this recipe exists; DataError when one of another recipe does."""
    try:
        summary = read_summary(run_dir)
    except DataError:
        return False
    saved = (summary.get("external") or {}).get("recipe")
    if summary.get("status") == "complete" and saved != recipe:
        raise DataError(
            run_dir / "summary.json",
            f"made with nnU-Net settings {saved}, not {recipe}; use another --results-dir",
        )
    return summary.get("status") == "complete"


def _check_row_recipe(board: importer.Board, layout: Layout, settings: NnUNetSettings) -> None:
    """One row is one recipe: a fold imported, or begun (its recipe record), with other settings is
    refused. Each fold checked only its own, so folds spread over machines with other --epochs made
    one ranked row of three budgets (a review)."""
    recipe, want = settings.recipe(), json.dumps(settings.recipe(), sort_keys=True) + "\n"
    for path, summary in complete_summaries(board.results_dir):
        saved = (summary.get("external") or {}).get("recipe")
        if summary.get("model") == settings.row and saved != recipe:
            raise DataError(path, f"{settings.row} fold {summary.get('fold')} seed {summary.get('seed')} "
                            f"was made with nnU-Net settings {saved}, not {recipe}: {ONE_ROW}")  # fmt: skip
    for seed, fold in ((s, k) for s in settings.seeds for k in fold_ids(board.cfg)):
        fold_dir = layout.fold_dir(settings.plans, seed, fold)  # a fold under way elsewhere
        if (other := _begun_otherwise(fold_dir, want)) is not None:
            raise DataError(fold_dir, f"begun with nnU-Net settings {other}, not {want.strip()}: {ONE_ROW}")


def _begun_otherwise(fold_dir: Path, want: str) -> str | None:
    """The recipe ``fold_dir`` was begun under (the record :func:`_begin_fold` writes), if not ``want``."""
    marker = fold_dir / RECIPE
    return marker.read_text().strip() if marker.is_file() and marker.read_text() != want else None


def _fold_job(layout: Layout, settings: NnUNetSettings, split: Fold, seed: int) -> dict[str, Any]:
    k = split.cfg.fold
    fold_dir = layout.fold_dir(settings.plans, seed, k)
    return {
        "step": "fold",
        "fold": k,
        "seed": seed,
        "device": settings.device,
        "epochs": settings.epochs,
        "iterations_per_epoch": settings.iterations_per_epoch,
        "val_iterations": settings.val_iterations,
        "validate": settings.validate,
        "preprocessed": str(layout.preprocessed),
        "plans": settings.plans,
        "model_dir": str(fold_dir.parent),
        "mirroring": settings.mirroring,
        "tile_step_size": settings.tile_step_size,
        "stems": split.outer,
        "images": [str(layout.image(s)) for s in split.outer],
        "out": str(layout.predictions(settings.plans, seed, k)),
    }


def _facts(layout: Layout, settings: NnUNetSettings, seed: int, fold: int) -> dict[str, Any] | None:
    """What the fold's training recorded, or None when its record is absent or unreadable (then the
    fold is trained again: nnU-Net resumes from its own checkpoints and only writes the record)."""
    try:
        facts = json.loads((layout.fold_dir(settings.plans, seed, fold) / FACTS).read_text())
        return {
            "cost": {"params": facts["params"], "train_img_s": facts["train_img_s"]},
            "train_time_s": facts["train_time_s"],
            "epochs_run": facts["epochs_run"],
            "nnunet": facts,
        }
    except (OSError, ValueError, KeyError, TypeError):
        return None


RECIPE = "nerve_bench_recipe.json"  # in a fold's folder: the recipe its checkpoints and masks belong to


def _begin_fold(layout: Layout, settings: NnUNetSettings, seed: int, fold: int) -> None:
    """Record the recipe a fold's checkpoints and masks belong to; refuse a fold of another one. nnU-Net
    would resume from its checkpoints and reuse its masks, and the board would show them under this
    recipe's name (a rerun with other --epochs did). A fold from before the record is taken as this
    recipe's unless its training record says another number of epochs."""
    fold_dir = layout.fold_dir(settings.plans, seed, fold)
    want, marker = json.dumps(settings.recipe(), sort_keys=True) + "\n", fold_dir / RECIPE
    if (saved := _begun_otherwise(fold_dir, want)) is not None:
        raise DataError(fold_dir, f"begun with nnU-Net settings {saved}, not {want.strip()}; "
                        "use another --results-dir, or delete this folder to train it again")  # fmt: skip
    if not marker.is_file() and fold_dir.is_dir():
        facts = _facts(layout, settings, seed, fold)
        epochs = None if facts is None else facts["epochs_run"]
        if epochs is not None and epochs != settings.epochs:
            raise DataError(fold_dir, f"trained for {epochs} epochs, not {settings.epochs}; use another "
                            "--results-dir, or delete this folder to train it again")  # fmt: skip
    fold_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(marker, want)


def _import(
    board: importer.Board, layout: Layout, settings: NnUNetSettings, split: Fold, external: dict
) -> bool:
    """Import a fold nnU-Net finished (facts written, every outer image predicted); False if it did not."""
    seed, k = split.cfg.seed, split.cfg.fold
    out = layout.predictions(settings.plans, seed, k)
    facts = _facts(layout, settings, seed, k)
    if facts is None or not all((out / f"{s}.png").is_file() for s in split.outer):
        return False
    # replace: a rerun imports nnU-Net's own predictions of this fold again, the same files
    importer.import_fold(
        board, split, out, {**external, "nnunet": facts.pop("nnunet")}, facts=facts, replace=True
    )
    return True


def run_seed(
    board: importer.Board,
    layout: Layout,
    settings: NnUNetSettings,
    seed: int,
    folds: list[int],
    external: dict,
) -> list[tuple[int, int, str]]:
    """Plan (once), train and predict the folds not yet imported in one nnU-Net process, then import them."""
    importer.check_seed(board, seed)
    splits = [importer.board_fold(board, k, seed) for k in folds]
    todo = [s for s in splits if not _done(board.results_dir / "runs" / s.cfg.run_name(), external["recipe"])]
    status = {s.cfg.fold: "skipped" for s in splits if s not in todo}
    for split in todo:
        _begin_fold(layout, settings, seed, split.cfg.fold)
    for split in [s for s in todo if _import(board, layout, settings, s, external)]:  # finished, not imported
        status[split.cfg.fold] = "imported"
        todo.remove(split)
    if todo:
        log = layout.log(f"{settings.plans}_seed{seed}")
        job = {"plan": None, "folds": [_fold_job(layout, settings, s, seed) for s in todo]}
        code = _work(layout, seed, settings.device, job, log)
        for split in todo:  # what finished is imported even when a later fold failed
            status[split.cfg.fold] = (
                "imported" if _import(board, layout, settings, split, external) else "failed"
            )
        if code != 0 or "failed" in status.values():  # a fold nnU-Net left without facts or masks
            raise NnUNetError(f"nnU-Net failed (exit {code}); its output is in {log}")
    return [(k, seed, status[k]) for k in folds]


def run_nnunet(
    data_dir: Path,
    results_dir: Path,
    settings: NnUNetSettings,
    config: Path | None = None,
    sets: list[str] | None = None,
    say: Any = print,
) -> list[tuple[int, int, str]]:
    """Every step above; returns (fold, seed, "imported" | "skipped") per run."""
    version = require_extra()
    _check_device(settings.device)
    board = importer.open_board(settings.row, data_dir, results_dir, config, sets)
    folds = list(settings.folds) if settings.folds is not None else fold_ids(board.cfg)
    for k in folds:
        check_fold(board.cfg, k)
    every = [importer.board_fold(board, k, 0) for k in fold_ids(board.cfg)]
    layout = Layout(results_dir.resolve() / "nnunet")
    _check_row_recipe(board, layout, settings)
    with _setting_up(layout, say):
        convert(layout, board.train_set, every, source_stamp(board.data_hash, every))
        _plan(layout, settings)
    external = {
        "source": f"nnU-Net v{version} ({layout.work})",
        "provenance": provenance(settings, version),
        "recipe": settings.recipe(),
        "folds": "nerve-bench's own (splits_final.json written from `benchmark folds`)",
    }
    done = []
    for seed in settings.seeds:
        say(
            f"{settings.row} seed {seed}: nnU-Net ({settings.plans}, {settings.epochs} epochs) on folds "
            f"{', '.join(map(str, folds))}; its output goes to {layout.work / 'logs'}"
        )
        done += run_seed(board, layout, settings, seed, folds, external)
        say("; ".join(_fold_line(board, k, seed, status) for k, s, status in done if s == seed))
    return done


def _fold_line(board: importer.Board, fold: int, seed: int, status: str) -> str:
    """``fold K: STATUS``, with the outer-fold Kaggle Dice its summary holds (as ``import`` says it)."""
    run_dir = board.results_dir / "runs" / importer.board_fold(board, fold, seed).cfg.run_name()
    try:
        dice = read_summary(run_dir)["metrics"]["post"]["kaggle_dice"]
        return f"fold {fold}: {status}, outer-fold Kaggle Dice {dice:.4f}"
    except (DataError, KeyError, TypeError, ValueError):  # failed: no summary to read
        return f"fold {fold}: {status}"


def settings_from(**values: Any) -> NnUNetSettings:
    return dataclasses.replace(NnUNetSettings(), **{k: v for k, v in values.items() if v is not None})

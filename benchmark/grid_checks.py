"""What can be checked of a grid against its data, its results directory and this machine before
the first run starts.

A config that cannot work with the data (more folds than subjects, a fit part smaller than one
global batch) or with the machine (a GPU recipe where no GPU is visible) would otherwise fail run
after run, each with its own traceback, and the command would end with exit 1 after decoding the
data and building a Trainer for every one of them. Checked here, it is one line and exit 2 (bad
input), like a misspelt model. The runs still check for themselves (``datamodules.datamodule``):
cleaning contradictory frames can shrink a fit part a little further.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from benchmark.core.config import ConfigError, TrainConfig
from benchmark.core.model_kwargs import trains
from benchmark.core.summary import read_summary
from benchmark.core.world import torch_build
from datamodules.errors import DataError
from datamodules.kaggle import TrainSet
from datamodules.splits import split_for

GPU_ACCELERATORS = ("gpu", "cuda")


def check_train_set(grid: list[TrainConfig], data_dir: Path, results_dir: Path, train: TrainSet) -> None:
    """``train`` (the decoded training set) split as the results directory's runs split it, and every
    run's split holding one global batch; a warning per linked subject pair the runs keep apart."""
    from benchmark.runner import say
    from datamodules.fingerprints import unlinked

    linked = any(c.link_subjects for c in grid)  # one split per board: never set per model
    units, links = train.units(linked)
    check_link_subjects(results_dir, linked, links)
    for link in links if not linked else []:
        say(f"warning: {unlinked(link)}")
    check_splits(grid, data_dir, train.subjects, train.positive, units)


def check_splits(
    grid: list[TrainConfig],
    data_dir: Path,
    subjects: np.ndarray,
    positive: np.ndarray,
    linked: np.ndarray | None = None,
) -> None:
    """Every run's split exists and, for a model with weights to train, its fit part holds one
    global batch (the ``empty`` baseline, or a plugin's fixed rule, has no batch to fill); DataError
    naming the run. ``linked``: the per-frame units of ``TrainSet.units`` that ``link_subjects``
    runs split by (default: the subjects)."""
    fit_sizes: dict[tuple, int] = {}
    merged = linked is not None and np.unique(linked).size < np.unique(subjects).size  # counts of units
    for cfg in grid:
        units = linked if cfg.link_subjects and linked is not None else subjects
        split = (
            cfg.fold,
            cfg.n_folds,
            cfg.holdout_fraction,
            cfg.inner_fraction,
            cfg.split_seed,
            units is linked,
        )
        where = f"{cfg.model} fold {cfg.fold}"
        if split not in fit_sizes:
            fit_sizes[split] = _fit_size(cfg, data_dir, units, positive, where, merged and units is linked)
        # whether the model trains is asked only of a run that would fail: it builds the model
        if fit_sizes[split] < cfg.batch_size and trains(cfg):
            raise DataError(
                data_dir,
                f"{where}: the fit part has {fit_sizes[split]} images, fewer than one global batch "
                f"(batch_size={cfg.batch_size}); lower batch_size or use more data",
            )


def _fit_size(
    cfg: TrainConfig, data_dir: Path, units: np.ndarray, positive: np.ndarray, where: str, merged: bool
) -> int:
    """Images in the split's fit part; warns (once per split) when its inner selection set is larger,
    which only few subjects produce: epochs and post-processing are then chosen on more images than
    the weights are fitted on."""
    try:
        fit, inner, *_ = split_for(cfg, units, positive)
    except ValueError as exc:
        once = " (subjects that share frames count once)" if merged else ""
        raise DataError(data_dir, f"{where}: cannot split by subject: {exc}{once}") from None
    if len(inner) > len(fit):
        print(inner_larger(data_dir, cfg, cfg.fold, len(inner), len(fit)), file=sys.stderr)
    return len(fit)


def inner_larger(data_dir: Path, cfg: TrainConfig, fold: int, n_inner: int, n_fit: int) -> str:
    """The warning for a split whose inner selection set outnumbers its fit part (``run`` and ``folds``)."""
    where = "the hold-out split" if cfg.holdout_fraction is not None else f"fold {fold}"
    return (
        f"warning: {data_dir}: {where}: the inner selection set ({n_inner} images) is larger than "
        f"the fit part ({n_fit}); with so few subjects, use fewer folds or a smaller inner_fraction"
    )


def check_logger(grid: list[TrainConfig]) -> None:
    """``logger: wandb`` where the wandb package cannot be imported: ConfigError before the first
    run (each run failed in turn, exit 1)."""
    import importlib.util

    wants = next((c for c in grid if c.logger == "wandb"), None)
    if wants is not None and importlib.util.find_spec("wandb") is None:
        raise ConfigError(
            f"logger=wandb ({wants.model}): the wandb package is not installed here; install it "
            "(make install), or set logger: csv"
        )


def check_accelerator(grid: list[TrainConfig]) -> None:
    """A run that asks for a GPU in a process that sees none: ConfigError. For the local executor
    and ``fit``; the Ray executor checks its cluster instead (``ray_resources.task_options``), so a
    GPU-less driver of a GPU cluster does not come here."""
    wants = next((c for c in grid if c.accelerator in GPU_ACCELERATORS), None)
    if wants is None or torch.cuda.is_available():
        return
    raise ConfigError(
        f"accelerator={wants.accelerator} ({wants.model}): no CUDA GPU is visible to this process "
        f"({torch_build()}); set accelerator: cpu or auto"
    )


def _check_no_launcher(grid: list[TrainConfig]) -> None:
    """Without srun or torchrun nothing starts the other nodes' processes: Lightning waited for them
    in its rendezvous, printing nothing and deaf to SIGTERM (blocked in C++), until killed."""
    nodes = next((c for c in grid if c.num_nodes > 1), None)
    if nodes is not None:
        raise ConfigError(
            f"num_nodes={nodes.num_nodes} ({nodes.model}), but no srun or torchrun started this process: "
            "nothing would start the other nodes' processes. Launch it with srun or torchrun on every node "
            "(README, several nodes), or set num_nodes: 1"
        )


def check_launcher(grid: list[TrainConfig]) -> None:
    """Processes an outside launcher starts (srun, torchrun) must be the ones the runs span (devices x
    num_nodes): Lightning takes its world from the launcher, so an ``sbatch --ntasks=1`` job with
    ``devices: 8`` trained on one GPU without a word, and a torchrun world of another size failed
    at the first fit. ConfigError before any run, as Lightning detects the launcher."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    slurm = SLURMEnvironment.detect()
    if slurm:
        started, by = int(os.environ.get("SLURM_NTASKS", "1")), "SLURM (SLURM_NTASKS)"
    elif TorchElasticEnvironment.detect():
        started, by = int(os.environ.get("WORLD_SIZE", "1")), "torchrun (WORLD_SIZE)"
    else:
        _check_no_launcher(grid)
        return
    ddp = next((c for c in grid if c.world_size() > 1), None)
    if ddp is None and started > 1:  # every rank would wait for a rank 0 that never trains with it
        raise ConfigError(f"{by} started {started} processes, but every run is one process: start one")
    if ddp is not None and started != ddp.world_size():
        raise ConfigError(
            f"{by} started {started} process(es), but {ddp.model} spans {ddp.world_size()} (devices "
            f"{ddp.devices} x num_nodes {ddp.num_nodes}): start one per device on each node, or set "
            "devices and num_nodes to match"
        )
    if ddp is not None and not slurm and os.environ.get("TORCHELASTIC_RUN_ID") in ("", "none"):
        # ranks > 0 find rank 0 by the launch's name: a relaunch would find the last one's rank 0
        raise ConfigError("torchrun: give each launch its own --rdzv-id (e.g. $SLURM_JOB_ID or $(date +%s))")


def gpu_recipe_on_cpu(grid: list[TrainConfig]) -> str | None:
    """The problem when the runs ``grid`` will train (those with weights) are of a GPU recipe
    (mixed precision, the GPU data cache) and would train on the CPU (``accelerator: auto`` and no
    GPU visible), else None: ``run`` refuses it, as the Ray executor refuses it on a cluster without
    GPUs (45 such runs take weeks on a CPU), and a dry run says it. The local executor's (a Ray
    cluster's workers may have the GPUs its driver lacks)."""
    slow = [c for c in grid if c.accelerator == "auto" and (c.precision.endswith("-mixed") or c.gpu_cache)]
    if not slow or torch.cuda.is_available():
        return None

    def arch(c: TrainConfig) -> tuple:
        return c.model, repr(c.model_kwargs), c.encoder_weights

    # asked last, once per architecture: it builds the model (the empty floor trains nothing)
    trained = {arch(c) for c in {arch(c): c for c in slow}.values() if trains(c)}
    slow = [c for c in slow if arch(c) in trained]
    if not slow:
        return None
    mixed = {c.precision for c in slow if c.precision.endswith("-mixed")}
    parts = sorted(mixed | ({"gpu_cache"} if any(c.gpu_cache for c in slow) else set()))
    return (
        f"no GPU is visible ({torch_build()}) for {len(slow)} run(s) of a GPU recipe ({', '.join(parts)}) "
        "with accelerator: auto; on the CPU they take many times longer (`benchmark doctor` estimates "
        "it). Run on a GPU box; or --set accelerator=cpu to train it on the CPU anyway; or a CPU "
        "recipe, --set precision=32 --set gpu_cache=false (either is another run hash, so another board)"
    )


def check_split_seed(results_dir: Path, split_seed: int) -> None:
    """Refuse a results directory whose runs used another ``split_seed``: out-of-fold scores need one
    fold assignment for the whole board (``seed`` may vary: it replicates initialisation only)."""
    for path, config in _saved_configs(results_dir):
        saved = config.get("split_seed")
        if saved is not None and int(saved) != int(split_seed):
            raise ConfigError(
                f"{path.parent}: made with split_seed {saved}, but this benchmark uses {split_seed}; "
                "one results directory holds one fold assignment (use another --results-dir)"
            )


def check_same_data(results_dir: Path, data_dir: Path, current: str, grid: Sequence[str] = ()) -> None:
    """Refuse a results directory any of whose runs was made on other data: a run of this grid (run
    names ``grid``) would be skipped as complete (the config hash does not cover the data), any other
    would share the board with runs of another data set. Other runs of synthetic data are let be when
    this data is real (the README's first `make benchmark` before the download): the board prefers
    the real runs. Two synthetic data sets (`benchmark synth` marks its data too) are two data sets."""
    real_now = not (Path(data_dir) / "synthetic.json").is_file()
    for path, summary in _saved_summaries(results_dir):
        dataset = summary.get("dataset") or {}
        saved = dataset.get("content_hash")
        if saved != current and (path.parent.name in grid or not dataset.get("synthetic") or not real_now):
            raise ConfigError(
                f"{path.parent}: made on data with content hash {saved}, but {data_dir} has "
                f"{current}; one results directory holds one data set (use another --results-dir)"
            )


def check_joins_board(results_dir: Path, grid: Sequence[TrainConfig]) -> None:
    """What ``run`` and its dry run refuse of the results directory's earlier runs before any data
    is read: another split seed, or a model name an import holds."""
    check_split_seed(results_dir, grid[0].split_seed)  # one split per grid (the per-model checks)
    check_imported_names(results_dir, sorted({c.model for c in grid}))


def check_imported_names(results_dir: Path, models: Sequence[str]) -> None:
    """Refuse to train a model whose name an imported method holds in this results directory: its
    folds would join the import's under one row, part trained here, part masks from elsewhere."""
    for path, summary in _saved_summaries(results_dir):
        if summary.get("external") and summary.get("model") in models:
            raise ConfigError(
                f"{path.parent}: {summary['model']!r} is an imported method here; a model trained by "
                "nerve-bench needs another name or another --results-dir"
            )


def check_link_subjects(results_dir: Path, link_subjects: bool, links: list) -> None:
    """Refuse a results directory whose runs split this data with the other ``link_subjects``, when
    the data has linked subjects (``links``): their folds differ. Without links both splits are the
    same. Summaries from before the field split by plain subjects."""
    if not links:
        return
    for path, config in _saved_configs(results_dir):
        linked = bool(config.get("link_subjects", False))
        if "split_seed" in config and linked != link_subjects:
            pairs = ", ".join(f"{a}+{b}" for a, b, *_ in links)
            made = f"with link_subjects {str(linked).lower()}"
            if "link_subjects" not in config:
                made = "before link_subjects (split by plain subjects)"
            raise ConfigError(
                f"{path.parent}: made {made}, but this benchmark uses link_subjects "
                f"{str(link_subjects).lower()} and this data has linked subjects ({pairs}), so the folds "
                "differ; one results directory holds one fold assignment (use another --results-dir)"
            )


def saved_links(results_dir: Path) -> list[tuple[int, int, int, int]]:
    """The linked subjects of the data that the results directory's runs were split on, as their
    summaries record them (found whatever their ``link_subjects``): what the dry run, which decodes
    no data, checks ``link_subjects`` against."""
    for _, summary in _saved_summaries(results_dir):
        records = (summary.get("split") or {}).get("linked_subjects")
        if records is not None:
            return [(*r["subjects"], *r["matching_frames"]) for r in records]
    return []


def _saved_configs(results_dir: Path) -> list[tuple[Path, dict]]:
    return [(path, summary.get("config") or {}) for path, summary in _saved_summaries(results_dir)]


def _saved_summaries(results_dir: Path) -> list[tuple[Path, dict]]:
    """(path, summary) of every readable run; unreadable or older summaries are reported by
    `report`, not here."""
    found = []
    for path in sorted((results_dir / "runs").glob("*/summary.json")):
        try:
            found.append((path, read_summary(path)))
        except DataError:
            continue
    return found

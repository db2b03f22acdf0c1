"""`run` command: the benchmark grid (models x folds x seeds), then the leaderboard and plots."""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmark.commands import add_set_option

if TYPE_CHECKING:
    from benchmark.core.config import BenchmarkConfig, TrainConfig

EXIT_INCOMPLETE = 3  # runs held by other processes are missing from the leaderboard (README "Exit codes")
HELP = "run the benchmark grid and rebuild the leaderboard (skips finished runs, resumes interrupted ones)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from benchmark.core.config import BenchmarkConfig, TrainConfig
    from benchmark.core.config_text import help_table

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "benchmark fields (top level of the YAML, or --set KEY=VALUE; type, default):\n"
        f"{help_table(BenchmarkConfig)}\n\n"
        f"TrainConfig fields (the YAML's train: section, or --set KEY=VALUE):\n{help_table(TrainConfig)}"
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="benchmark YAML (default: the package's configs/default.yaml)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="Kaggle layout (train/); the config's synthetic fallback runs only when this is not given "
        "or is the README's absent default data/ultrasound-nerve-segmentation",
    )
    parser.add_argument("--results-dir", type=Path, default=Path("results"))
    parser.add_argument("--models", help="comma-separated subset/override of the config's models")
    parser.add_argument("--folds", help="comma-separated fold ids, e.g. 0,1")
    parser.add_argument("--seeds", help="comma-separated seeds")
    add_set_option(
        parser,
        "override a config field, e.g. --set lr=3e-4 --set executor=ray (repeatable; keys listed below); "
        "one model's entry: --set model_kwargs.unet='{base_width: 16}', --set model_train.unet='{lr: 0.003}'",
    )
    _add_execution_options(parser)
    parser.add_argument("--dry-run", action="store_true", help="list the grid and exit")
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config (base:, --set, --models/--folds/--seeds applied) as YAML and exit",
    )
    parser.add_argument("--no-report", action="store_true", help="skip rebuilding the leaderboard")
    parser.add_argument(
        "--min-free-gb",
        type=_gigabytes,
        default=None,
        help="refuse to start with less free space in --results-dir (default $NERVE_BENCH_MIN_FREE_GB, else "
        "1 and the room the runs left need: best.ckpt, summary, overlays, a resume checkpoint)",
    )


def _gigabytes(text: str) -> float:
    """``--min-free-gb``: a number of GB >= 0, read as ``$NERVE_BENCH_MIN_FREE_GB`` is."""
    from benchmark.core.preflight import gigabytes

    value = gigabytes(text)
    if value is None:
        raise argparse.ArgumentTypeError(f"expected a number of GB >= 0, got {text!r}")
    return value


def _add_execution_options(parser: argparse.ArgumentParser) -> None:
    """Where the runs execute; flags that win over the config's fields of the same name."""
    parser.add_argument(
        "--executor",
        choices=("local", "ray"),
        default=None,
        help="local: one run after another (the config's default); ray: each run a Ray task, as many at once "
        "as gpus_per_run/cpus_per_run allow (local, saying why, without Ray or for DDP runs)",
    )
    parser.add_argument(
        "--ray-address",
        default=None,
        help="join this Ray cluster (default: the config's ray_address, else $RAY_ADDRESS, else start a "
        "local Ray with this machine's CPUs and GPUs)",
    )


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``--set`` pairs, then the ``--executor`` / ``--ray-address`` flags (which win)."""
    from benchmark.core.overrides import parse_set_args

    flags = {"executor": args.executor, "ray_address": args.ray_address}
    return {**parse_set_args(args.overrides), **{k: v for k, v in flags.items() if v is not None}}


def _configured(args: argparse.Namespace) -> BenchmarkConfig:
    """The benchmark this command runs, as ``--print-config`` prints it: the config, ``--set``; where no
    data is given, the synthetic section over it and ``--set`` again (it is the last word); then
    ``--models``/``--folds``/``--seeds``, refused as the config's own lists would be (empty, repeats)."""
    from benchmark import fallback, grid_configs
    from benchmark.core.config import ConfigError, load_benchmark_config
    from benchmark.core.overrides import apply_benchmark_overrides

    bench = apply_benchmark_overrides(load_benchmark_config(args.config), _overrides(args))
    # --print-config of a config with no fallback shows the config itself; a run says it needs data
    if fallback.uses_synthetic(args.data_dir) and (bench.synthetic or not args.print_config):
        bench = fallback.synthetic_benchmark(bench, str(args.config))
        bench = apply_benchmark_overrides(bench, _overrides(args))
    picked = {
        "models": grid_configs.parse_list(args.models),
        "folds": grid_configs.parse_list(args.folds, int),
        "seeds": grid_configs.parse_list(args.seeds, int),
    }
    try:
        return dataclasses.replace(bench, **{k: tuple(v) for k, v in picked.items() if v is not None})
    except ConfigError as exc:
        raise ConfigError(f"--models/--folds/--seeds: {exc}") from None


def _load(args: argparse.Namespace) -> tuple[BenchmarkConfig, Path, list[TrainConfig], dict[str, int]]:
    from benchmark import fallback, grid_configs
    from benchmark.core.model_kwargs import build_models

    bench = _configured(args)
    # Writes nothing: the synthetic fallback is generated by `run` after the results-dir checks.
    data_dir = fallback.resolve_data(bench, args.data_dir, args.results_dir, False, str(args.config))[1]
    grid = grid_configs.build_grid(bench)
    if bench.train.wandb_group is None and any(c.logger == "wandb" for c in grid):
        group = wandb_group(grid)  # the benchmark's: its runs in one group, whichever command trained them
        bench = dataclasses.replace(bench, train=dataclasses.replace(bench.train, wandb_group=group))
        grid = grid_configs.build_grid(bench)
    # a misspelt model or keyword, or a value the model refuses (base_width: -8), fails here, not in
    # run 14 of 45: each architecture is built once, on meta
    sizes = build_models(grid)
    return bench, data_dir, grid, sizes


def wandb_group(grid: list[TrainConfig]) -> str:
    """``benchmark-<hash>``: the board's benchmark config hash. A group per invocation split one
    benchmark over several (a resumed run logged on in a new W&B run of another group), and the
    jobs that share out one grid (``--models``) each made their own."""
    from benchmark.reporting.leaderboard import benchmark_hash
    from benchmark.reporting.tracking import benchmark_group

    return benchmark_group(benchmark_hash({"config": grid[0].to_dict(), **grid[0].box_recipe()}))


def _print_config(args: argparse.Namespace) -> int:
    """The benchmark as this command would run it, as YAML that ``--config`` reads back; writes nothing."""
    from benchmark import fallback, grid_configs
    from benchmark.core.config_text import to_yaml
    from benchmark.core.model_kwargs import check_model_kwargs

    bench = _configured(args)
    check_model_kwargs(grid_configs.build_grid(bench))
    header = f"# {args.config} resolved (base:, --set and flags applied); usable as --config"
    if fallback.uses_synthetic(args.data_dir) and bench.synthetic:
        header += "\n# no --data-dir: the synthetic fallback's recipe, as it runs without one"
    elif fallback.uses_synthetic(args.data_dir):
        header += "\n# no --data-dir, and this config has no synthetic: fallback: run needs --data-dir"
    print(f"{header}\n{to_yaml(bench)}", end="")
    return 0


def _executor(
    bench: BenchmarkConfig, grid: list[TrainConfig], to_train: list[TrainConfig], dry_run: bool
) -> str:
    """The executor of ``grid`` and its checks of this machine (Ray checks its cluster itself): why
    Ray is not used, a GPU run without a GPU, a GPU recipe that the runs left to train would train
    on the CPU (refused; a dry run, which lists a GPU grid on a GPU-less login node too, warns)."""
    from benchmark import grid_checks, grid_left, ray_grid, runner
    from benchmark.core.config import ConfigError

    grid_checks.check_logger(grid)
    executor, why = ray_grid.choose(bench, grid)
    if why:
        runner.say(why)
    if executor != "local":
        if dry_run and grid_left.local_ray_lacks_gpu(bench, to_train):
            runner.say(
                "warning: run without --dry-run refuses this on this machine (exit 2): its Ray would start "
                "here, where no GPU is visible, for runs that ask for one; run on a GPU box, or give "
                "RAY_ADDRESS (ray_address) of a cluster with GPUs"
            )
        return executor
    if not dry_run:
        grid_checks.check_accelerator(grid)
        grid_checks.check_launcher(grid)
    slow = grid_checks.gpu_recipe_on_cpu(to_train)
    if slow and not dry_run:
        raise ConfigError(slow)
    if slow:  # a GPU-less login node lists a GPU grid, but says what the run would do here
        runner.say(f"warning: run without --dry-run refuses this on this machine (exit 2): {slow}")
    return executor


def run(args: argparse.Namespace) -> int:
    from benchmark import fallback, grid_checks, grid_left, ray_grid, runner
    from benchmark.core.preflight import removed_if_refused
    from benchmark.core.ranks import global_rank
    from benchmark.external.board_config import DEFAULT_CONFIG

    args.config = args.config or DEFAULT_CONFIG  # the package's, from any working directory

    if args.print_config:
        return _print_config(args)
    bench, data_dir, grid, sizes = _load(args)
    left = grid_left.left_of(grid, args.results_dir)
    executor = _executor(bench, grid, left.to_train(), args.dry_run)
    local = executor == "local"
    if args.dry_run:
        return grid_left.dry_run(
            bench, grid, left, args.results_dir, sizes, executor, data_dir, args.min_free_gb
        )
    start = time.perf_counter()
    with removed_if_refused(args.results_dir):  # a refused grid leaves no empty results directory
        # Before any data generation or training; the Ray executor checks again once it knows how
        # many runs its cluster trains at a time.
        room = grid_left.room_check(grid, left, args.results_dir, args.min_free_gb, sizes)
        grid_checks.check_joins_board(args.results_dir, grid)
        if fallback.uses_synthetic(args.data_dir):
            data_dir = fallback.ensure_synthetic(bench, data_dir)
        data_hash, train = _check_data(grid, data_dir, args.results_dir)
        if local:
            train = None  # the runs map the node's cache: the driver keeps no copy for the whole grid
        outcomes = ray_grid.execute(
            bench, grid, executor, data_dir, args.results_dir, data_hash, train_set=train, room=room
        )
    runner.say(done_line(outcomes, time.perf_counter() - start))
    # Before the board: a held run that another process finishes while the board is built would
    # be missing from the board this command printed, yet not from the exit status.
    missing = runner.missing_runs(grid, outcomes, args.results_dir)
    board = 0
    if not args.no_report and global_rank() == 0:
        board = _report(bench, args.results_dir, missing, [c.run_name() for c in grid])
    codes = (_exit_status(outcomes, missing, args.results_dir), board)
    return 1 if 1 in codes else max(codes)


def done_line(outcomes: list, seconds: float) -> str:
    """The grid's last line: how many runs were trained, scored again, skipped and held."""
    from benchmark import runner

    counts = {s: sum(o.status == s for o in outcomes) for s in ("trained", "skipped", "held")}
    again = sum(o.scored_again for o in outcomes)
    return (
        f"grid done in {runner.clock(seconds)}: {counts['trained'] - again} trained, "
        + (f"{again} scored again, " if again else "")
        + f"{counts['skipped']} skipped, {counts['held']} held by another process"
    )


def _check_data(grid: list[TrainConfig], data_dir: Path, results_dir: Path) -> tuple[str, Any]:
    """Validate every file and every run's split up front (one clear error, not 45 failed runs);
    the data's content hash and the training set. It is decoded into the node's cache, which every
    run then maps: the grid decodes the data once, not once here and again for the runs. A warm
    cache entry is trusted as it was validated: it is keyed on every file's path, size and
    modification time, so an edit that keeps all three (``rsync -t`` of a same-size file) is not
    seen."""
    from benchmark import grid_checks
    from datamodules.decoded_cache import load_train_shared
    from datamodules.kaggle import content_hash

    train = load_train_shared(data_dir)  # validated as it is decoded; a cached copy was validated then
    grid_checks.check_train_set(grid, data_dir, results_dir, train)
    return content_hash(train), train  # the test images play no part in a grid: not read here


def _exit_status(outcomes: list, missing: list[str], results_dir: Path) -> int:
    """1 when a run failed, 3 when runs held by other processes are still missing, else 0."""
    from benchmark import runner

    failed = [o for o in outcomes if o.status == "failed"]
    for o in failed:
        runner.say(f"FAILED {o.run}: {o.error}")
    if failed:
        where = results_dir / "runs" / "<run>" / "error.txt"
        runner.say(f"{len(failed)} of {len(outcomes)} runs failed (details in {where})")
    if missing:
        shown = "; ".join(missing[:5]) + (f"; and {len(missing) - 5} more" if len(missing) > 5 else "")
        runner.say(
            f"incomplete: {len(missing)} run(s) missing from the leaderboard, skipped because another "
            f"process held them: {shown}. Re-run the same command to complete them (it trains only what "
            "is missing)"
        )
    return 1 if failed else EXIT_INCOMPLETE if missing else 0


def _report(bench: BenchmarkConfig, results_dir: Path, missing: list[str], own: list[str]) -> int:
    """The board's part of the exit status: 0 when rebuilt whole; 1 when it left out runs whose summary
    is damaged (a re-run skips them as complete: exit 3 would loop) or none was written (a full disk,
    summaries of another schema version), unless runs held by other processes are ``missing`` (no
    board yet: the 3 of those says it)."""
    from benchmark.reporting.report import build_report, left_out_line
    from benchmark.reporting.tables import console
    from benchmark.reporting.tracking import log_leaderboard
    from datamodules.errors import DataError

    try:
        board = build_report(results_dir, own_runs=own)  # the board of this grid's benchmark
    except DataError as exc:
        print(f"no leaderboard: {exc}")
        return 0 if missing else 1
    except OSError as exc:  # a full disk or a read-only directory while writing the report
        print(f"no leaderboard: {exc.filename or results_dir}: {exc.strerror or exc}")
        return 1
    print(console(board))
    print(f"leaderboard: {results_dir / 'leaderboard.md'} (plots in {results_dir / 'plots'})")
    try:
        log_leaderboard(board, bench.train, results_dir, results_dir / "plots" / "leaderboard.png")
    except Exception as exc:  # noqa: BLE001 - tracking is optional
        print(f"warning: W&B leaderboard upload failed: {exc}")
    left_out = left_out_line(board)
    if left_out:
        print(left_out)
    return 1 if left_out else 0

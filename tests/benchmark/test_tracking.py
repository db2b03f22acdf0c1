"""Tracking: logger selection, W&B mode/id rules, and offline W&B run files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from benchmark.core.config import TrainConfig
from benchmark.reporting import tracking
from benchmark.training import logger as run_logger
from tests.benchmark.summaries import make_summary


def test_mode_follows_env_and_api_key(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert run_logger.wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert run_logger.wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert run_logger.wandb_mode() == "disabled"


def test_wandb_is_made_offline_and_quiet_before_it_is_imported(monkeypatch):
    """The offline mode passed to wandb.init did not reach wandb's process-wide telemetry, which then
    looked up its host: the mode goes to the environment, before the import."""
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_ERROR_REPORTING"):
        monkeypatch.delenv(var, raising=False)
    run_logger.wandb_env()
    assert os.environ["WANDB_MODE"] == "offline" and os.environ["WANDB_ERROR_REPORTING"] == "false"
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "true")
    run_logger.wandb_env()  # a key: online is the user's choice, and so is error reporting
    assert "WANDB_MODE" not in os.environ and os.environ["WANDB_ERROR_REPORTING"] == "true"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    run_logger.wandb_env()
    assert os.environ["WANDB_MODE"] == "disabled"


def test_run_id_is_deterministic_short_and_group_specific():
    name = TrainConfig(model="smp:unet:tu-resnet18").run_name()
    a, b = run_logger.wandb_run_id(name, "g1"), run_logger.wandb_run_id(name, "g2")
    assert a == run_logger.wandb_run_id(name, "g1") and a != b and len(a) <= 64
    assert not set(a) & set("/\\#?%:")
    assert a == f"smp-unet-tu-resnet18-f0-s0-{name.rsplit('__', 1)[1]}-{a[-8:]}"  # as before: runs re-attach
    # a plugin's name with W&B's forbidden :;,#?/' made every run of it fail
    odd = run_logger.wandb_run_id(TrainConfig(model="odd|net,'v2';#?x").run_name(), "g1")
    assert set(odd) <= set("abcdefghijklmnopqrstuvwxyz0123456789._-") and odd.startswith("odd-net--v2---")
    # a long name kept its first 64 characters: the tag went, then the config hash and the fold
    ids = [run_logger.wandb_run_id(TrainConfig(model="m" * 70, fold=f).run_name(), "g1") for f in (0, 1)]
    assert ids[0] != ids[1] and all(len(i) == 64 for i in ids)


def test_every_job_of_one_benchmark_logs_to_one_wandb_group(monkeypatch, tmp_path, synthetic_dir):
    """`run` named the group by the clock: a resumed run logged on in a new W&B run of a new group,
    and jobs sharing out one grid (--models) each made their own. It is the board's config hash."""
    from benchmark import grid_left
    from benchmark.cli import main
    from benchmark.reporting.leaderboard import benchmark_hash

    grids = []
    monkeypatch.setattr(grid_left, "dry_run", lambda bench, grid, *a: grids.append(grid) or 0)
    smoke = str(Path(tracking.__file__).parents[1] / "configs" / "smoke.yaml")
    argv = ["run", "--config", smoke, "--data-dir", str(synthetic_dir), "--results-dir", str(tmp_path)]
    argv += ["--set", "logger=wandb", "--dry-run"]
    for extra in (["--models", "unet"], ["--models", "sk_unet,empty"], ["--set", "lr=0.01"], []):
        assert main([*argv, *extra]) == 0
    groups = [{c.wandb_group for c in grid} for grid in grids]
    board = benchmark_hash({"config": grids[0][0].to_dict()})
    assert groups[0] == groups[1] == groups[3] == {f"benchmark-{board}"} and groups[2] != groups[0]
    assert main([*argv, "--set", "wandb_group=mine"]) == 0 and {c.wandb_group for c in grids[-1]} == {"mine"}


def test_none_and_csv_loggers(tmp_path):
    assert run_logger.lightning_logger(TrainConfig(logger="none"), "r", tmp_path) is None
    csv = run_logger.lightning_logger(TrainConfig(logger="csv"), "r", tmp_path)
    csv.log_metrics({"loss": 1.0}, step=0)
    csv.save()
    assert (tmp_path / "csv" / "metrics.csv").is_file()
    # A resumed run logs beside the killed attempt's file instead of deleting it (Lightning would).
    again = run_logger.lightning_logger(TrainConfig(logger="csv"), "r", tmp_path)
    again.log_metrics({"loss": 0.5}, step=1)
    again.save()
    first, second = ((tmp_path / d / "metrics.csv").read_text().splitlines() for d in ("csv", "csv-2"))
    assert first == ["loss,step", "1.0,0"] and second == ["loss,step", "0.5,1"]
    # An attempt killed before its first metrics left only hparams.yaml: not reused either, so
    # Lightning has nothing to warn about deleting.
    (tmp_path / "csv-3").mkdir()
    (tmp_path / "csv-3" / "hparams.yaml").write_text("{}\n")
    assert run_logger.lightning_logger(TrainConfig(logger="csv"), "r", tmp_path).version == "csv-4"


@pytest.mark.slow
def test_wandb_offline_run_files(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    cfg = TrainConfig(logger="wandb", wandb_group="test-group", image_size=64)
    run_dir = tmp_path / "run"
    logger = run_logger.lightning_logger(cfg, cfg.run_name(), run_dir)
    logger.log_metrics({"train_loss": 0.5}, step=0)  # starts the W&B run, as training would
    summary = make_summary("unet", 0, 0, [0.5, 1.0])
    summary.update(run=cfg.run_name(), config=cfg.to_dict())
    masks = np.zeros((2, 8, 10), np.uint8)
    masks[0, 2:5, 3:6] = 1
    stems = np.array(["1_1", "1_2"])
    np.savez(run_dir / "overlays.npz", stem=stems, image=masks * 200, truth=masks, pred=masks)
    tracking.log_run_summary(summary, run_dir)  # re-attaches to the open run and closes it
    board = {"header": {"n_runs": 1}, "rows": [], "runs": [], "ignored_runs": []}
    tracking.log_leaderboard(board, cfg, tmp_path / "group")
    train_runs = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert (
        len(train_runs) == 1 and run_logger.wandb_run_id(cfg.run_name(), "test-group") in train_runs[0].name
    )
    assert list((run_dir / "wandb").glob("offline-run-*/files/media/images/**/*.png"))
    assert list((tmp_path / "group" / "wandb").glob("offline-run-*/run-*.wandb"))


def test_the_wandb_table_is_typed_and_carries_the_report_id():
    """Every cell was text ('0.500000'), so W&B could neither sort nor plot a Dice column, and the
    CSV's report_id was missing."""
    from benchmark.reporting import leaderboard as lb
    from tests.benchmark.summaries import empty_runs, model_runs

    board = {**lb.build(model_runs("unet", {0: [0.5, 1.0] * 4}) + empty_runs()), "report_id": "r1"}
    columns, rows = tracking.leaderboard_table(board)
    top = dict(zip(columns, rows[0]))
    assert (top["rank"], top["model"], top["baseline"], top["report_id"]) == (1, "unet", False, "r1")
    assert isinstance(top["kaggle_dice_mean"], float) and top["p_vs_top"] is None
    assert {type(row[columns.index("n_runs")]) for row in rows} == {int}
    assert tracking.leaderboard_table({**board, "report_id": None})[1][0][-1] == ""
    assert tracking._typed_column(["0.5", "untested", "n/a"]) == ["0.5", "untested", None]  # one type


def test_the_module_hands_its_config_to_no_logger():
    """W&B showed every field twice: flat from the logger's config, and again under `config` from
    the module's hyper-parameters. The checkpoint keeps them."""
    from benchmark.training.module import SegModule

    module = SegModule(TrainConfig(image_size=64).to_dict())
    assert module.hparams["config"]["image_size"] == 64 and not module._log_hyperparams


def test_a_runs_wandb_summary_names_what_its_scores_rest_on():
    """W&B kept the last epoch's val/kaggle_dice, not the selected epoch's, and had neither the
    selected epoch, the tuned post-processing, the data's hash nor the code's sha."""
    summary = make_summary("unet", 0, 0, [0.5, 1.0])
    summary["postprocess"] = {"threshold": 0.4, "min_area": 10}
    got = tracking._selected(summary)
    assert got["selection/best_epoch"] == 1 and got["selection/kaggle_dice"] == 0.9
    assert (got["selection/postprocess/threshold"], got["selection/postprocess/min_area"]) == (0.4, 10)
    assert (got["data/content_hash"], got["code/git_sha"]) == ("c0ffee", "abc123")


def test_a_resumed_run_logs_on_in_its_wandb_run_and_a_fresh_start_does_not_resume(tmp_path, monkeypatch):
    """With the benchmark's group the id of a run is the same in every command that trains it: a
    resume from last.ckpt continues that W&B run, a start from scratch logs under the id without
    resuming it (W&B documents that as overwriting; not checked online)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = TrainConfig(logger="wandb", wandb_group="benchmark-abc")
    fresh = run_logger.lightning_logger(cfg, "r", tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    resumed = run_logger.lightning_logger(cfg, "r", tmp_path)
    assert (fresh._wandb_init["resume"], resumed._wandb_init["resume"]) == (None, "allow")
    assert (
        fresh._wandb_init["id"] == resumed._wandb_init["id"] == run_logger.wandb_run_id("r", "benchmark-abc")
    )


def test_report_logs_the_board_in_the_group_run_gave_its_runs(tmp_path, monkeypatch, capsys, fit_runs):
    """`report` never updated W&B, so a board that `import` or `nnunet` had added rows to stayed off
    it; `report --wandb` logs it in the group `run` named by the same benchmark hash."""
    import shutil

    from benchmark.cli import main
    from benchmark.commands.run import wandb_group
    from benchmark.reporting.leaderboard import benchmark_hash
    from tests.benchmark.fitting import UNET

    # a run's group (from its config, as run builds it) is its summary's benchmark hash (the board's)
    assert wandb_group([UNET]) == f"benchmark-{benchmark_hash(fit_runs.unet)}"
    example = Path(tracking.__file__).parents[2] / "results" / "example"
    shutil.copytree(example / "runs", tmp_path / "runs")
    logged = []
    monkeypatch.setattr(tracking, "log_leaderboard", lambda board, cfg, *a: logged.append((board, cfg)))
    assert main(["report", "--results", str(tmp_path), "--no-plots"]) == 0 and not logged
    assert main(["report", "--results", str(tmp_path), "--no-plots", "--wandb"]) == 0
    ((board, cfg),) = logged
    assert cfg.logger == "wandb" and cfg.wandb_group == f"benchmark-{board['header']['benchmark_hash'][0]}"
    assert f"W&B: the board logged in group {cfg.wandb_group}" in capsys.readouterr().out

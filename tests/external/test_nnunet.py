"""`benchmark nnunet`: the missing extra is one line; a tiny end-to-end nnU-Net run (its own planning,
training for a few iterations, prediction; --device cpu) lands a ranked, external `nnunet_2d` row."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from benchmark.cli import main
from models.registry import ModelError
from tests.external.helpers import two_fold_config

HAS_NNUNET = importlib.util.find_spec("nnunetv2") is not None


def test_missing_extra_is_one_line(synthetic_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "nnunetv2", None)  # import nnunetv2 now raises ImportError
    monkeypatch.setitem(
        sys.modules, "nnunetv2.experiment_planning.experiment_planners.network_topology", None
    )
    args = [
        "nnunet",
        "--data-dir",
        str(synthetic_dir),
        "--results-dir",
        str(tmp_path / "r"),
        "--device",
        "cpu",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    hint = "`pip install -e .[nnunet]` or `make install` (see README, nnU-Net)"
    assert err == f"error: nnU-Net is not installed: {hint}\n"
    assert not (tmp_path / "r").exists()
    import models

    # Where the extra is absent altogether (the GPU image), the network library is the first one missed.
    missing = r"(nnunetv2|dynamic_network_architectures)"
    with pytest.raises(
        ModelError,
        match=missing + r" is not installed: install the nnU-Net extra: `pip install -e \.\[nnunet\]`",
    ):
        models.create("nnunet_plain")


@pytest.mark.skipif(not HAS_NNUNET, reason="the nnunet extra is not installed")
def test_the_default_cuda_device_without_a_gpu_is_one_line_before_any_work(
    synthetic_dir: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """It converted, fingerprinted, planned and preprocessed (minutes) before nnU-Net's CUDA assert."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = ["nnunet", "--data-dir", str(synthetic_dir), "--results-dir", str(tmp_path / "r")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --device cuda, but no CUDA GPU is visible (torch ") and err.count("\n") == 1
    assert err.endswith("; use --device cpu\n") and not (tmp_path / "r").exists()
    for flag in ("--folds", "--seeds"):  # "" trained every fold, where run refuses it
        assert main([*args, "--device", "cpu", flag, ""]) == 2 and not (tmp_path / "r").exists()
        assert f"error: {flag}: no value given" in capsys.readouterr().err


def test_iterations_per_epoch_reach_nnunet_and_a_bad_count_is_one_line(tmp_path: Path, monkeypatch, capsys):
    """A CPU try-out could not lower nnU-Net's 250 iterations an epoch (over 8 minutes an epoch here)."""
    from benchmark.external import nnunet

    seen = []
    monkeypatch.setattr(nnunet, "run_nnunet", lambda *a, **k: seen.append(a[2]) or [])
    args = ["nnunet", "--data-dir", str(tmp_path), "--results-dir", str(tmp_path / "r"), "--device", "cpu"]
    assert main([*args, "--epochs", "1", "--iterations-per-epoch", "12"]) == 0
    assert (seen[0].epochs, seen[0].iterations_per_epoch, seen[0].val_iterations) == (1, 12, 2)
    assert "1 epochs x 12 iterations (budgeted)" in nnunet.provenance(seen[0], "2.8.1")
    assert main(args) == 0 and (seen[1].iterations_per_epoch, seen[1].val_iterations) == (None, None)
    assert "1000 epochs x 250 iterations (nnU-Net's default)" in nnunet.provenance(seen[1], "2.8.1")
    capsys.readouterr()
    assert main([*args, "--iterations-per-epoch", "0"]) == 2 and len(seen) == 2
    assert capsys.readouterr().err == "error: --iterations-per-epoch 0: need 1 or more\n"
    for flag in ("--folds", "--seeds"):  # 0,0 started fold 0's training, its job listed twice
        assert main([*args, flag, "0,1,0"]) == 2 and len(seen) == 2
        assert capsys.readouterr().err == f"error: {flag} 0,1,0: a value is repeated; name each once\n"


TINY_PLANS = {
    "batch_size": 2,
    "patch_size": [128, 128],
    "architecture": {"arch_kwargs": {"features_per_stage": [4, 8, 16, 16, 16, 16, 16]}},
}


@pytest.mark.slow
@pytest.mark.skipif(not HAS_NNUNET, reason="the nnunet extra is not installed")
def test_tiny_nnunet_run_lands_a_ranked_row(tmp_path: Path) -> None:
    from benchmark.external.folds import folds_document
    from benchmark.external.nnunet import NnUNetSettings, run_nnunet
    from benchmark.external.nnunet_layout import DATASET
    from benchmark.reporting.report import build_report
    from benchmark.reporting.tables import markdown
    from datamodules.synth import generate

    data, results, config = tmp_path / "data", tmp_path / "results", two_fold_config(tmp_path)
    generate(data, subjects=4, per_subject=3, n_test=1, seed=0)
    # nnU-Net's own planner picks 448x640 patches; a few iterations of a tiny network keep this cheap.
    settings = NnUNetSettings(
        epochs=1,
        device="cpu",
        iterations_per_epoch=2,
        val_iterations=1,
        validate=False,
        mirroring=False,
        plans_2d=TINY_PLANS,
    )
    said: list[str] = []
    assert run_nnunet(data, results, settings, config=config, say=said.append) == [
        (0, 0, "imported"),
        (1, 0, "imported"),
    ]
    splits = json.loads(
        (results / "nnunet" / "nnUNet_preprocessed" / DATASET / "splits_final.json").read_text()
    )
    ours = folds_document(
        __import__("benchmark.external.board_config", fromlist=["x"]).train_config(config, None), data
    )
    assert splits == [{"train": f["train"], "val": f["inner"]} for f in ours["folds"]]  # never the outer fold
    board = build_report(results, plots=False)
    row = next(r for r in board["rows"] if r["model"] == "nnunet_2d")
    assert (
        row["complete"]
        and row["rank"] >= 1
        and row["external"].startswith("nnU-Net v2.8.1 through its own code")
    )
    assert "1 epochs x 2 iterations (budgeted)" in row["external"] and row["cost"]["params"] > 0
    assert said[-1] == _fold_lines(results)  # as `import` says it: the nnunet command printed no score
    assert row["cost"]["latency_ms"] is None and "nnunet_2d (external)" in markdown(board)
    # A second call finds both folds imported and starts no nnU-Net process.
    assert run_nnunet(data, results, settings, config=config, say=lambda _: None) == [
        (0, 0, "skipped"),
        (1, 0, "skipped"),
    ]


def _fold_lines(results: Path) -> str:
    """The line naming each imported fold's outer-fold Kaggle Dice, from the summaries (fold 0 first)."""
    runs = sorted((results / "runs").glob("nnunet_2d__*/summary.json"))
    dice = [json.loads(p.read_text())["metrics"]["post"]["kaggle_dice"] for p in runs]
    return "; ".join(f"fold {k}: imported, outer-fold Kaggle Dice {d:.4f}" for k, d in enumerate(dice))


@pytest.mark.skipif(not HAS_NNUNET, reason="nnU-Net not installed (pip install -e .[nnunet])")
def test_a_gpu_fold_trains_with_the_cudnn_flags_nnunetv2_train_sets(tmp_path: Path, monkeypatch) -> None:
    """nnUNetv2_train turns cuDNN's autotuner on (and determinism off) before run_training; the child
    calls run_training itself, so it must too, or only folds after the first prediction (whose
    predictor sets it) would train with it."""
    import nnunetv2.run.run_training as nnunet_run
    import torch

    from benchmark.external import nnunet_steps

    seen = {}

    class Trainer:
        output_folder = str(tmp_path)

        def run_training(self) -> None:
            seen.update(benchmark=torch.backends.cudnn.benchmark, det=torch.backends.cudnn.deterministic)

    for flag in ("benchmark", "deterministic", "allow_tf32"):  # restored after the test
        monkeypatch.setattr(torch.backends.cudnn, flag, getattr(torch.backends.cudnn, flag))
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    monkeypatch.setattr(nnunet_steps, "_trainer", lambda job, device: Trainer())
    monkeypatch.setattr(nnunet_steps, "_facts", lambda trainer: {})
    monkeypatch.setattr(nnunet_steps, "predict", lambda job, device: None)
    monkeypatch.setattr(nnunet_run, "maybe_load_checkpoint", lambda *a, **k: None)
    job = {"folds": [{"fold": 0, "seed": 0, "device": "cuda", "validate": False}]}
    assert nnunet_steps.main([json.dumps(job)]) == 0
    assert seen == {"benchmark": True, "det": False}


def test_a_torn_fold_record_trains_the_fold_again_and_a_torn_plan_record_is_one_line(tmp_path: Path) -> None:
    """The fold record (facts) is what makes a fold count as trained, the plan record what makes a
    planning count as done. Both are written atomically; one found torn or edited anyway means
    "train that fold again" (nnU-Net resumes from its checkpoint and rewrites the record) or one line
    naming the file, never a traceback."""
    from types import SimpleNamespace

    from benchmark.external import nnunet
    from benchmark.external.nnunet_steps import FACTS
    from datamodules.errors import DataError

    layout = SimpleNamespace(fold_dir=lambda plans, seed, fold: tmp_path, preprocessed=tmp_path)
    settings = SimpleNamespace(plans="p", planner="default", plans_2d=None)
    assert nnunet._facts(layout, settings, 0, 0) is None  # absent
    (tmp_path / FACTS).write_text('{"params": 12, "train_img_s"')  # torn mid-write
    assert nnunet._facts(layout, settings, 0, 0) is None
    (tmp_path / FACTS).write_text('{"params": 12}')  # edited: a field gone
    assert nnunet._facts(layout, settings, 0, 0) is None
    (tmp_path / FACTS).write_text('{"params": 12, "train_img_s": 3.0}')  # the cost kept, the rest gone
    assert nnunet._facts(layout, settings, 0, 0) is None
    facts = {"params": 12, "train_img_s": 3.0, "train_time_s": 4.0, "epochs_run": 1}
    (tmp_path / FACTS).write_text(json.dumps(facts))
    assert nnunet._facts(layout, settings, 0, 0)["cost"] == {"params": 12, "train_img_s": 3.0}
    (tmp_path / "p.nerve_bench.json").write_text('{"planner": ')
    with pytest.raises(DataError, match="p.nerve_bench.json.*unreadable plan record; delete it"):
        nnunet._plan_job(layout, settings)


def test_a_fold_begun_under_another_recipe_is_refused_not_relabelled(tmp_path: Path) -> None:
    """Folds 0,1 at 1 epoch, killed after fold 0: a rerun at 3 epochs imported fold 0's 1-epoch masks
    under the 3-epoch label (nnU-Net resumes from its checkpoint_final and skips existing masks)."""
    from types import SimpleNamespace

    from benchmark.external import nnunet
    from benchmark.external.nnunet_steps import FACTS
    from datamodules.errors import DataError

    fold = tmp_path / "fold"
    layout = SimpleNamespace(
        fold_dir=lambda plans, seed, k: fold, predictions=lambda plans, seed, k: tmp_path
    )
    one, three = nnunet.NnUNetSettings(epochs=1), nnunet.NnUNetSettings(epochs=3)
    nnunet._begin_fold(layout, one, 0, 0)
    (fold / "checkpoint_final.pth").write_text("x")
    nnunet._begin_fold(layout, one, 0, 0)  # the same recipe: resumed, nothing touched
    with pytest.raises(
        DataError, match=r"fold: begun with nnU-Net settings .*\"epochs\": 1.*, not .*\"epochs\": 3"
    ):
        nnunet._begin_fold(layout, three, 0, 0)
    assert (fold / "checkpoint_final.pth").is_file()  # hours of training are never deleted
    # a fold of an older nerve-bench (no record): its own training record decides
    (fold / nnunet.RECIPE).unlink()
    facts = {"params": 1, "train_img_s": 1.0, "train_time_s": 1.0, "epochs_run": 1}
    (fold / FACTS).write_text(json.dumps(facts))
    with pytest.raises(DataError, match="fold: trained for 1 epochs, not 3; use another --results-dir"):
        nnunet._begin_fold(layout, three, 0, 0)
    nnunet._begin_fold(layout, one, 0, 0)  # adopted: its record is written
    assert json.loads((fold / nnunet.RECIPE).read_text())["epochs"] == 1


def test_a_row_is_one_recipe_across_its_folds(tmp_path: Path) -> None:
    """Folds spread over machines with other --epochs each passed their own fold's check and made one
    ranked row of three training budgets (a review)."""
    from types import SimpleNamespace

    from benchmark.core.summary import write_summary
    from benchmark.external import nnunet
    from datamodules.errors import DataError
    from tests.benchmark.summaries import make_summary

    one, two = nnunet.NnUNetSettings(epochs=1), nnunet.NnUNetSettings(epochs=2)
    cfg = SimpleNamespace(n_folds=3, holdout_fraction=None)
    board = SimpleNamespace(results_dir=tmp_path, cfg=cfg)
    layout = SimpleNamespace(fold_dir=lambda plans, seed, k: tmp_path / "nnunet" / f"fold_{k}")
    nnunet._check_row_recipe(board, layout, one)  # nothing there yet
    summary = {**make_summary(one.row, 1, 0, [0.5, 1.0]), "external": {"recipe": one.recipe()}}
    write_summary(tmp_path / "runs" / summary["run"], summary)
    nnunet._check_row_recipe(board, layout, one)  # fold 1 imported with these settings: fine
    with pytest.raises(
        DataError, match=r"nnunet_2d fold 1 seed 0 was made with nnU-Net settings .*one row, one recipe"
    ):
        nnunet._check_row_recipe(board, layout, two)
    (tmp_path / "runs" / summary["run"] / "summary.json").unlink()
    nnunet._begin_fold(SimpleNamespace(fold_dir=layout.fold_dir), one, 0, 2)  # fold 2 under way elsewhere
    with pytest.raises(DataError, match=r"fold_2: begun with nnU-Net settings .*one row, one recipe"):
        nnunet._check_row_recipe(board, layout, two)


def test_a_second_process_waits_for_the_first_ones_conversion_and_planning(
    tmp_path: Path, monkeypatch
) -> None:
    """Two `nnunet --folds` on one results directory planned into one folder at once; one crashed."""
    import threading
    from types import SimpleNamespace

    from benchmark.core.lock import LOCK_NAME, claim
    from benchmark.external import nnunet

    monkeypatch.setattr(nnunet, "SETUP_POLL_S", 0.05)
    first = claim(tmp_path / "setup")  # the other process, converting or planning
    assert first is not None
    said: list[str] = []
    threading.Timer(0.5, first.release).start()
    with nnunet._setting_up(SimpleNamespace(work=tmp_path), said.append):
        held = tmp_path / "setup" / LOCK_NAME
        assert said == [f"waiting for the process holding {held} (converting the data or planning)"]
        assert claim(tmp_path / "setup") is None  # now this one holds it
    assert not (tmp_path / "setup" / LOCK_NAME).exists()

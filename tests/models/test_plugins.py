"""Model plugins: the example package installs, registers through its entry point and reaches a board;
broken plugins cost one warning line each and nothing else."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import models
from benchmark.cli import main
from models.registry import BUILTIN, ModelError
from tests.plugin_site import EXAMPLE_MODEL, EXAMPLE_PACKAGE, ROOT, activate, write_dist_info

SMOKE = ROOT / "benchmark" / "configs" / "smoke.yaml"


def test_example_plugin_registers_with_its_package(
    example_site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    builtin = models.list_models(BUILTIN)
    with activate(example_site, monkeypatch) as loaded:
        assert [(p.package, p.names) for p in loaded] == [(EXAMPLE_PACKAGE, (EXAMPLE_MODEL,))]
        assert models.list_models() == builtin + [EXAMPLE_MODEL]  # plugins after the built-in zoo
        info = models.get_info(EXAMPLE_MODEL)
        assert info.package == EXAMPLE_PACKAGE and "example plugin" in info.paper
        out = models.create(EXAMPLE_MODEL, presence_head=True, width=4)(torch.randn(2, 1, 32, 64))
        assert out["mask"].shape == (2, 1, 32, 64) and out["presence"].shape == (2, 1)
        # its check= runs before anything is built, the signature check too
        with pytest.raises(ModelError, match="tiny_unet: width must be a positive integer, got 0"):
            models.check_kwargs(EXAMPLE_MODEL, {"width": 0})
        with pytest.raises(ModelError, match=r"unknown argument\(s\) widht; did you mean 'width'"):
            models.create(EXAMPLE_MODEL, widht=4)
    assert EXAMPLE_MODEL not in models.list_models()


def test_models_command_names_each_models_package(
    example_site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the whole `models` command (every model's GFLOPs) runs in test_info; here the plugin's row
    from benchmark.commands.models import _table, describe_row

    with activate(example_site, monkeypatch):
        rows = [describe_row("unet"), describe_row(EXAMPLE_MODEL)]
    assert rows[1]["package"] == EXAMPLE_PACKAGE and rows[1]["params"] > 0
    lines = _table(rows).splitlines()
    assert "package" in lines[0].split()
    assert f" {BUILTIN} " in lines[1] and lines[2].split()[:1] == [EXAMPLE_MODEL]
    assert EXAMPLE_PACKAGE in lines[2].split()


@pytest.mark.slow
def test_example_plugin_runs_through_the_smoke_grid_onto_the_board(
    example_site: Path, synthetic_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # both outer folds of a 2-fold split: the model is complete and the out-of-fold board ranks it
    grid = ["--models", f"{EXAMPLE_MODEL},empty", "--set", "n_folds=2", "--folds", "0,1"]
    paths = ["--data-dir", str(synthetic_dir), "--results-dir", str(tmp_path)]
    with activate(example_site, monkeypatch):
        assert main(["run", "--config", str(SMOKE), *grid, *paths]) == 0
    board = json.loads((tmp_path / "leaderboard.json").read_text())
    assert not board["incomplete"]
    row = next(r for r in board["rows"] if r["model"] == EXAMPLE_MODEL)
    assert row["rank"] in (1, 2) and row["complete"]  # ranked beside the all-empty floor
    assert f"| {EXAMPLE_MODEL} |" in (tmp_path / "leaderboard.md").read_text()
    summary = json.loads(sorted((tmp_path / "runs").glob(f"{EXAMPLE_MODEL}__*/summary.json"))[0].read_text())
    assert summary["model"] == EXAMPLE_MODEL and 0.0 <= summary["metrics"]["post"]["kaggle_dice"] <= 1.0


def _broken_site(site: Path) -> None:
    """Four broken plugins: one does not import, one takes a built-in name, one's function raises, one
    exits while it is imported."""
    write_dist_info(site, "missing-plugin", "1.0", {"missing": "no_such_module_for_nerve_bench"})
    write_dist_info(site, "clash-plugin", "1.0", {"clash": "nb_clash_models"})
    (site / "nb_clash_models.py").write_text(
        "from torch import nn\nfrom models import register\n"
        "register('clash_ok')(lambda **kw: nn.Identity())\n"
        "register('unet')(lambda **kw: nn.Identity())\n"
    )
    write_dist_info(site, "raising-plugin", "1.0", {"boom": "nb_boom_models:register_all"})
    (site / "nb_boom_models.py").write_text("def register_all():\n    raise RuntimeError('no GPU found')\n")
    # A script-like module: its argparse error at import ended every command that loads the models.
    write_dist_info(site, "script-plugin", "1.0", {"script": "nb_script_models"})
    (site / "nb_script_models.py").write_text("import sys\nsys.exit(2)\n")


def test_broken_plugins_get_one_line_each_and_the_rest_loads(
    example_site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    site = tmp_path / "broken"
    _broken_site(site)
    builtin = models.list_models(BUILTIN)
    unet = models.get_info("unet")
    monkeypatch.syspath_prepend(str(example_site))  # a good plugin beside the broken ones
    with activate(site, monkeypatch) as loaded:
        assert [p.names for p in loaded] == [(EXAMPLE_MODEL,)]
        assert models.list_models() == builtin + [EXAMPLE_MODEL]
        assert models.get_info("unet") == unet  # the clash did not replace the built-in
        assert "clash_ok" not in models.list_models()  # and what it registered first was rolled back
        err = capsys.readouterr().err.splitlines()
    assert err == [
        "warning: model plugin 'clash' (clash-plugin) not loaded: ModelError: "
        "model name 'unet' is already registered (by nerve-bench)",
        "warning: model plugin 'missing' (missing-plugin) not loaded: ModuleNotFoundError: "
        "No module named 'no_such_module_for_nerve_bench'",
        "warning: model plugin 'boom' (raising-plugin) not loaded: RuntimeError: no GPU found",
        "warning: model plugin 'script' (script-plugin) not loaded: it called sys.exit(2) while loading "
        "(an argparse error at import does)",
    ]
    assert models.list_models() == builtin


def test_a_fresh_process_warns_once_and_loads_the_zoo(tmp_path: Path) -> None:
    site = tmp_path / "broken"
    _broken_site(site)
    code = "import models; print(','.join(models.list_models()))"
    env = {"PYTHONPATH": f"{site}:{ROOT}", "PATH": "/usr/bin:/bin", "NO_ALBUMENTATIONS_UPDATE": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().split(",") == models.list_models(BUILTIN)
    warnings = done.stderr.strip().splitlines()
    assert len(warnings) == 4 and all(w.startswith("warning: model plugin '") for w in warnings)
    # `models` lists the zoo and the installed plugins: four missing from its list is not a success
    listed = [sys.executable, "-m", "benchmark", "models"]
    done = subprocess.run(listed, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1 and done.stdout.splitlines()[-1].startswith("4 plugin(s) not loaded")


def test_registration_inside_a_failing_block_is_rolled_back() -> None:
    from models.registry import registering_for

    with pytest.raises(RuntimeError), registering_for("some-package") as added:
        models.register("rolled_back_a")(lambda **kw: torch.nn.Identity())
        raise RuntimeError("half-way")
    assert added == [] and "rolled_back_a" not in models.list_models()
    with registering_for("some-package") as added:
        models.register("kept_b")(lambda **kw: torch.nn.Identity())
    try:
        assert added == ["kept_b"] and models.get_info("kept_b").package == "some-package"
        assert models.list_models("some-package") == ["kept_b"]
    finally:
        models.registry.unregister("kept_b")

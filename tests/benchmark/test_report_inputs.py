"""report's inputs: a damaged summary.json is one line and its run is left out, named on the board;
a damaged overlays.npz leaves its run out of the overlay figure only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmark.cli import main
from benchmark.reporting.report import TABLES
from tests.benchmark.report_results import PLOTS, UNET, write_results
from tests.benchmark.summaries import model_runs


@pytest.fixture
def results(tmp_path):
    return write_results(tmp_path)


DAMAGED = [
    ("per_image", "x"), ("fold", "zero"), ("seed", None), ("run", 3), ("model", ["unet"]), ("metrics", []),
    ("split", "s"), ("cost", {"params": "many"}), ("history", {"epoch": "0,1"}), ("selection", 1),
    ("config", "c"), ("dataset", 7), ("global_batch", "16"), ("train_time_s", "10 s"), ("overlays", 5),
]  # fmt: skip
PER_IMAGE_DAMAGE = [
    ("dice", "x"),
    ("dice", ["a"]),
    ("index", [0.5]),
    ("subject", [None]),
    ("true_empty", "no"),
]
NESTED_DAMAGE = [("metrics", {"post": "x"}), ("metrics", {"post": {"kaggle_dice": "high"}}),
                 ("split", {"n_folds": "two"}), ("split", {"folds": [{"fold": "a"}]}),
                 ("selection", {"metrics": 3}), ("cost", {"params": 1, "measured": "gpu"}),
                 ("selection", {"subjects": 5}), ("selection", {"subjects": [1, "a"]}),
                 ("selection", {"subjects": [1], "n_images": "ten"})]  # fmt: skip


def _damage(results: Path, run: str, edit) -> Path:
    path = results / "runs" / run / "summary.json"
    summary = json.loads(path.read_text())
    edit(summary)
    path.write_text(json.dumps(summary))
    return path


def _report_lines(results: Path, capsys) -> tuple[int, list[str]]:
    code = main(["report", "--results", str(results), "--no-plots"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    # The board misses a run that a re-run would skip again: exit 2 (bad input), the last line says so
    assert err.splitlines()[-1].startswith(f"error: {len(warnings)} run(s) left out of the leaderboard")
    return code, warnings


@pytest.mark.parametrize(("key", "value"), DAMAGED, ids=[f"{k}={v!r}" for k, v in DAMAGED])
def test_a_hand_edited_summary_is_one_line_and_its_run_is_left_out(results, capsys, key, value):
    run = model_runs("unet", UNET)[0]["run"]
    path = _damage(results, run, lambda s: s.__setitem__(key, value))
    code, warnings = _report_lines(results, capsys)
    assert code == 2 and len(warnings) == 1, warnings
    assert warnings[0].startswith(f"warning: {path}: {key}") and " should be " in warnings[0]
    board = json.loads((results / "leaderboard.json").read_text())
    assert "unet" in [r["model"] for r in board["incomplete"]]  # it lost a fold: incomplete, not ranked
    line = warnings[0].removeprefix("warning: ").removesuffix(" (run left out of the report)")
    assert [r["model"] for r in board["rows"]] == ["empty"] and board["unreadable_runs"] == [line]
    assert f"- Unreadable run, left out: {line}" in (results / "leaderboard.md").read_text()


@pytest.mark.parametrize(("key", "value"), PER_IMAGE_DAMAGE + NESTED_DAMAGE)
def test_damage_inside_a_block_is_one_line_too(results, capsys, key, value):
    run = model_runs("unet", UNET)[0]["run"]
    if (key, value) in PER_IMAGE_DAMAGE:
        path = _damage(results, run, lambda s: s["per_image"].__setitem__(key, value))
    else:
        path = _damage(results, run, lambda s: s.__setitem__(key, {**(s[key] or {}), **value}))
    code, warnings = _report_lines(results, capsys)
    assert code == 2 and len(warnings) == 1 and warnings[0].startswith(f"warning: {path}: "), warnings


@pytest.mark.parametrize("key", ["dice", "dice_raw", "iou"])
def test_a_score_outside_zero_and_one_is_damage(results, capsys, key):
    """Every Dice of a run set to 5.0 (a hand edit, a bug elsewhere) ranked its model first at 2.0."""
    run = model_runs("unet", UNET)[0]["run"]
    path = _damage(results, run, lambda s: s["per_image"].__setitem__(key, [5.0] * len(s["per_image"][key])))
    code, warnings = _report_lines(results, capsys)
    assert code == 2 and warnings == [
        f"warning: {path}: per_image.{key} should be a list of numbers in [0, 1] or null, "
        "got [5.0, 5.0, 5.0, 5.0] (run left out of the report)"
    ]


INCONSISTENT = {
    "fold outside the split": (lambda s: s.update(fold=99), "fold 99 is outside its split of 2 folds"),
    "fold not the config's": (lambda s: s.update(fold=(s["fold"] + 1) % 2), "fold 1 is not its config's 0"),
    "seed not the config's": (lambda s: s.update(seed=-1), "seed -1 is not its config's 0"),
    "no image": (
        lambda s: s["per_image"].update({k: [] for k in s["per_image"]}),
        "per_image holds no image (an outer fold always has some)",
    ),
    # the three below left the model unranked (incomplete), with no line and exit 0 (a review)
    "an image twice": (
        lambda s: s["per_image"]["index"].__setitem__(1, s["per_image"]["index"][0]),
        "per_image.index repeats an image or holds a negative one (each outer image is scored once)",
    ),
    "a negative image": (
        lambda s: s["per_image"]["index"].__setitem__(0, -1),
        "per_image.index repeats an image or holds a negative one (each outer image is scored once)",
    ),
    "no data hash": (  # it took the board over, as the one run of "real data" among synthetic ones
        lambda s: s.update(dataset=None),
        "dataset.content_hash is missing (every finished run records the data it was made on)",
    ),
}


@pytest.mark.parametrize("damage", INCONSISTENT)
def test_a_summary_no_run_writes_is_one_line_too(results, capsys, damage):
    """The board showed its model as missing a fold without a word, and `run` exited 0 (it skips the
    run as complete)."""
    edit, problem = INCONSISTENT[damage]
    path = _damage(results, model_runs("unet", UNET)[0]["run"], edit)
    code, warnings = _report_lines(results, capsys)
    assert code == 2 and warnings == [f"warning: {path}: {problem} (run left out of the report)"]


@pytest.mark.parametrize("damage", ["truncated", "foreign", "pickled", "misshapen", "bitrot"])
def test_a_damaged_overlays_file_is_one_line_and_the_rest_is_reported(results, capsys, damage):
    run = model_runs("unet", UNET)[0]["run"]
    npz = results / "runs" / run / "overlays.npz"
    data = npz.read_bytes()
    if damage == "truncated":
        npz.write_bytes(data[: len(data) // 2])
    elif damage == "foreign":
        np.savez(npz, a=np.zeros(3))
    elif damage == "pickled":
        np.savez(npz, stem=np.array([{"x": 1}], dtype=object), image=np.zeros((1, 2, 2)),
                 truth=np.zeros((1, 2, 2)), pred=np.zeros((1, 2, 2)))  # fmt: skip
    elif damage == "misshapen":
        np.savez(npz, stem=np.array(["1_1"]), image=np.zeros((1, 4, 4)), truth=np.zeros((2, 4, 4)),
                 pred=np.zeros((1, 4, 4)))  # fmt: skip
    else:  # one flipped byte inside the image array: only its CRC tells
        at = data.index(b"image.npy") + 300
        npz.write_bytes(data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :])
    assert main(["report", "--results", str(results)]) == 0  # with plots: the overlays are read
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert "Traceback" not in err and len(warnings) == 1 and warnings[0].startswith(f"warning: {npz}: ")
    assert warnings[0].endswith("(left out of the overlay figure)")
    board = json.loads((results / "leaderboard.json").read_text())
    # The figure's file only: the run was left out of the board, which `run` called complete
    assert "unet" in [r["model"] for r in board["rows"]] and not board["unreadable_runs"]
    assert all((results / name).stat().st_size > 0 for name in TABLES + PLOTS)
    assert main(["report", "--results", str(results), "--no-plots"]) == 0
    assert "warning" not in capsys.readouterr().err  # no figure, nothing of the file read


def test_a_copy_of_a_run_under_another_name_is_one_line_and_the_run_stays(results, capsys):
    """`cp -a runs/X runs/X.bak` scored X's outer fold twice: its model left the board (exit 0)."""
    import shutil

    run = model_runs("unet", UNET)[0]["run"]
    shutil.copytree(results / "runs" / run, results / "runs" / f"{run}.bak")
    code, warnings = _report_lines(results, capsys)
    copy = results / "runs" / f"{run}.bak" / "summary.json"
    assert code == 2 and warnings == [
        f"warning: {copy}: a copy of run {run} (runs/{run} holds it) (run left out of the report)"
    ]
    board = json.loads((results / "leaderboard.json").read_text())
    assert [r["model"] for r in board["rows"]] == ["unet", "empty"]  # ranked on its own runs

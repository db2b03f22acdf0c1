"""``report``: leaderboard files and plots rebuilt from summaries alone, byte for byte."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmark.cli import main
from benchmark.core.summary import write_summary
from benchmark.reporting.report import build_report
from datamodules.errors import DataError
from tests.benchmark.summaries import make_summary

FILES = (
    "leaderboard.md",
    "leaderboard.csv",
    "leaderboard.json",
    "plots/leaderboard.png",
    "plots/overlays.png",
    "plots/curves.png",
)


def write_run(results, summary, overlays=True):
    run_dir = results / "runs" / summary["run"]
    write_summary(run_dir, summary)
    if overlays:
        yy, xx = np.mgrid[:32, :44]
        truth = np.stack([((yy - 16) ** 2 + (xx - 20) ** 2 < 40 + 10 * i).astype(np.uint8) for i in range(3)])
        pred = np.zeros_like(truth) if summary["model"] == "empty" else np.roll(truth, 2, axis=2)
        image = (np.arange(3 * 32 * 44) % 251).astype(np.uint8).reshape(3, 32, 44)
        stems = np.array(["1_1", "1_2", "2_1"])
        np.savez(run_dir / "overlays.npz", stem=stems, image=image, truth=truth, pred=pred)


@pytest.fixture
def results(tmp_path):
    for fold, values in enumerate(([0.9, 0.7, 1.0], [0.8, 0.6, 1.0])):
        write_run(tmp_path, make_summary("unet", fold, 0, values))
        write_run(tmp_path, make_summary("empty", fold, 0, [1.0, 0.0, 0.0]))
    write_run(tmp_path, make_summary("sk_unet", 0, 0, [0.5, 0.5, 0.5], cost=False), overlays=False)
    return tmp_path


def test_report_is_byte_identical_and_pngs_carry_no_metadata(results):
    build_report(results)
    first = {f: (results / f).read_bytes() for f in FILES}
    assert main(["report", "--results", str(results)]) == 0
    assert {f: (results / f).read_bytes() for f in FILES} == first
    for name in FILES[3:]:
        png = first[name]
        assert png.startswith(b"\x89PNG") and b"Software" not in png and b"tIME" not in png


def test_markdown_has_header_ranks_baseline_ci_and_legend(results):
    build_report(results, plots=False)
    md = (results / "leaderboard.md").read_text()
    assert "SYNTHETIC DATA" in md and "content hash `c0ffee`" in md and "`abc123`" in md
    rows = [line for line in md.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [r.split(" | ")[1] for r in rows[:3]] == ["unet", "sk_unet", "empty (baseline)"]
    # unet: folds give 0.8667 and 0.8 -> mean 0.833; two runs -> t interval
    assert "| 1 | unet | 2 | t, 2 runs | 0.833 [" in md
    assert "| 2 | sk_unet | 1 | bootstrap, 1 run, 3 images | 0.500 [0.500, 0.500] |" in md
    assert "| sk_unet | n/a | n/a | 10.0 | n/a |" in md  # missing cost -> n/a, train time kept
    assert "empty prediction on empty truth = 1" in md and "Pixel accuracy is not reported" in md


def test_json_and_csv_agree_and_are_rounded(results):
    build_report(results, plots=False)
    board = json.loads((results / "leaderboard.json").read_text())
    assert [r["model"] for r in board["rows"]] == ["unet", "sk_unet", "empty"]
    assert board["rows"][0]["metrics"]["kaggle_dice"]["mean"] == pytest.approx(0.833333, abs=1e-9)
    assert board["rows"][2]["n_pairs"] == 6 and "kaggle_dice" in board["legend"]
    csv_lines = (results / "leaderboard.csv").read_text().splitlines()
    assert csv_lines[1].startswith("1,unet,false,2,6,t,0.833333,")
    assert csv_lines[3].startswith("3,empty,true,2,6,t,0.333333,")


def test_other_benchmarks_are_left_out_and_empty_results_fail(results, tmp_path_factory, capsys):
    write_run(results, make_summary("unet", 0, 3, [0.0], content="other"))
    board = build_report(results, plots=False)
    assert len(board["ignored_runs"]) == 1 and "not in the leaderboard" in capsys.readouterr().err
    with pytest.raises(DataError, match="no complete run summaries"):
        build_report(tmp_path_factory.mktemp("empty"))

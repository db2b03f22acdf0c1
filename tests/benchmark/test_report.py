"""``report``: leaderboard files and plots rebuilt from summaries alone, byte for byte and atomically."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.core.config import SCHEMA_VERSION
from benchmark.reporting import leaderboard as lb
from benchmark.reporting import tables
from benchmark.reporting.report import TABLES, build_report
from datamodules.errors import DataError
from tests.benchmark.report_results import PLOTS, SK, UNET, write_results, write_run
from tests.benchmark.summaries import empty_runs, make_summary, model_runs


@pytest.fixture
def results(tmp_path):
    return write_results(tmp_path)


def snapshot(results: Path, names=TABLES + PLOTS) -> dict[str, bytes]:
    return {name: (results / name).read_bytes() for name in names}


def test_report_is_byte_identical_and_pngs_carry_no_metadata(results):
    build_report(results)
    first = snapshot(results)
    assert main(["report", "--results", str(results)]) == 0
    assert snapshot(results) == first
    for name in PLOTS:
        png = first[name]
        assert png.startswith(b"\x89PNG") and b"Software" not in png and b"tIME" not in png


def test_markdown_has_protocol_header_folds_ranks_and_incomplete(results):
    build_report(results, plots=False)
    md = (results / "leaderboard.md").read_text()
    assert "SYNTHETIC DATA" in md and "content hash `c0ffee`" in md and "`abc123`" in md
    assert "- **Split**: 2 outer folds by subject, split_seed 0;" in md and "- **Global batch**: 16" in md
    assert "; 1 device(s) per run\n" in md
    assert "| 0 | 1, 2 | 4 | 0.500 |" in md and "| 1 | 3, 4 | 4 | 0.500 |" in md
    rows = [line for line in md.splitlines() if line.startswith("| ") and line[2].isdigit() and "[" in line]
    assert [r.split(" | ")[1] for r in rows] == ["unet", "empty (baseline)"]
    # p vs floor: 4 subjects all above it, so the exact one-sided sign-flip p is 1/2^4 (one model: no
    # Holm); below ranking.MIN_SUBJECTS Set p is not computed, and the table says so rather than
    # print the stored 1.0 as a result
    assert rows[0].startswith("| 1 | unet | [1, 2] | 2 | 0.725 | ") and rows[0].endswith(
        "| - | n/a | - | untested | yes | 0.0625 |"
    )
    # 4 subjects: no CI (note), no corrected p below 1; the floor is not in the set
    assert rows[1].startswith("| 2 | empty (baseline) | [1, 2] | 2 | 0.500 | 0.000 |")
    assert "**Note**: No CIs: a subject-bootstrap interval from 4 subjects" in md
    assert rows[1].endswith("| -0.225 | untested | n/a | n/a | floor | - |")  # 4 subjects: nothing to tell
    assert "| Seed SD |" in md and "| Δ vs top | p vs top | MDE 80% | Set p | Top group | p vs floor |" in md
    assert "| sk_unet | 3 | seed 1: fold 1 missing | 0.675 (8 images) |" in md
    assert "| sk_unet | n/a | n/a | 10.3 | n/a |" in md  # missing cost -> n/a, train time kept
    assert "the pair's own p before the Bonferroni factor" in md and "trainable + frozen" in md
    assert "Hansen, Lunde & Nason" in md and "Mogstad, Romano, Shaikh & Wilhelm" in md


def test_json_csv_and_tex_agree(results):
    build_report(results, plots=False)
    board = json.loads((results / "leaderboard.json").read_text())
    assert [r["model"] for r in board["rows"]] == ["unet", "empty"]
    assert [r["model"] for r in board["incomplete"]] == ["sk_unet"]
    assert board["rows"][0]["metrics"]["kaggle_dice"]["mean"] == 0.725 and "kaggle_dice" in board["legend"]
    assert board["rows"][1]["vs_top"] == {
        "diff": -0.225,
        "n_subjects": 4,
        "p": 1.0,
        "p_unadjusted": 1.0,
        "mde": None,
        "tested": False,  # 4 subjects: p vs top was not computed (the 1.0 is the rule, not a test)
    }
    assert board["rows"][1]["p_best"] is None and board["rows"][0]["rank_ci"] == [1, 2]
    assert board["header"]["statistics"]["n_set"] == 10000 and board["rows"][0]["seed_sd"] > 0
    lines = (results / "leaderboard.csv").read_text().splitlines()
    head = lines[0].split(",")
    assert head[head.index("diff_vs_top") :][:9] == [
        "diff_vs_top", "p_vs_top", "mde_vs_top", "p_best_set", "in_best_set", "n_subjects_tested",
        "rank_ci_lo", "rank_ci_hi", "seed_sd",
    ]  # fmt: skip
    assert lines[1].startswith("1,unet,false,false,ranked,,4,2,8,0.725000,")
    assert lines[2].startswith("2,empty,true,false,ranked,,4,2,8,0.500000,n/a,n/a,")
    # untested p-values are empty cells, not a computed-looking 1.000000
    assert ",-0.225000,,n/a,n/a,,4,1,2,0.000000," in lines[2]  # the floor has no Set p at all: n/a
    top, floor = (dict(zip(head, line.split(","))) for line in lines[1:3])
    assert (floor["p_vs_top_unadjusted"], top["diff_vs_floor"], top["p_vs_floor"]) == (
        "",
        "0.225000",
        "0.062500",
    )
    assert (top["p_vs_top"], top["p_best_set"]) == ("n/a", "")  # the top has no p vs top; Set p untested
    assert lines[3].startswith(
        ",sk_unet,false,false,incomplete,seed 1: fold 1 missing,3,2,8,0.675000,n/a,n/a,"
    )
    tex = (results / "leaderboard.tex").read_text()
    assert (
        "\\toprule" in tex
        and "1 & \\textbf{unet} & {[}1, 2{]} & 0.725 & " in tex  # no CI from 4 subjects
        and "2 & empty (baseline) & {[}1, 2{]} &" in tex  # the floor is never in the bold top group
    )
    assert "sk\\_unet" not in tex and "% 1 incomplete model(s) not shown" in tex
    floor_p = board["rows"][0]["vs_floor"]["p_holm"]  # a paper's table says which models clear the floor
    assert (
        "& Set $p$ & Floor $p$ \\\\" in tex
        and f"{floor_p:.4f} \\\\" in tex.split("\\textbf{unet}")[1].splitlines()[0]
    )


def test_a_model_name_with_markup_characters_keeps_every_table_whole():
    """A plugin may register any name without ":". A "|" split its Markdown row (16 cells under 15
    headings), a backtick broke its code span, and LaTeX printed "\\{}" for "\\" and failed on "^"."""
    odd = 'odd|net,"v2"_x^2~&%#\\z'
    runs = [{**s, "model_source": {"package": "plug", "version": "1"}} for s in model_runs(odd, UNET)]
    runs += [{**s, "model_source": {"package": "plug", "version": "1"}} for s in model_runs("a`b", SK)]
    board = lb.build(runs)
    md = tables.markdown(board)
    table = md[md.index("## Accuracy") :].split("\n\n")[1].splitlines()
    assert {line.replace("\\|", "").count("|") for line in table} == {table[0].count("|")}
    assert '| odd\\|net,"v2"_x^2~&%#\\z |' in md and "- ``a`b``: " in md
    row = next(line for line in tables.latex(board).splitlines() if "net" in line)
    assert "odd\\textbar{}net,{\\char34}v2{\\char34}\\_x\\textasciicircum{}2\\textasciitilde{}" in row
    assert "\\&\\%\\#\\textbackslash{}z" in row and "a`b" in tables.latex(board)


def test_older_schema_is_refused_with_one_line(results, capsys):
    for fold in (0, 1):
        write_run(results, {**make_summary("attention_unet", fold, 0, [0.5]), "schema_version": 1})
    assert main(["report", "--results", str(results), "--no-plots"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "2 summaries (" in err and "attention_unet__f0__s0" in err
    assert f"schema_version 1 is older than {SCHEMA_VERSION}; re-run the benchmark" in err
    assert not (results / "leaderboard.md").exists()


def test_failed_write_leaves_the_previous_tables_whole(results, monkeypatch):
    build_report(results, plots=False)
    before = snapshot(results, TABLES)
    for summary in model_runs("sk_unet", {1: SK[1]}, skip={(0, 1)}):  # completes sk_unet: the board changes
        write_run(results, summary, overlays=False)
    real, calls = Path.write_bytes, []

    def disk_full_on_second(self, data):
        calls.append(self)
        if len(calls) == 2:
            real(self, data[: len(data) // 2])
            raise OSError(28, "No space left on device", str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", disk_full_on_second)
    with pytest.raises(OSError, match="No space left"):
        build_report(results, plots=False)
    assert snapshot(results, TABLES) == before
    assert not list(results.glob(".*.tmp"))
    monkeypatch.undo()
    (results / "leaderboard.csv").unlink()
    (results / "leaderboard.csv").mkdir()  # its rename fails: the md was renamed before it (a review)
    with pytest.raises(IsADirectoryError, match="a directory where the report writes a file"):
        build_report(results, plots=False)
    assert snapshot(results, ("leaderboard.md", "leaderboard.json")) == {
        k: v for k, v in before.items() if k in ("leaderboard.md", "leaderboard.json")
    }
    (results / "leaderboard.csv").rmdir()
    build_report(results, plots=False)
    assert "| 2 | sk_unet |" in (results / "leaderboard.md").read_text()


def test_failed_savefig_leaves_the_previous_plot_and_exits_1(results, monkeypatch, capsys):
    import matplotlib.figure

    build_report(results)
    before = snapshot(results, PLOTS)

    def broken_savefig(self, fname, *args, **kwargs):
        Path(fname).write_bytes(b"\x89PNG half")
        raise OSError(28, "No space left on device", str(fname))

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", broken_savefig)
    assert main(["report", "--results", str(results)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "No space left on device" in err
    assert snapshot(results, PLOTS) == before and not list((results / "plots").glob(".*.tmp"))


def test_other_benchmarks_are_left_out_and_empty_results_fail(results, tmp_path_factory, capsys):
    write_run(results, make_summary("unet", 0, 3, [0.0], content="other"))
    board = build_report(results, plots=False)
    assert len(board["ignored_runs"]) == 1 and "not in the leaderboard" in capsys.readouterr().err
    with pytest.raises(DataError, match="no complete run summaries"):
        build_report(tmp_path_factory.mktemp("empty"))


def test_run_reports_its_own_benchmark_and_report_chooses_by_hash(results, capsys):
    """A directory holding complete runs of two recipes: `run` printed the board of the one with more
    runs (the other's, not the grid it had just trained), naming neither (a reviewer's 10-epoch board
    after a 2-epoch run); and `report` could show only that one."""
    first = build_report(results, plots=False)
    mine = []
    for summary in model_runs("unet", UNET)[:2]:  # fewer runs than the board above: 2 epochs more
        config = {**summary["config"], "epochs": 4}
        mine.append({**summary, "config": config, "run": summary["run"] + "_e4"})
        write_run(results, mine[-1], overlays=False)
    capsys.readouterr()
    assert build_report(results, plots=False)["header"] == first["header"]  # the most runs: as before
    own = build_report(results, plots=False, own_runs=[s["run"] for s in mine])
    hashes = (first["header"]["benchmark_hash"][0], own["header"]["benchmark_hash"][0])
    assert hashes[0] != hashes[1] and own["header"]["n_runs"] == 2
    assert own["other_benchmarks"] == {hashes[0]: first["header"]["n_runs"]}
    err = capsys.readouterr().err
    assert f"the directory also holds complete runs of {hashes[1]} (2 runs)" in err  # from the first
    assert f"this board is benchmark {hashes[1]} (2 runs)" in err
    assert main(["report", "--results", str(results), "--benchmark", hashes[1][:6], "--no-plots"]) == 0
    assert f"`{hashes[0]}` ({first['header']['n_runs']} runs)" in (results / "leaderboard.md").read_text()
    assert main(["report", "--results", str(results), "--benchmark", "ffffff"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"error: {results / 'runs'}: no complete runs of benchmark 'ffffff'; it holds ")
    assert main(["report", "--results", str(results), "--benchmark", ""]) == 2  # a prefix of both
    assert "more than one benchmark starts with ''; it holds " in capsys.readouterr().err


# ----------------------------------------------------------------------------- damaged inputs
def test_one_report_is_one_set_and_its_own_stale_temp_files_go(results, monkeypatch):
    import matplotlib.figure

    (results / "plots").mkdir()
    stale = [results / "plots" / ".curves.png.k1ll3d.tmp", results / ".leaderboard.md.k1ll3d.tmp"]
    for path in stale:
        path.write_bytes(b"")  # what a kill during an earlier report left
    foreign = results / "plots" / ".mine.tmp"
    foreign.write_bytes(b"")
    board = build_report(results)
    assert not any(p.exists() for p in stale) and foreign.exists()  # only its own names are removed
    rid = board["report_id"]
    first = snapshot(results)
    assert f"Report `{rid}`" in first["leaderboard.md"].decode()
    assert json.loads(first["leaderboard.json"])["report_id"] == rid
    assert first["leaderboard.tex"].startswith(f"% nerve-bench report {rid}\n".encode())
    csv_lines = first["leaderboard.csv"].decode().splitlines()
    assert csv_lines[0].endswith(",report_id") and all(line.endswith(f",{rid}") for line in csv_lines[1:])
    # A report that changes the board but dies while drawing its last figure renames nothing:
    # every file still belongs to the previous set (in 5 of 10 kills tables were new, plots old).
    for summary in model_runs("sk_unet", {1: SK[1]}, skip={(0, 1)}):
        write_run(results, summary, overlays=False)

    def dies(self, *args, **kwargs):
        raise KeyboardInterrupt  # a kill at the last moment before the renames

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", dies)
    with pytest.raises(KeyboardInterrupt):
        build_report(results)
    assert snapshot(results) == first and list(results.rglob("*.tmp")) == [foreign]
    monkeypatch.undo()
    again = build_report(results)
    assert (
        again["report_id"] != rid
        and f"Report `{again['report_id']}`" in (results / "leaderboard.md").read_text()
    )


def test_a_read_only_results_dir_names_the_leaderboard_not_a_temp_file(results, monkeypatch, capsys):
    import tempfile

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(Path(kwargs["dir"]) / ".leaderboard.md.xyz.tmp"))

    monkeypatch.setattr(tempfile, "mkstemp", refused)  # root can write anywhere: refuse at the source
    assert main(["report", "--results", str(results), "--no-plots"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {results / 'leaderboard.md'}: Permission denied"]


def test_runs_scored_again_after_training_are_named_with_where():
    """A run whose summary was removed is tuned and scored again from its trained.json: environment
    stays the training's, and the header says where the scoring (and its inference columns) ran."""
    unet = model_runs("unet", UNET)
    for run in unet[:3]:
        run["scored_again"] = {**run["environment"], "device": "NVIDIA H100 80GB HBM3", "git_sha": "def456"}
    b = lb.build(unet + empty_runs())
    assert b["header"]["device"] == ["cpu"]
    assert b["header"]["scored_again"] == ["3 run(s) on NVIDIA H100 80GB HBM3 at def456"]
    assert (
        "- **Scored again** (after training; inference columns measured there): 3 run(s) on NVIDIA H100"
        in (tables.markdown(b))
    )
    assert lb.build(model_runs("unet", UNET) + empty_runs())["header"]["scored_again"] == []
    assert "Scored again" not in tables.markdown(lb.build(model_runs("unet", UNET) + empty_runs()))


def test_the_committed_example_is_what_its_runs_give(tmp_path):
    """results/example (linked from the README) is rebuilt from its own summaries to the same bytes:
    a change to the board's statistics or words that is not carried into the example fails here."""
    example = Path(__file__).resolve().parents[2] / "results" / "example"
    shutil.copytree(example / "runs", tmp_path / "runs")
    build_report(tmp_path)  # with the plots: the report id covers what they draw
    for name in ("leaderboard.md", "leaderboard.csv", "leaderboard.json", "leaderboard.tex"):
        assert (tmp_path / name).read_bytes() == (example / name).read_bytes(), f"{name}: run make report"


def test_a_board_with_no_complete_model_says_why_its_table_is_empty(tmp_path):
    """It printed an accuracy table header with no rows and no word why."""
    board = lb.build(model_runs("unet", {0: [1.0] * 8}, skip=[(1, 0)]))
    assert board["rows"] == [] and [r["model"] for r in board["incomplete"]] == ["unet"]
    text = tables.console(board)
    assert "Note: No model is ranked yet: a model is ranked once each of its seeds has a run of every" in text
    assert "| unet | 1 | seed 0: fold 1 missing |" in text
    assert "No model is ranked yet" not in tables.console(lb.build(model_runs("unet", {0: [1.0] * 8})))


def test_report_takes_results_dir_as_the_other_commands_and_names_a_missing_one(tmp_path, capsys):
    assert main(["report", "--results-dir", str(tmp_path / "none")]) == 2
    assert (
        capsys.readouterr().err
        == f"error: {tmp_path / 'none'}: results directory not found (it holds runs/<run>/summary.json)\n"
    )


def test_the_board_names_where_each_models_code_came_from():
    """A plugin's row could not be traced to its code: no package or version in the summaries."""
    runs = model_runs("unet", {0: [1.0] * 8})
    for i, run in enumerate(runs):
        version = "1.3" if i == 0 else "1.2"  # one fold made with another version: both are shown
        run["model_source"] = {"package": "my-plugin", "version": version, "paper": "Me et al. 2026"}
    md = tables.markdown(lb.build(runs))
    assert "## Models (paper; the package that registered each, and its version)" in md
    assert "- `unet`: Me et al. 2026 (my-plugin 1.2; my-plugin 1.3)" in md
    assert "## Models" not in tables.markdown(lb.build(model_runs("unet", {0: [1.0] * 8})))  # older runs


def test_runs_on_several_device_counts_are_said_under_hardware():
    """The accuracy is the same recipe on any count (one global batch); the training cost is per run."""
    from benchmark.reporting.tables import markdown

    runs = [make_summary("unet", f, 0, [0.5, 1.0]) for f in (0, 1)]
    runs[1]["world_size"] = 8
    (hardware,) = [line for line in markdown(lb.build(runs)).splitlines() if "**Hardware**" in line]
    assert hardware.endswith(
        "; 1, 8 devices per run in different runs: the training time and img/s columns compare only "
        "between runs of one count"
    )


def test_a_report_that_waited_for_another_reads_the_summaries_after_its_wait(results, monkeypatch, capsys):
    """The board was built before the report lock was taken: a report that waited for another wrote
    the board of the summaries as they were before its wait (a run finished meanwhile: not on it)."""
    import benchmark.reporting.report as report_module
    from benchmark.core.lock import claim

    other = claim(results / ".report")  # another report holds the lock
    assert other is not None

    def meanwhile(seconds):  # while this report waits, the missing run finishes and the other ends
        for summary in model_runs("sk_unet", {1: SK[1]}, skip={(0, 1)}):
            write_run(results, summary, overlays=False)
        other.release()

    monkeypatch.setattr(report_module.time, "sleep", meanwhile)
    board = build_report(results, plots=False)
    assert "waiting for another report" in capsys.readouterr().err
    assert {r["model"] for r in board["rows"]} == {"unet", "sk_unet", "empty"} and not board["incomplete"]

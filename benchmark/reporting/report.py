"""Rebuild results/leaderboard.{md,csv,json,tex} and results/plots/*.png from results/runs/*/summary.json.

Everything written is a pure function of the summaries (and the overlays.npz beside them): fixed
decimals, sorted keys, seeded resampling, no wall-clock timestamps, so re-running ``report`` gives
byte-identical files. A run whose files cannot be read (:mod:`benchmark.reporting.inputs`) is named
in one line and left out; the rest is reported.

One report is one set of files: every file is rendered to a temporary name first and all are
renamed into place together at the end, so a kill or a full disk leaves the previous set whole, and
every file carries the same report id (a Markdown line, a CSV column, a JSON key, a LaTeX comment,
the figure titles): a file with another id is left from an interrupted report. Reports on one results
directory take turns (a lock in ``.report/``), which lets each remove the temporary files that a
killed report left behind.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import functools
import hashlib
import io
import json
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.core.config import SCHEMA_VERSION
from benchmark.core.files import atomic_path
from benchmark.core.lock import claim, read_lock
from benchmark.core.summary import SUMMARY_NAME, read_summary
from benchmark.reporting import leaderboard as lb
from benchmark.reporting.inputs import overlay_problem, overlays_of, run_problem
from benchmark.reporting.tables import csv_table, latex, legend, markdown
from datamodules.errors import DataError

N_POS, N_NEG = 3, 2  # overlay columns: the first positive and negative outer-fold images shared by all
TABLES = ("leaderboard.md", "leaderboard.csv", "leaderboard.json", "leaderboard.tex")
PLOTS = ("leaderboard.png", "overlays.png", "curves.png")  # in results/plots
LOCK_DIR = ".report"  # results/.report/run.lock while a report is written
LOCK_WAIT_S = 600.0


def _schema_version(path: Path) -> Any:
    """The file's schema_version, or None when it is not a readable JSON object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data.get("schema_version") if isinstance(data, dict) else None


def schema_error(refused: list[tuple[Path, int]]) -> DataError:
    """One line naming the summaries of another schema (count + the first few)."""
    paths = [str(p) for p, _ in refused]
    where = paths[0] if len(paths) == 1 else f"{len(paths)} summaries ({', '.join(paths[:3])}"
    where += "" if len(paths) == 1 else (f" and {len(paths) - 3} more)" if len(paths) > 3 else ")")
    versions = sorted({v for _, v in refused})
    listed = ", ".join(str(v) for v in versions)
    if max(versions) < SCHEMA_VERSION:
        hint = "re-run the benchmark or use an older nerve-bench"
        return DataError(where, f"schema_version {listed} is older than {SCHEMA_VERSION}; {hint}")
    return DataError(
        where, f"schema_version {listed} is not the supported {SCHEMA_VERSION}; update nerve-bench"
    )


def scan_runs(results_dir: Path) -> tuple[list[tuple[Path, dict[str, Any]]], list[str]]:
    """(run directory, summary) of every readable run, sorted by directory name, and one
    ``PATH: problem`` line per unreadable one (printed as a warning; the run is left out).

    Summaries of another schema version are refused (DataError naming them): mixing the old in-sample
    scores with out-of-fold ones would rank models on different protocols.
    """
    out, refused, unreadable = [], [], []
    for path in sorted((results_dir / "runs").glob(f"*/{SUMMARY_NAME}")):
        try:
            summary = read_summary(path)
        except DataError as exc:
            version = _schema_version(path)
            if isinstance(version, int) and not isinstance(version, bool) and version != SCHEMA_VERSION:
                refused.append((path, version))
            else:
                unreadable.append(str(exc))
            continue
        problem = run_problem(path.parent, summary)
        if problem:
            unreadable.append(problem)
        else:
            out.append((path.parent, summary))
    if refused:
        raise schema_error(refused)
    out, copies = _without_copies(out)
    unreadable += copies
    for line in unreadable:
        print(f"warning: {line} (run left out of the report)", file=sys.stderr)
    return out, unreadable


def _without_copies(runs: list[tuple[Path, dict[str, Any]]]) -> tuple[list[tuple[Path, dict]], list[str]]:
    """``runs`` without the copies of a run kept under another name (``cp -a runs/X runs/X.bak``),
    where the run's own directory is there: a copy scored its outer fold twice, and its model left the
    board without a word. One line per copy."""
    own = {str(s.get("run")) for d, s in runs if d.name == s.get("run")}
    kept, copies = [], []
    for run_dir, summary in runs:
        name = str(summary.get("run"))
        if run_dir.name != name and name in own:
            copies.append(f"{run_dir / SUMMARY_NAME}: a copy of run {name} (runs/{name} holds it)")
        else:
            kept.append((run_dir, summary))
    return kept, copies


def load_summaries(results_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """(run directory, summary) of every readable run (see :func:`scan_runs`)."""
    return scan_runs(results_dir)[0]


def _round(value: Any) -> Any:
    """Round floats to 6 decimals everywhere so the JSON text is stable across platforms."""
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_round(v) for v in value]
    return value


def _stamp_markdown(board: dict[str, Any], report_id: str) -> str:
    lines = [markdown(board).rstrip("\n"), ""]
    for line in board.get("unreadable_runs") or []:
        lines.append(f"- Unreadable run, left out: {line}")
    lines.append(
        f"Report `{report_id}`: leaderboard.md, .csv, .json, .tex and plots/*.png of this report all carry "
        "this id; a file with another id is left from an interrupted report (re-run `make report`)."
    )
    return "\n".join(lines) + "\n"


def render_tables(board: dict[str, Any], report_id: str = "") -> dict[str, str]:
    """File name -> text of leaderboard.md, .csv, .json and .tex, each stamped with ``report_id``."""
    columns, rows = csv_table(board)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*columns, "report_id"])
    writer.writerows([*row, report_id] for row in rows)
    payload = _round({**board, "legend": legend(board), "report_id": report_id})
    texts = [
        _stamp_markdown(board, report_id),
        buf.getvalue(),
        json.dumps(payload, sort_keys=True, indent=2) + "\n",
        f"% nerve-bench report {report_id}\n{latex(board)}",
    ]
    return dict(zip(TABLES, texts))


def _first_runs(runs: dict[str, list[tuple[Path, dict]]]) -> dict[str, tuple[Path, dict]]:
    """Per model, the run of the lowest (fold, seed) shared by every model (else each one's lowest)."""
    keys = [{(s["fold"], s["seed"]) for _, s in rs} for rs in runs.values()]
    common = sorted(set.intersection(*keys)) if keys else []
    out = {}
    for model, rs in runs.items():
        rs = sorted(rs, key=lambda r: (r[1]["fold"], r[1]["seed"]))
        match = [r for r in rs if (r[1]["fold"], r[1]["seed"]) == (common[0] if common else None)]
        out[model] = (match or rs)[0]
    return out


def _overlay_panels(chosen: dict[str, tuple[Path, dict]], order: list[str]) -> list[tuple[str, dict]]:
    """Overlays of the same outer-fold images (stems shown by every model) in leaderboard order."""
    loaded = {}
    for model in order:
        path = overlays_of(*chosen[model])
        if not path.is_file():
            continue
        problem = overlay_problem(path)
        if problem:  # the run stays on the board: only this figure lacks it
            print(f"warning: {path}: {problem} (left out of the overlay figure)", file=sys.stderr)
            continue
        with np.load(path, allow_pickle=False) as data:
            loaded[model] = {k: data[k] for k in ("stem", "image", "truth", "pred")}
    if not loaded:
        return []
    shared = set.intersection(*({str(s) for s in p["stem"]} for p in loaded.values()))
    first = next(iter(loaded.values()))
    positive = {str(s): bool(t.any()) for s, t in zip(first["stem"], first["truth"])}
    ordered = [str(s) for s in first["stem"] if str(s) in shared]
    stems = [s for s in ordered if positive[s]][:N_POS] + [s for s in ordered if not positive[s]][:N_NEG]
    panels = []
    for model, p in loaded.items():
        pos = {str(s): i for i, s in enumerate(p["stem"])}
        idx = [pos[s] for s in stems]
        panels.append((model, {"stem": stems, **{k: p[k][idx] for k in ("image", "truth", "pred")}}))
    return panels


def _figures(
    board: dict[str, Any], loaded: list[tuple[Path, dict]]
) -> tuple[list[tuple[str, str, Any]], str]:
    """The three figures as (file name in plots/, title, draw(path, title)), and a digest of what they
    show beyond the board (overlay arrays, training histories) for the report id."""
    from benchmark.reporting import plots

    kept = {s["run"] for s in board["runs"]}
    runs: dict[str, list[tuple[Path, dict]]] = {}
    for run_dir, s in loaded:
        if s.get("run") in kept:
            runs.setdefault(str(s["model"]), []).append((run_dir, s))
    chosen = _first_runs(runs)
    # Ranked models first, then incomplete ones; a baseline derived from the truth has no run to draw.
    order = [r["model"] for r in board["rows"] + board["incomplete"] if r["model"] in chosen]
    tag = "synthetic data" if any(d.get("synthetic") for d in board["header"]["datasets"]) else "real data"
    fold_seed = {m: (s["fold"], s["seed"]) for m, (_, s) in chosen.items()}
    where = ", ".join(sorted({f"fold {f} seed {e}" for f, e in fold_seed.values()}))
    panels = _overlay_panels(chosen, order)
    histories = [(m, chosen[m][1].get("history") or {}) for m in order]
    digest = hashlib.sha256(json.dumps(histories, sort_keys=True).encode())
    for model, panel in panels:
        digest.update(model.encode())
        for key in ("image", "truth", "pred"):
            digest.update(np.ascontiguousarray(panel[key]).tobytes())
    titles = {
        "leaderboard.png": f"nerve-bench leaderboard ({tag})",
        "overlays.png": f"Outer-fold overlays ({tag}; {where})",
        "curves.png": f"Training curves ({tag}; {where})",
    }
    draws = {
        "leaderboard.png": functools.partial(plots.leaderboard_png, board["rows"]),
        "overlays.png": functools.partial(plots.overlays_png, panels),
        "curves.png": functools.partial(plots.curves_png, histories),
    }
    figures = [(name, titles[name], draws[name]) for name in PLOTS]
    return figures, digest.hexdigest()


def remove_stale_temps(results_dir: Path) -> list[Path]:
    """Temporary files a killed report left (``.leaderboard.md.<random>.tmp``, ``plots/.curves.png.*``);
    called only under the report lock, when no other report can be writing them."""
    removed = []
    for folder, names in ((results_dir, TABLES), (results_dir / "plots", PLOTS)):
        for name in names:
            for path in [*folder.glob(f".{name}.*.tmp"), *folder.glob(f"..{name}.*.tmp")]:
                with contextlib.suppress(OSError):
                    path.unlink()
                    removed.append(path)
    return removed


@contextlib.contextmanager
def report_lock(results_dir: Path) -> Iterator[bool]:
    """Hold ``results/.report/run.lock`` (waiting for another report, up to ``LOCK_WAIT_S``); yields
    whether it is held: a read-only or full directory reports without it (its writes will say why)."""
    where, lock, told = results_dir / LOCK_DIR, None, False
    deadline = time.monotonic() + LOCK_WAIT_S
    while lock is None and time.monotonic() < deadline:
        try:
            lock = claim(where)
        except OSError:
            break
        if lock is None and not told:
            holder = read_lock(where)
            print(
                f"waiting for another report on {results_dir} ({holder.describe() if holder else '?'})",
                file=sys.stderr,
            )
            told = True
        if lock is None:
            time.sleep(0.5)
    try:
        yield lock is not None
    finally:
        if lock is not None:
            lock.release()
            with contextlib.suppress(OSError):
                where.rmdir()


def write_report(
    board: dict[str, Any], loaded: list[tuple[Path, dict]], results_dir: Path, plots: bool
) -> str:
    """Render every file to a temporary name, then rename them all together; returns the report id."""
    figures, digest = _figures(board, loaded) if plots else ([], "")
    unstamped = render_tables(board)["leaderboard.json"]
    report_id = hashlib.sha256((unstamped + digest).encode()).hexdigest()[:12]
    names = [results_dir / n for n in TABLES] + [results_dir / "plots" / n for n, *_ in figures]
    for path in (p for p in names if p.is_dir()):  # its rename would fail after the others': a mixed set
        raise IsADirectoryError(errno.EISDIR, "a directory where the report writes a file", str(path))
    with contextlib.ExitStack() as stack:  # leaving it renames every file, in one burst
        for name, text in render_tables(board, report_id).items():
            stack.enter_context(atomic_path(results_dir / name)).write_bytes(text.encode())
        for name, title, draw in figures:
            draw(
                stack.enter_context(atomic_path(results_dir / "plots" / name)),
                f"{title} [report {report_id}]",
            )
    return report_id


REPAIR = (
    "`run` scores a trained run again from its best.ckpt where the file is not JSON at all (cut short), "
    "but leaves one that parses with wrong contents: repair or delete it (then `run` scores it again; "
    "an imported method is imported again)"
)


def left_out_line(board: dict[str, Any]) -> str | None:
    """The last line of a report that left out runs whose summary is damaged (each named above in a
    warning). Not "incomplete" (exit 3: run the same command again), which would loop forever: `run`
    skips a damaged summary as complete. `run` exits 1 for it, `report` 2 (bad input)."""
    n = len(board.get("unreadable_runs") or [])
    if not n:
        return None
    return (
        f"error: {n} run(s) left out of the leaderboard, their summary.json damaged (named above); {REPAIR}"
    )


def _benchmarks(board: dict[str, Any], which: str = "all") -> str:
    """The complete benchmarks (config hashes) of a results directory and their runs: the board's
    and the others (``which``: "all", "board" or "others")."""
    shown = (
        {h: board["header"]["n_runs"] for h in board["header"]["benchmark_hash"]} if which != "others" else {}
    )
    groups = {**shown, **(board["other_benchmarks"] if which != "board" else {})}
    return ", ".join(f"{h} ({n} runs)" for h, n in groups.items()) or "none"


def build_report(
    results_dir: str | Path, plots: bool = True, prefer: str | None = None, own_runs: Iterable[str] = ()
) -> dict[str, Any]:
    """Rebuild every leaderboard file from the run summaries; returns the leaderboard dict. The board
    is of the benchmark ``prefer`` names (a hash or its start), else of the one ``own_runs`` (a grid
    just run) belong to, else of the most common. The summaries are read under the report lock: a
    report that waited for another read them first, and then wrote a board older than that one's."""
    results_dir = Path(results_dir)
    locked = report_lock(results_dir) if results_dir.is_dir() else contextlib.nullcontext(False)
    with locked as held:
        board, loaded = _board(results_dir, prefer, own_runs)
        if held:
            remove_stale_temps(results_dir)
        board["report_id"] = write_report(board, loaded, results_dir, plots)
    return board


def _board(
    results_dir: Path, prefer: str | None, own_runs: Iterable[str]
) -> tuple[dict[str, Any], list[tuple[Path, dict]]]:
    """The board of the summaries ``results_dir`` holds now (:func:`build_report`), and the summaries."""
    loaded, unreadable = scan_runs(results_dir)
    own = {str(s.get("run")): s for _, s in loaded if s.get("status") == "complete"}
    mine = [own[name] for name in own_runs if name in own]
    board = lb.build([s for _, s in loaded], prefer or (lb.benchmark_hash(mine[0]) if mine else None))
    if prefer is not None:
        hashes = [*board["header"]["benchmark_hash"], *board["other_benchmarks"]]
        matches = [h for h in hashes if h.startswith(prefer)]
        if len(matches) != 1:
            what = "more than one benchmark starts with" if matches else "no complete runs of benchmark"
            raise DataError(results_dir / "runs", f"{what} '{prefer}'; it holds {_benchmarks(board)}")
    if not board["rows"] and not board["incomplete"]:
        damaged = f"; {len(unreadable)} damaged, named above: {REPAIR}" if unreadable else ""
        raise DataError(
            results_dir / "runs", f"no complete run summaries to build a leaderboard from{damaged}"
        )
    if board["ignored_runs"]:
        print(
            f"note: {len(board['ignored_runs'])} run(s) from another config/dataset or unfinished "
            f"are not in the leaderboard (see leaderboard.json ignored_runs)",
            file=sys.stderr,
        )
    if board["other_benchmarks"]:
        print(
            f"note: this board is benchmark {_benchmarks(board, 'board')}; the directory also holds complete "
            f"runs of {_benchmarks(board, 'others')} (`report --benchmark HASH` shows one)",
            file=sys.stderr,
        )
    board["unreadable_runs"] = unreadable
    return board, loaded

"""Rebuild results/leaderboard.{md,csv,json,tex} and results/plots/*.png from results/runs/*/summary.json.

Everything written is a pure function of the summaries (and the overlays.npz beside them): fixed
decimals, sorted keys, seeded resampling, no wall-clock timestamps, so re-running ``report`` gives
byte-identical files. Every file is replaced atomically (benchmark.core.files): a kill or a full disk
leaves the previous leaderboard whole, never a truncated one.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.core.config import SCHEMA_VERSION
from benchmark.core.files import atomic_path
from benchmark.core.summary import SUMMARY_NAME, read_summary
from benchmark.reporting import leaderboard as lb
from benchmark.reporting.tables import csv_table, latex, legend, markdown
from datamodules.errors import DataError

N_POS, N_NEG = 3, 2  # overlay columns: the first positive and negative outer-fold images shared by all
TABLES = ("leaderboard.md", "leaderboard.csv", "leaderboard.json", "leaderboard.tex")


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


def load_summaries(results_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """(run directory, summary) for every readable runs/*/summary.json, sorted by directory name.

    Summaries of another schema version are refused (DataError naming them): mixing the old in-sample
    scores with out-of-fold ones would rank models on different protocols. Unreadable ones are skipped.
    """
    out, refused = [], []
    for path in sorted((results_dir / "runs").glob(f"*/{SUMMARY_NAME}")):
        try:
            out.append((path.parent, read_summary(path)))
        except DataError as exc:
            version = _schema_version(path)
            if isinstance(version, int) and not isinstance(version, bool) and version != SCHEMA_VERSION:
                refused.append((path, version))
            else:
                print(f"warning: skipping {exc}", file=sys.stderr)
    if refused:
        raise schema_error(refused)
    return out


def _round(value: Any) -> Any:
    """Round floats to 6 decimals everywhere so the JSON text is stable across platforms."""
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_round(v) for v in value]
    return value


def render_tables(board: dict[str, Any]) -> dict[str, str]:
    """File name -> text of leaderboard.md, .csv, .json and .tex."""
    columns, rows = csv_table(board)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    payload = _round({**board, "legend": legend(board)})
    texts = [
        markdown(board),
        buf.getvalue(),
        json.dumps(payload, sort_keys=True, indent=2) + "\n",
        latex(board),
    ]
    return dict(zip(TABLES, texts))


def write_together(files: dict[Path, str]) -> list[Path]:
    """Write every file to a temp name and fsync it before the first rename: a failure renames none."""
    with contextlib.ExitStack() as stack:
        for path, text in files.items():
            stack.enter_context(atomic_path(path)).write_bytes(text.encode())
    return list(files)


def write_tables(board: dict[str, Any], results_dir: Path) -> list[Path]:
    """leaderboard.md, .csv, .json and .tex in ``results_dir`` (rendered first, then written together)."""
    texts = render_tables(board)
    return write_together({results_dir / name: text for name, text in texts.items()})


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
        run_dir, summary = chosen[model]
        path = run_dir / str(summary.get("overlays") or "overlays.npz")
        if path.is_file():
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


def write_plots(board: dict[str, Any], loaded: list[tuple[Path, dict]], results_dir: Path) -> list[Path]:
    """leaderboard.png, overlays.png and curves.png in ``results_dir/plots``."""
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
    out = results_dir / "plots"
    return [
        plots.leaderboard_png(board["rows"], out / "leaderboard.png", f"nerve-bench leaderboard ({tag})"),
        plots.overlays_png(
            _overlay_panels(chosen, order), out / "overlays.png", f"Outer-fold overlays ({tag}; {where})"
        ),
        plots.curves_png(
            [(m, chosen[m][1].get("history") or {}) for m in order],
            out / "curves.png",
            f"Training curves ({tag}; {where})",
        ),
    ]


def build_report(results_dir: str | Path, plots: bool = True) -> dict[str, Any]:
    """Rebuild every leaderboard file from the run summaries; returns the leaderboard dict."""
    results_dir = Path(results_dir)
    loaded = load_summaries(results_dir)
    board = lb.build([s for _, s in loaded])
    if not board["rows"] and not board["incomplete"]:
        raise DataError(results_dir / "runs", "no complete run summaries to build a leaderboard from")
    if board["ignored_runs"]:
        print(
            f"note: {len(board['ignored_runs'])} run(s) from another config/dataset or unfinished "
            f"are not in the leaderboard (see leaderboard.json ignored_runs)",
            file=sys.stderr,
        )
    results_dir.mkdir(parents=True, exist_ok=True)
    write_tables(board, results_dir)
    if plots:
        write_plots(board, loaded, results_dir)
    return board

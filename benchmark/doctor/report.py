"""The doctor's results: one guarded row per check, rendered as text tables or as JSON.

A check is a function returning a :class:`Finding` (a one-line detail and its figures). It may
raise :class:`Skip` when it does not apply to this box (a 2-GPU step on a 1-GPU box); any other
exception makes its row FAIL with a one-line reason while the remaining checks still run. WARN
is a finding that does not stop the benchmark but that the user must know (a rerun that is not
bit-identical). Only FAIL makes the command exit non-zero.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

OK, WARN, SKIP, FAIL = "OK", "WARN", "SKIP", "FAIL"
REASON_CHARS = 240


class Skip(Exception):  # noqa: N818 - a verdict, not an error
    """The check does not apply here; the message says why."""


@dataclass
class Finding:
    detail: str
    figures: dict[str, Any] = field(default_factory=dict)
    status: str = OK


@dataclass
class CheckResult:
    name: str
    status: str
    detail: str
    seconds: float
    figures: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line, cut to REASON_CHARS."""
    text = " ".join(str(exc).split()) or "(no message)"
    line = f"{type(exc).__name__}: {text}"
    return line if len(line) <= REASON_CHARS else line[: REASON_CHARS - 3] + "..."


def run_check(name: str, check: Callable[[], Finding]) -> CheckResult:
    """Run one check; its exception becomes a FAIL row, never the end of the doctor."""
    start = time.perf_counter()
    try:
        found = check()
    except Skip as exc:
        return CheckResult(name, SKIP, str(exc), time.perf_counter() - start)
    except Exception as exc:  # noqa: BLE001 - one broken check must not hide the others
        return CheckResult(name, FAIL, one_line(exc), time.perf_counter() - start)
    return CheckResult(name, found.status, found.detail, time.perf_counter() - start, found.figures)


def _render(head: list[str], rows: list[list[str]], left: int = 1) -> str:
    """Fixed-width columns; the first ``left`` columns left-aligned, the others right-aligned."""
    lines = [head, *rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = []
    for line in lines:
        cells = [c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)


def checks_table(results: list[CheckResult]) -> str:
    """check | status | seconds | detail."""
    rows = [[r.name, r.status, f"{r.seconds:.1f}", r.detail] for r in results]
    text = _render(["check", "status", "s"], [row[:3] for row in rows], left=2)
    head, *body = text.splitlines()
    return "\n".join([f"{head}  detail", *(f"{line}  {row[3]}" for line, row in zip(body, rows))])


MODEL_COLUMNS = (
    ("model", "model"),
    ("fit s", "fit_s"),
    ("rerun identical", "bit_identical"),
    ("ops warned", "nondeterministic_ops"),
    ("suite img/s", "suite_train_img_s"),
    ("plain img/s", "plain_train_img_s"),
    ("ceiling img/s", "ceiling_train_img_s"),
    ("suite/plain", "ratio_suite_vs_plain"),
    ("suite/ceiling", "ratio_suite_vs_ceiling"),
    ("det off/on", "deterministic_speedup"),
    ("infer img/s", "infer_img_s"),
    ("latency ms", "latency_ms"),
)


def fmt(value: Any) -> str:
    """A figure for the table: text as is, yes/no, a list comma-joined ('none' if empty), 2 decimals
    below 100, none above, '-' if absent."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "none"
    if isinstance(value, (int, float)):
        return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def models_table(results: list[CheckResult]) -> str:
    """One row per model check with its figures ('-' where a step failed or does not apply)."""
    rows = [
        [
            fmt(r.figures.get(key, r.name.split(" ", 1)[-1] if key == "model" else None))
            for _, key in MODEL_COLUMNS
        ]
        for r in results
    ]
    return _render([title for title, _ in MODEL_COLUMNS], rows)


def exit_code(results: list[CheckResult]) -> int:
    """1 when any check failed, else 0 (WARN and SKIP do not fail the box)."""
    return 1 if any(r.status == FAIL for r in results) else 0

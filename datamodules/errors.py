"""Errors that the CLI turns into one clear line and exit code 2 (never a traceback)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class NerveBenchError(Exception):
    """Base for user-facing errors: bad data, bad config, bad checkpoint."""


class DataError(NerveBenchError, ValueError):
    """A dataset file or directory is missing or malformed.

    The message always starts with the offending path, so a user knows which file to fix. ``kind``
    is the problem without what differs from file to file (a byte count, a line number, a shape):
    :class:`DataErrors` groups by it. It defaults to the whole problem.
    """

    def __init__(self, path: str | Path, problem: str, kind: str | None = None) -> None:
        self.path = Path(path)
        self.problem = problem
        self.kind = kind or problem
        super().__init__(f"{path}: {problem}")


class DataErrors(DataError):
    """Several problems at once: a damaged copy of the data often has many bad files, and a user
    should fix them all in one pass rather than meet them one run at a time.

    Up to ``SHOWN`` problems, a line each. Beyond that a line per kind of problem, naming the first
    file that has it and how many more share it (5,635 truncated frames are one line, not 5,635),
    at most ``SHOWN`` lines; ``data check --json`` lists every one.
    """

    SHOWN = 20

    def __init__(self, where: str | Path, errors: Sequence[DataError]) -> None:
        self.errors = list(errors)
        if len(self.errors) <= self.SHOWN:
            lines = [str(err) for err in self.errors]
        else:
            lines = _grouped(self.errors, self.SHOWN) + ["(data check --json lists every one)"]
        super().__init__(where, f"{len(self.errors)} problems:\n  " + "\n  ".join(lines))

    def to_list(self) -> list[dict[str, str]]:
        return [{"path": str(e.path), "problem": e.problem, "kind": e.kind} for e in self.errors]


def _grouped(errors: list[DataError], shown: int) -> list[str]:
    groups: dict[str, list[DataError]] = {}
    for err in errors:
        groups.setdefault(err.kind, []).append(err)
    lines = [_group_line(group) for group in list(groups.values())[:shown]]
    if len(groups) > shown:
        hidden = sum(len(g) for g in list(groups.values())[shown:])
        lines.append(f"... and {hidden} more, of {len(groups) - shown} other kinds")
    return lines


def _group_line(group: list[DataError]) -> str:
    first, more = group[0], len(group) - 1
    what = "with the same problem" if first.kind == first.problem else f"of this kind: {first.kind}"
    return str(first) + (f" (and {more} more {what})" if more else "")


def raise_all(where: str | Path, errors: Sequence[DataError]) -> None:
    """Raise nothing, the one error as it is, or every error together as :class:`DataErrors`."""
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise DataErrors(where, errors)


def collect(errors: list[DataError], fn: Callable[[], T]) -> T | None:
    """``fn()``, or None with its DataError(s) added to ``errors``. The tracebacks are dropped: they
    would keep every bad file's decoded pixels alive until the list is reported."""
    try:
        return fn()
    except DataErrors as exc:
        errors.extend(exc.errors)
    except DataError as exc:
        errors.append(exc.with_traceback(None))
    return None

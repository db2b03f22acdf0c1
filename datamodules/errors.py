"""Errors that the CLI turns into one clear line and exit code 2 (never a traceback)."""

from __future__ import annotations

from pathlib import Path


class NerveBenchError(Exception):
    """Base for user-facing errors: bad data, bad config, bad checkpoint."""


class DataError(NerveBenchError, ValueError):
    """A dataset file or directory is missing or malformed.

    The message always starts with the offending path, so a user knows which file to fix.
    """

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")

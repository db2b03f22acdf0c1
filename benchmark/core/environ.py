"""Environment variables set for a block and put back afterwards, however the block ends."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping


@contextlib.contextmanager
def environ(values: Mapping[str, str | None]) -> Iterator[dict[str, str | None]]:
    """Set ``values`` (``None``: unset) for the block; yield the values they replace (``None`` where
    unset); on exit, each is as it was before: set to its old value, or unset."""
    saved = {name: os.environ.get(name) for name in values}
    for name, value in values.items():
        _put(name, value)
    try:
        yield dict(saved)
    finally:
        for name, value in saved.items():
            _put(name, value)


def _put(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value

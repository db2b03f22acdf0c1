"""How the leaderboard writes a number, an interval and a p-value (fixed decimals, "n/a" when
missing), shared by its tables and its notes."""

from __future__ import annotations

import re
from typing import Any


def fmt(value: float | None, decimals: int = 3, scale: float = 1.0) -> str:
    return "n/a" if value is None else f"{value * scale:.{decimals}f}"


def fmt_ci(m: dict[str, Any], decimals: int = 3) -> str:
    if m["mean"] is None:
        return "n/a"
    if m["lo"] is None:
        return f"{m['mean']:.{decimals}f}"
    return f"{m['mean']:.{decimals}f} [{m['lo']:.{decimals}f}, {m['hi']:.{decimals}f}]"


def fmt_p(p: float | None, tested: bool = True) -> str:
    """A p-value as the tables print it; ``untested`` where too few subjects left it uncomputed (its
    stored 1.0 is no result)."""
    if p is None:
        return "n/a"
    if not tested:
        return "untested"
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def code_span(text: str) -> str:
    """``text`` as a Markdown code span, whatever backticks it holds (CommonMark: a longer fence)."""
    fence = "`" * (1 + max((len(r) for r in re.findall("`+", text)), default=0))
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"

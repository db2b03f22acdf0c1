"""Where each model's code came from, read from the runs (``summary.json``'s ``model_source``): the
package that registered it, that package's version and the paper it cites. A plugin's row is then
traceable to its code, and runs of one model made with two versions of it show both."""

from __future__ import annotations

import json
from typing import Any

from benchmark.reporting.cells import code_span


def model_sources(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, str]]]:
    """``{model: [each distinct source of its runs]}``, sorted; runs without one (written before the
    field, or an imported outside method's) add nothing."""
    found: dict[str, set[str]] = {}
    for s in runs:
        if isinstance(s.get("model_source"), dict):
            found.setdefault(str(s["model"]), set()).add(json.dumps(s["model_source"], sort_keys=True))
    return {m: [json.loads(v) for v in sorted(vs)] for m, vs in sorted(found.items())}


def source_lines(header: dict[str, Any]) -> list[str]:
    """One Markdown list item per model: its paper, then its package and version (several: each)."""
    lines = []
    for model, sources in (header.get("model_sources") or {}).items():
        made = "; ".join(f"{s.get('package', '?')} {s.get('version', '?')}" for s in sources)
        papers = sorted({s.get("paper") or "" for s in sources} - {""})
        lines.append(f"- {code_span(model)}: {'; '.join(papers) or 'no paper given'} ({made})")
    return lines

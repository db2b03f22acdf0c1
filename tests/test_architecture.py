"""The package layout is a contract: layers import downwards only, no private names cross modules,
and docs/architecture.md lists every module (so the map cannot drift from the code)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("datamodules", "models", "benchmark")
# Lower number = lower layer. The flow is data -> model -> train -> score -> report; the pure scoring
# functions sit below training because validation inside training uses them.
LAYERS = {
    "datamodules": 0,
    "models": 0,
    "benchmark.core": 1,
    "benchmark.scoring": 2,
    "benchmark.training": 3,
    "benchmark.evaluation": 4,
    "benchmark.reporting": 5,
    "benchmark": 6,  # pipeline, runner, executors, predict, speed, cli, commands
}


def _modules() -> list[tuple[str, Path]]:
    out = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            name = ".".join(rel.parts)
            out.append((name.removesuffix(".__init__"), path))
    return out


def _layer(module: str) -> tuple[str, int] | None:
    best = None
    for prefix, rank in LAYERS.items():
        if (module == prefix or module.startswith(prefix + ".")) and (
            best is None or len(prefix) > len(best[0])
        ):
            best = (prefix, rank)
    return best


def _imports(path: Path, module: str) -> list[tuple[str, list[str], int]]:
    """(imported module, imported names, line) for every import, including function-level ones."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found.append((base, [alias.name for alias in node.names], node.lineno))
    return found


MODULES = _modules()


@pytest.mark.parametrize("module,path", MODULES, ids=[m for m, _ in MODULES])
def test_imports_point_downwards_and_stay_public(module, path):
    own = _layer(module)
    assert own is not None, f"{module} belongs to no layer; add it to LAYERS"
    problems = []
    for target, names, line in _imports(path, module):
        layer = _layer(target)
        if layer is None:
            continue  # third-party or standard library
        if layer[1] > own[1]:
            problems.append(f"{path.name}:{line} imports {target} (layer {layer[0]} is above {own[0]})")
        if {layer[0], own[0]} == {"datamodules", "models"}:
            problems.append(f"{path.name}:{line}: models and datamodules stay independent")
        private = [n for n in names if n.startswith("_") and n != "__future__" and target != module]
        if private and target != "__future__":
            problems.append(f"{path.name}:{line} imports private {private} from {target}")
    assert not problems, "\n".join(problems)


def test_architecture_doc_lists_every_module():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    missing = [
        str(path.relative_to(ROOT))
        for module, path in MODULES
        if path.name != "__init__.py" and str(path.relative_to(ROOT)) not in doc
    ]
    assert not missing, f"docs/architecture.md does not mention: {', '.join(missing)}"


def test_architecture_doc_names_no_missing_module():
    """Every `pkg/…/name.py` path the doc mentions exists (a renamed module cannot linger there)."""
    import re

    doc = (ROOT / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"(?<![\w/])((?:benchmark|models|datamodules)/[\w/]+\.py)\b", doc))
    stale = sorted(p for p in named if not (ROOT / p).is_file())
    assert not stale, f"docs/architecture.md names modules that do not exist: {', '.join(stale)}"


def test_architecture_module_map_lists_each_module_once():
    """The map under "## Modules" names every module exactly once, and no section heading repeats
    (merged branches once appended the same sections twice)."""
    import collections
    import re

    doc = (ROOT / "docs" / "architecture.md").read_text()
    section = doc.split("\n## Modules\n", 1)[1].split("\n## ", 1)[0]
    pattern = r"(?<![\w/])((?:benchmark|models|datamodules)/[\w/]+\.py)\b"
    named = collections.Counter(re.findall(pattern, section))
    modules = {str(path.relative_to(ROOT)) for _, path in MODULES if path.name != "__init__.py"}
    assert {m: named[m] for m in modules if named[m] != 1} == {}
    headings = collections.Counter(line for line in doc.splitlines() if line.startswith("## "))
    assert [h for h, n in headings.items() if n > 1] == []

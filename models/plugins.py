"""Model plugins: packages outside this repository that register models through an entry point.

A plugin declares, in its ``pyproject.toml``::

    [project.entry-points."nerve_bench.models"]
    tiny_unet = "nerve_bench_example.model"

The value names a module, which is imported (its ``@register(...)`` decorators run), or a
``module:function``, which is imported and called with no arguments. ``import models`` loads every
installed plugin once, after the built-in zoo, in the order of the distributions' names. A plugin
that fails (it does not import, it registers a name that is taken, its registration function raises)
gets ONE warning line naming the plugin, its package and the problem; whatever it had registered is
removed again, and every other model still loads. ``examples/plugin_model/`` is a complete plugin,
and docs/adding-a-model.md the walk-through.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from models.registry import registering_for, unregister

GROUP = "nerve_bench.models"


@dataclass(frozen=True)
class Plugin:
    """One loaded entry point and the model names it registered."""

    key: tuple[str, str]  # (distribution, entry-point name): loaded at most once
    package: str
    entry_point: str  # "name = value", as declared
    names: tuple[str, ...]


_LOADED: dict[tuple[str, str], Plugin] = {}
_PROBLEMS: dict[tuple[str, str], str] = {}


def _package(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.name if dist is not None else "unknown package"


def _problem(exc: BaseException) -> str:
    """The exception as one line (an ImportError's text already names the missing module)."""
    if isinstance(exc, SystemExit):
        return f"it called sys.exit({exc.code!r}) while loading (an argparse error at import does)"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:240]}" if text else type(exc).__name__


def _load(ep: EntryPoint, package: str) -> tuple[str, ...]:
    with registering_for(package) as added:
        obj = ep.load()
        if ep.attr is not None:  # "module:function": a registration function
            if not callable(obj):
                raise TypeError(f"{ep.value} is not a function (name a module, or a zero-argument function)")
            obj()
    if not added:
        raise LookupError(f"{ep.value} registered no model (decorate a factory with models.register)")
    return tuple(added)


def load_plugins() -> list[Plugin]:
    """Load the installed plugins not loaded yet; returns the newly loaded ones.

    Problems are printed once each (one line on stderr) and kept for :func:`plugin_problems`.
    """
    found = sorted(entry_points(group=GROUP), key=lambda ep: (_package(ep).lower(), ep.name))
    loaded = []
    for ep in found:
        package = _package(ep)
        key = (package, ep.name)
        if key in _LOADED or key in _PROBLEMS:
            continue
        try:
            plugin = Plugin(key, package, f"{ep.name} = {ep.value}", _load(ep, package))
        # Any plugin failure: one line, the zoo stays up. SystemExit too: a plugin that parses the
        # command line or exits at import would otherwise end every command that loads the models.
        except (Exception, SystemExit) as exc:  # noqa: BLE001
            _PROBLEMS[key] = f"model plugin {ep.name!r} ({package}) not loaded: {_problem(exc)}"
            print(f"warning: {_PROBLEMS[key]}", file=sys.stderr)
            continue
        _LOADED[key] = plugin
        loaded.append(plugin)
    return loaded


def failed_plugins() -> dict[tuple[str, str], str]:
    """(distribution, entry-point name) -> the warning line, for every plugin that failed to load."""
    return dict(_PROBLEMS)


def plugin_problems() -> list[str]:
    """One line per plugin that failed to load, as warned."""
    return list(_PROBLEMS.values())


def forget_plugin(plugin: Plugin | tuple[str, str]) -> None:
    """Unregister a loaded plugin's models (or forget a failed one), so ``load_plugins`` may retry it.

    For tests and notebooks; the plugin's modules stay imported.
    """
    key = plugin.key if isinstance(plugin, Plugin) else plugin
    _PROBLEMS.pop(key, None)
    loaded = _LOADED.pop(key, None)
    for name in loaded.names if loaded else ():
        unregister(name)

"""Model registry: ``register(name)``, ``create(name, **kwargs)``, ``list_models()``.

Every model is a plain ``nn.Module`` taking ``(B, 1, H, W)`` and returning logits:
a tensor ``(B, 1, H, W)``, or for multi-head models a dict with at least ``"mask"``.
Besides the registered names, ``smp:<arch>:<encoder>`` builds any smp architecture with
any smp or timm (``tu-``) encoder; those resolve through a registered *prefix* factory.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


class ModelError(ValueError):
    """Unknown or duplicate model name, or bad model arguments."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    factory: Callable[..., nn.Module]
    paper: str = ""  # citation or source of the architecture


@dataclass(frozen=True)
class _Prefix:
    factory: Callable[..., nn.Module]  # called as factory(full_name, **kwargs)
    paper: Callable[[str], str]  # full name -> source description


_MODELS: dict[str, ModelInfo] = {}
_PREFIXES: dict[str, _Prefix] = {}


def register(name: str, paper: str = "") -> Callable:
    """Decorator registering a factory (a class or a function returning an nn.Module)."""

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ModelError(f"model name {name!r} is already registered")
        _MODELS[name] = ModelInfo(name, factory, paper)
        return factory

    return wrap


def register_prefix(prefix: str, paper: str | Callable[[str], str] = "") -> Callable:
    """Decorator for a factory handling every ``<prefix>:...`` name; it receives the full name.

    ``paper`` is a fixed source string or a function of the full name.
    """

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if prefix in _PREFIXES:
            raise ModelError(f"model prefix {prefix!r} is already registered")
        describe = paper if callable(paper) else (lambda name: paper or f"generic {prefix}")
        _PREFIXES[prefix] = _Prefix(factory, describe)
        return factory

    return wrap


def list_models() -> list[str]:
    """The registered names, in registration order (the default benchmark set)."""
    return list(_MODELS)


def get_info(name: str) -> ModelInfo:
    """Registry entry for ``name`` (a registered name or ``<prefix>:...``); ModelError if unknown."""
    if name in _MODELS:
        return _MODELS[name]
    prefix = name.split(":", 1)[0]
    if ":" in name and prefix in _PREFIXES:
        entry = _PREFIXES[prefix]
        return ModelInfo(name, lambda **kw: entry.factory(name, **kw), entry.paper(name))
    close = difflib.get_close_matches(name, list(_MODELS), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    known = ", ".join(list(_MODELS) + [f"{p}:<arch>:<encoder>" for p in _PREFIXES])
    raise ModelError(f"unknown model {name!r}{hint} (known: {known})")


def _check_kwargs(name: str, factory: Callable[..., nn.Module], kwargs: dict) -> None:
    """Reject unknown keyword arguments up front, listing the accepted ones."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        names = [p for p in params if p != "self"]
        close = [c for u in unknown for c in difflib.get_close_matches(u, names, n=1, cutoff=0.6)]
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        listed = f"unknown argument(s) {', '.join(unknown)}{hint} (accepted: {', '.join(names)})"
        raise ModelError(f"model {name!r}: {listed}")


def check_kwargs(name: str, kwargs: dict) -> None:
    """ModelError where ``create(name, **kwargs)`` would refuse the name or an argument, building nothing.

    Benchmarks call this for every run before the first one starts. A factory that passes
    ``**kwargs`` on may carry a ``kwargs_check(name, kwargs)`` attribute that checks those too.
    """
    get_info(name)
    if name in _MODELS:
        factory = _MODELS[name].factory
        _check_kwargs(name, factory, kwargs)
    else:
        factory = _PREFIXES[name.split(":", 1)[0]].factory
    hook = getattr(factory, "kwargs_check", None)
    if callable(hook):
        hook(name, kwargs)


def create(name: str, **kwargs: object) -> nn.Module:
    """Build model ``name``; unknown names or arguments raise ModelError."""
    info = get_info(name)
    if name in _MODELS:
        _check_kwargs(name, info.factory, kwargs)
    return info.factory(**kwargs)

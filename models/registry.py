"""Model registry: ``register(name)``, ``create(name, **kwargs)``, ``list_models()``.

Every model is a plain ``nn.Module`` taking ``(B, 1, H, W)`` and returning logits:
a tensor ``(B, 1, H, W)``, or for multi-head models a dict with at least ``"mask"``.
Besides the registered names, ``smp:<arch>:<encoder>`` builds any smp architecture with
any smp or timm (``tu-``) encoder; those resolve through a registered *prefix* factory.
"""

from __future__ import annotations

import difflib
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


_MODELS: dict[str, ModelInfo] = {}
_PREFIXES: dict[str, Callable[..., nn.Module]] = {}


def register(name: str, paper: str = "") -> Callable:
    """Decorator registering a factory (a class or a function returning an nn.Module)."""

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ModelError(f"model name {name!r} is already registered")
        _MODELS[name] = ModelInfo(name, factory, paper)
        return factory

    return wrap


def register_prefix(prefix: str) -> Callable:
    """Decorator for a factory handling every ``<prefix>:...`` name; it receives the full name."""

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if prefix in _PREFIXES:
            raise ModelError(f"model prefix {prefix!r} is already registered")
        _PREFIXES[prefix] = factory
        return factory

    return wrap


def list_models() -> list[str]:
    """The registered names, in registration order (the default benchmark set)."""
    return list(_MODELS)


def get_info(name: str) -> ModelInfo:
    if name in _MODELS:
        return _MODELS[name]
    prefix = name.split(":", 1)[0]
    if ":" in name and prefix in _PREFIXES:
        return ModelInfo(name, lambda **kw: _PREFIXES[prefix](name, **kw), "generic " + prefix)
    close = difflib.get_close_matches(name, list(_MODELS), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    known = ", ".join(list(_MODELS) + [f"{p}:<arch>:<encoder>" for p in _PREFIXES])
    raise ModelError(f"unknown model {name!r}{hint} (known: {known})")


def create(name: str, **kwargs: object) -> nn.Module:
    """Build model ``name``; unknown names raise ModelError with close matches."""
    return get_info(name).factory(**kwargs)

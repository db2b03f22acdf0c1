"""Model registry: ``register(name, paper=..., check=...)``, ``create(name, **kwargs)``, ``list_models()``.

Every model is a plain ``nn.Module`` taking ``(B, 1, H, W)`` and returning logits:
a tensor ``(B, 1, H, W)``, or for multi-head models a dict with at least ``"mask"``.
Besides the registered names, ``smp:<arch>:<encoder>`` builds any smp architecture with
any smp or timm (``tu-``) encoder; those resolve through a registered *prefix* factory.

The protocol is explicit, with nothing read from attributes of the factory:

- ``register(name, paper="", check=None)`` decorates a factory (a class or a function returning an
  ``nn.Module``). A factory that spells out its keyword arguments gets unknown names rejected from
  its signature; ``check(name, kwargs)`` may reject more (values, or the arguments a factory passes
  on through ``**kwargs``) by raising :class:`ModelError`. Both run before anything is built:
  ``check_kwargs`` runs them for every run of a grid before the first one starts, ``create`` again.
- Every entry records the package that registered it (``ModelInfo.package``): ``nerve-bench`` for
  the built-in zoo, the distribution's name for a plugin (``models.plugins``).
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from torch import nn

BUILTIN = "nerve-bench"  # the package of the built-in zoo

Factory = Callable[..., nn.Module]
Check = Callable[[str, dict], None]  # check(name, kwargs): raise ModelError for what the factory refuses


class ModelError(ValueError):
    """Unknown or duplicate model name, or bad model arguments."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    factory: Factory
    paper: str = ""  # citation or source of the architecture
    check: Check | None = None  # extra argument check, run before the factory (see the module docstring)
    package: str = BUILTIN  # the distribution that registered the model


@dataclass(frozen=True)
class _Prefix:
    factory: Callable[..., nn.Module]  # called as factory(full_name, **kwargs)
    paper: Callable[[str], str]  # full name -> source description
    check: Check | None
    package: str


_MODELS: dict[str, ModelInfo] = {}
_PREFIXES: dict[str, _Prefix] = {}
_PACKAGE: list[str] = []  # innermost `registering_for` package; empty: inferred from the factory's module
_EXTRAS: set[str] = set()  # registered, but outside the default set (they need an optional extra)


def _package_of(factory: Callable) -> str:
    """The package registering ``factory``: the plugin loader's, else the one its module belongs to."""
    if _PACKAGE:
        return _PACKAGE[-1]
    top = (getattr(factory, "__module__", None) or "").split(".", 1)[0]
    if top in ("models", ""):
        return BUILTIN
    from importlib.metadata import packages_distributions

    return (packages_distributions().get(top) or [top])[0]


def _check_name(name: str, kind: str) -> None:
    if not isinstance(name, str) or not name or ":" in name or name != name.strip():
        raise ModelError(f"model {kind} {name!r}: must be a non-empty name without ':' or outer spaces")


def _owner(name: str) -> str:
    return _MODELS[name].package if name in _MODELS else _PREFIXES[name].package


def register(
    name: str, paper: str = "", check: Check | None = None, default: bool = True
) -> Callable[[Factory], Factory]:
    """Decorator registering a factory under ``name``; ``check(name, kwargs)`` vets its arguments.

    ``default=False``: a model of an optional extra (e.g. nnU-Net's networks); ``create`` builds it,
    but it is not in the default benchmark set that ``list_models()`` returns.
    """
    _check_name(name, "name")
    if check is not None and not callable(check):
        raise ModelError(f"model {name!r}: check must be a function check(name, kwargs), got {check!r}")

    def wrap(factory: Factory) -> Factory:
        if name in _MODELS:
            raise ModelError(f"model name {name!r} is already registered (by {_owner(name)})")
        _MODELS[name] = ModelInfo(name, factory, paper, check, _package_of(factory))
        if not default:
            _EXTRAS.add(name)
        return factory

    return wrap


def register_prefix(
    prefix: str, paper: str | Callable[[str], str] = "", check: Check | None = None
) -> Callable[[Factory], Factory]:
    """Decorator for a factory handling every ``<prefix>:...`` name; it receives the full name.

    ``paper`` is a fixed source string or a function of the full name; ``check(full_name, kwargs)``
    vets the name's parts and the arguments before anything is built.
    """
    _check_name(prefix, "prefix")

    def wrap(factory: Factory) -> Factory:
        if prefix in _PREFIXES:
            raise ModelError(f"model prefix {prefix!r} is already registered (by {_owner(prefix)})")
        describe = paper if callable(paper) else (lambda name: paper or f"generic {prefix}")
        _PREFIXES[prefix] = _Prefix(factory, describe, check, _package_of(factory))
        return factory

    return wrap


@contextlib.contextmanager
def registering_for(package: str) -> Iterator[list[str]]:
    """Attribute the registrations inside the block to ``package``; yields the names it registers.

    If the block raises, every name and prefix it registered is removed again, so a plugin that fails
    half-way leaves the registry as it found it.
    """
    models, prefixes = set(_MODELS), set(_PREFIXES)
    added: list[str] = []
    _PACKAGE.append(package)
    try:
        yield added
    except BaseException:
        for name in set(_MODELS) - models:
            del _MODELS[name]
        for prefix in set(_PREFIXES) - prefixes:
            del _PREFIXES[prefix]
        raise
    finally:
        _PACKAGE.pop()
        added += [n for n in _MODELS if n not in models] + [p for p in _PREFIXES if p not in prefixes]


def unregister(name: str) -> None:
    """Remove a registered name or prefix (unloading a plugin; tests)."""
    if name not in _MODELS and name not in _PREFIXES:
        raise ModelError(f"model {name!r} is not registered")
    _MODELS.pop(name, None)
    _PREFIXES.pop(name, None)
    _EXTRAS.discard(name)


def list_models(package: str | None = None, extras: bool = False) -> list[str]:
    """The registered names in registration order: the built-in zoo first, then plugins.

    ``package`` keeps only one package's models, e.g. ``list_models(BUILTIN)`` for the built-in zoo;
    ``extras`` adds the models of optional extras (registered with ``default=False``).
    """
    return [
        name
        for name, info in _MODELS.items()
        if (package is None or info.package == package) and (extras or name not in _EXTRAS)
    ]


def get_info(name: str) -> ModelInfo:
    """Registry entry for ``name`` (a registered name or ``<prefix>:...``); ModelError if unknown."""
    if name in _MODELS:
        return _MODELS[name]
    prefix = name.split(":", 1)[0]
    if ":" in name and prefix in _PREFIXES:
        entry = _PREFIXES[prefix]
        factory = _bind(entry.factory, name)
        return ModelInfo(name, factory, entry.paper(name), entry.check, entry.package)
    close = difflib.get_close_matches(name, list(_MODELS), n=3, cutoff=0.5)
    if ":" in name:  # a mistyped prefix ("smpx:unet:resnet34"): suggest the prefix, the rest kept
        close[:0] = [
            f"{p}:{name.split(':', 1)[1]}" for p in difflib.get_close_matches(prefix, list(_PREFIXES), n=1)
        ]
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    known = ", ".join(list(_MODELS) + [f"{p}:<arch>:<encoder>" for p in _PREFIXES])
    raise ModelError(f"unknown model {name!r}{hint} (known: {known})")


def _bind(factory: Callable[..., nn.Module], name: str) -> Factory:
    def bound(**kwargs: object) -> nn.Module:
        return factory(name, **kwargs)

    return bound


def _check_signature(name: str, factory: Factory, kwargs: dict) -> None:
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

    Runs the signature check (registered names whose factory lists its arguments) and the entry's
    ``check``. A ``check`` that fails with anything but ModelError is a bug in that check: it is
    reported as a ModelError naming the model and the package it came from.
    """
    info = get_info(name)
    if name in _MODELS:
        _check_signature(name, info.factory, kwargs)
    if info.check is None:
        return
    try:
        info.check(name, dict(kwargs))
    except ModelError as exc:  # named as the user wrote it (an smp entry speaks of its smp:arch:encoder)
        if str(exc).startswith((f"model {name!r}", f"{name}:")):
            raise
        raise ModelError(f"model {name!r}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a third-party check must not escape as a traceback
        raise ModelError(f"model {name!r} ({info.package}): its check failed: {_one_line(exc)}") from exc


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def create(name: str, **kwargs: object) -> nn.Module:
    """Build model ``name`` after :func:`check_kwargs`; unknown names or arguments raise ModelError."""
    check_kwargs(name, kwargs)
    return get_info(name).factory(**kwargs)

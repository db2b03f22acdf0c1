"""Typed parsing of config values and composed YAML config files (no config classes here).

Values from YAML files and from ``--set key=value`` are parsed by the declared type of the field
they set, so ``--set lr=3e-4`` is a float although YAML 1.1 reads ``3e-4`` as a string, ``none``
is null only for optional fields, and booleans are ``true``/``false`` only. A YAML file may name
``base: other.yaml`` (relative to itself) and override its keys: mappings merge key by key, lists
and scalars replace, and a cycle of bases is refused.
"""

from __future__ import annotations

import math
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from datamodules.errors import NerveBenchError

_NULLS = ("none", "null", "~", "")
# What a benchmark file names (the rest has defaults); an empty file lists them in its error.
EXPECTED_KEYS = ("models", "folds", "seeds", "train")


class ConfigError(NerveBenchError):
    """An unknown key, a wrong type or an invalid value in a config or override."""


# Dates, and YAML 1.1's booleans (true/false are added back below; yes/no/on/off are refused) and
# numbers (YAML 1.2's are added back below: 017 was 15, 3:00 was 180, 1_0 was 10, 0b11 was 3).
_DROPPED = ("tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:bool", "tag:yaml.org,2002:int",
            "tag:yaml.org,2002:float")  # fmt: skip
# YAML 1.2's numbers; config_text quotes a string of either form (``"1e5"``: a float without a dot,
# which YAML 1.1 reads as text) so that a printed config reads back to the same values.
INT_12 = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
FLOAT_12 = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
_WORD_BOOL = "tag:nerve-bench,2026:yaml11-bool"


class _Loader(yaml.SafeLoader):
    """PyYAML's YAML 1.1 with YAML 1.2's scalars: its numbers (``3e-4`` a float; ``017`` 17, not
    octal; no sexagesimal ``3:00``, no ``1_0``), true/false the only booleans, no timestamps (no
    config field is a date: ``seed: 2024-01-01`` stays text and is refused by type, not parsed into
    a date or a traceback). Refused, naming the line: a repeated key
    (PyYAML would keep the last one silently), and an unquoted yes/no/on/off, which YAML 1.1 reads as
    a boolean and YAML 1.2 as text, so ``presence_head: no`` in model_kwargs (never type-checked here)
    would be the text "no", which a factory takes as true."""

    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag not in _DROPPED]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`, expanded by PyYAML below
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark
                )
            seen.add(key if isinstance(key, typing.Hashable) else id(key_node))
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver("tag:yaml.org,2002:int", INT_12, list("-+0123456789"))  # before floats
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", FLOAT_12, list("-+0123456789."))


def _int_12(loader: yaml.SafeLoader, node: yaml.Node) -> int:
    """A YAML 1.2 integer: decimal (leading zeros too), 0o octal, 0x hexadecimal."""
    text = str(loader.construct_scalar(node))  # type: ignore[arg-type]
    return int(text[2:], 8) if text.startswith("0o") else int(text, 16 if text.startswith("0x") else 10)


_Loader.add_constructor("tag:yaml.org,2002:int", _int_12)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    _WORD_BOOL, re.compile(r"^(?:yes|Yes|YES|no|No|NO|on|On|ON|off|Off|OFF)$"), list("yYnNoO")
)


def _refuse_word_bool(loader: yaml.SafeLoader, node: yaml.Node) -> None:
    raise yaml.constructor.ConstructorError(
        None, None, f"{node.value}: write true or false (or quote it as text)", node.start_mark
    )


_Loader.add_constructor(_WORD_BOOL, _refuse_word_bool)


def load_yaml(text: str, source: str) -> Any:
    """``text`` parsed as YAML (safe), or ConfigError naming ``source`` and the line."""
    try:
        data = yaml.load(text, Loader=_Loader)
        _check_expanded_size(data)
        return data
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise ConfigError(f"{where}: invalid YAML ({getattr(exc, 'problem', None) or exc})") from None
    except (ValueError, RecursionError) as exc:  # a value the constructor refuses; nesting too deep
        why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise ConfigError(f"{source}: invalid YAML ({why})") from None


MAX_YAML_VALUES = 100_000  # a config has hundreds; an alias bomb (13 lines) expands to billions


def _check_expanded_size(data: Any) -> None:
    """ValueError when ``data``, its aliases expanded, holds more than MAX_YAML_VALUES values:
    PyYAML shares an aliased value, and the first copy of it (the run's config) took the memory."""
    seen, stack = 0, [data]
    while stack:
        item = stack.pop()
        seen += 1
        if seen > MAX_YAML_VALUES:
            raise ValueError(f"more than {MAX_YAML_VALUES:,} values once its aliases are expanded")
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _scalar(value: Any, tp: type) -> Any:
    """``value`` as the scalar type ``tp``; ValueError when it is not one (bools never pass as numbers)."""
    text = value.strip() if isinstance(value, str) else None
    if tp is bool:
        if isinstance(value, bool) or text is not None and text.lower() in ("true", "false"):
            return value if isinstance(value, bool) else str(text).lower() == "true"
    elif isinstance(value, bool):
        pass
    elif tp is int:
        if isinstance(value, int) or text is not None and re.fullmatch(r"[-+]?\d+", text):
            return int(value)
    elif tp is float:
        number = float(text) if text is not None else value
        if isinstance(number, (int, float)) and math.isfinite(number):
            return float(number)
    elif tp is str and isinstance(value, (str, int)):  # YAML reads `precision: 32` as an int
        return str(value)
    raise ValueError


def coerce(name: str, value: Any, tp: Any) -> Any:
    """``value`` (YAML or command line) as the declared type ``tp``; ConfigError naming ``name`` if not."""
    args = typing.get_args(tp)
    if isinstance(tp, types.UnionType):
        if type(None) in args and (
            value is None or isinstance(value, str) and value.strip().lower() in _NULLS
        ):
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return coerce(name, value, option)
            except ConfigError:
                continue
    elif typing.get_origin(tp) is tuple:
        if isinstance(value, str):
            value = load_yaml(value, name) if value.lstrip().startswith("[") else value.split(",")
        items = value if isinstance(value, (list, tuple)) else [value]
        items = [v.strip() if isinstance(v, str) else v for v in items]  # "unet, sk_unet"
        return tuple(coerce(name, v, args[0]) for v in items if v != "")
    elif tp is dict:
        parsed = load_yaml(value, name) if isinstance(value, str) else value
        if isinstance(parsed, dict):
            return {str(k): v for k, v in parsed.items()}
    else:
        try:
            return _scalar(value, tp)
        except (ValueError, OverflowError):
            pass
    raise ConfigError(f"{name}={value!r} should be {_expected(tp)}")


def _expected(tp: Any) -> str:
    """The type in words for an error message: ``true or false``, ``an integer or null`` ..."""
    words = {
        bool: "true or false",
        int: "an integer",
        float: "a finite number",
        str: "a string",
        dict: "a mapping",
        type(None): "null",
    }
    if isinstance(tp, types.UnionType):
        return " or ".join(_expected(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is tuple:
        return f"a list of {type_name(typing.get_args(tp)[0])}"
    return words.get(tp, type_name(tp))


def type_name(tp: Any) -> str:
    """``float | None``, ``list[int]``, ``bool`` ...: the type as a user writes it."""
    if isinstance(tp, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is tuple:
        return f"list[{type_name(typing.get_args(tp)[0])}]"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def read_config(
    path: str | Path, _chain: tuple[Path, ...] = (), files: list[tuple[Path, dict]] | None = None
) -> dict[str, Any]:
    """The mapping in ``path`` over its ``base:`` chain (relative to the file; mappings merge recursively,
    lists and scalars replace; a cycle is refused). ``files`` receives each file of the chain with its
    own mapping, base first, so a problem can be named in the file that has it."""
    path = Path(path)
    if not path.is_file():
        found = "a directory, not a config file" if path.is_dir() else "config file not found"
        raise ConfigError(f"{path}: {found}")
    if path.resolve() in _chain:
        cycle = " -> ".join(p.name for p in (*_chain, path.resolve()))
        raise ConfigError(f"{path}: base: cycle {cycle}")
    try:
        raw = load_yaml(path.read_text(), str(path))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc})") from None
    if raw is None or raw == {}:  # an empty file (or only comments) would silently run the defaults
        raise ConfigError(
            f"{path}: empty config: no keys set (missing: {', '.join(EXPECTED_KEYS)}, or base: a config "
            "to build on); see benchmark/configs/smoke.yaml"
        )
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(raw).__name__}")
    base = raw.pop("base", None)
    if base is not None and (not isinstance(base, str) or not (path.parent / base).is_file()):
        raise ConfigError(f"{path}: base: {base!r} not found (the path is relative to {path.parent})")
    merged = (
        raw if base is None else merge(read_config(path.parent / base, (*_chain, path.resolve()), files), raw)
    )
    if files is not None:
        files.append((path, raw))
    return merged


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` over ``base``: mappings merge key by key; anything else (lists too) replaces."""
    out = dict(base)
    for key, value in override.items():
        both = isinstance(out.get(key), dict) and isinstance(value, dict)
        out[key] = merge(out[key], value) if both else value
    return out


def file_setting(files: list[tuple[Path, dict]], message: str, path: Path) -> Path:
    """The file whose ``train:`` value an error names (``lr='abc'``): the last of the chain that sets
    that key (a bad value in a base file was blamed on the file built on it); else ``path``."""
    for source, own in reversed(files):
        train = own.get("train") if isinstance(own.get("train"), dict) else {}
        if any(re.search(rf"(?<![\w.]){re.escape(str(key))}=", message) for key in train):
            return source
    return path

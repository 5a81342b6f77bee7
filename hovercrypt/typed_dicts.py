"""Dataclass <-> plain dict conversion with type checks, for configurations read from JSON.

A typo such as ``"keep_unannotated": "false"`` must fail loudly (a non-empty
string is truthy), so every value is checked against the field's type hint and
errors name the full key path.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import types
import typing
from typing import Any

from hovercrypt.errors import ConfigError


def plain(v: Any) -> Any:
    return dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v


def build_dataclass(cls: type, d: Any, where: str) -> Any:
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(names)}")
    kwargs = {}
    for key, value in d.items():
        kwargs[key] = _convert(hints[key], value, f"{where}.{key}")
    return cls(**kwargs)


def _convert(tp: Any, value: Any, where: str) -> Any:
    """``value`` checked against the type hint ``tp`` (JSON gives lists for tuples).

    JSON files are written by hand, so ``"false"`` for a bool or ``"abc"`` for a
    number must fail here with the field's name, not deep inside a later stage.
    """
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, where)
    if origin is list and args and dataclasses.is_dataclass(args[0]):
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [build_dataclass(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return _convert(option, value, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],) * len(value)
        if args and len(value) != len(args):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
        return [_convert(args[0], v, f"{where}[{i}]") if args else v for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
        kt, vt = args if args else (Any, Any)
        return {_convert(kt, k, f"{where} key"): _convert(vt, v, f"{where}[{k!r}]") for k, v in value.items()}
    if tp is type(None) or tp is None:
        if value is not None:
            raise ConfigError(f"{where}: expected None, got {value!r}")
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected bool, got {value!r}")
        return bool(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ConfigError(f"{where}: expected int, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ConfigError(f"{where}: expected float, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, os.PathLike):  # a Path set from code (never from JSON) is a path string
            return os.fspath(value)
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected str, got {value!r}")
        return value
    return value  # Any and other hints are not checked


def _type_name(tp: Any) -> str:
    """A readable name for a type hint: ``str or None``, ``tuple[float, float]``."""
    if tp is type(None) or tp is None:
        return "None"
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if typing.get_args(tp):
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in typing.get_args(tp))
        return f"{typing.get_origin(tp).__name__}[{inner}]"
    return getattr(tp, "__name__", str(tp))

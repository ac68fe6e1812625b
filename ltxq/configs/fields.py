"""How a config field is declared, checked and parsed: the machinery under every section.

A field is a dataclass field whose metadata holds its doc and rules (`_doc`); the check of a
value is built once per (type, rules) (`_checker`); `_parse_section` turns one TOML table into
its section, refusing unknown keys, with a ConfigError that names the key. The underscore
names are this package's own, shared by its modules (and job.py, which checks the [job]
table with them); the API is ltxq.config.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import reprlib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import field
from typing import Any

from ltxq.errors import ConfigError

# Values in error messages: bounded, so a hostile value (a megabyte string, a list nested
# thousands deep) still makes one short line, and never a RecursionError.
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict = 3, 6, 4


def _show(value: Any) -> str:
    """Return a short repr of VALUE for an error message."""
    return _REPR.repr(value)


def _doc(text: str, default: Any = dataclasses.MISSING, **check: Any) -> Any:
    """Declare a field with its documentation and range checks (min, max, choices)."""
    meta = {"doc": text, **check}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


@functools.cache
def _schema(cls: type) -> tuple[dict[str, Any], dict[str, dataclasses.Field]]:
    # get_type_hints evaluates string annotations: costly, and status parses thousands of jobs.
    return typing.get_type_hints(cls), {f.name: f for f in dataclasses.fields(cls)}


_Check = Callable[[Any, str], Any]  # (value, key) -> the checked value, or ConfigError


@functools.cache
def _section_checks(cls: type, section: str) -> tuple[dict[str, tuple[str, _Check]],
                                                      tuple[str, ...]]:
    """Return CLS's (full key, check) per field name, and its required fields; built once."""
    hints, fields = _schema(cls)
    checks = {name: (f"{section}.{name}", _checker(hints[name], spec.metadata))
              for name, spec in fields.items()}
    required = tuple(name for name, f in fields.items()
                     if f.default is dataclasses.MISSING
                     and f.default_factory is dataclasses.MISSING and section != "data")
    return checks, required


def _parse_section(cls: type, table: dict[str, Any], section: str) -> Any:
    checks, required = _section_checks(cls, section)
    values = {}
    for name, value in table.items():  # a table sets a few of many fields: walk the table
        spec = checks.get(name)
        if spec is None:
            raise ConfigError(f"unknown key (known: {', '.join(checks)})",
                              key=f"{section}.{name}")
        values[name] = spec[1](value, spec[0])
    for name in required:
        if name not in values:
            raise ConfigError("is required", key=f"{section}.{name}")
    if section == "data" and "dataset" not in values:
        raise ConfigError("is required (the folder of training videos)", key=f"{section}.dataset")
    return cls(**values)


_UNSET: Any = object()  # a range rule a field does not have


def _checker(hint: Any, meta: Mapping[str, Any]) -> _Check:
    """Return the check of a value of type HINT with META's rules (choices, min, max)."""
    choices = meta.get("choices", _UNSET)
    return _value_checker(hint, choices if choices is _UNSET else tuple(choices),
                          meta.get("min", _UNSET), meta.get("max", _UNSET))


# Checks are built once per (type, rules) and reused: status validates thousands of job files,
# and interpreting the type hints for every value was a third of the time it took.
@functools.cache
def _value_checker(hint: Any, choices: Any, low: Any, high: Any) -> _Check:
    check_type = _type_checker(hint)
    if choices is _UNSET and low is _UNSET and high is _UNSET:
        return check_type

    def check(value: Any, key: str) -> Any:
        value = check_type(value, key)
        if value is None:
            return value
        for item in value if isinstance(value, list) else [value]:
            if choices is not _UNSET and item not in choices:
                raise ConfigError(f"must be one of {', '.join(choices)}, got {_show(item)}",
                                  key=key)
            if low is not _UNSET and item < low:
                raise ConfigError(f"must be >= {low}, got {_show(item)}", key=key)
            if high is not _UNSET and item > high:
                raise ConfigError(f"must be <= {high}, got {_show(item)}", key=key)
        return value
    return check


@functools.cache
def _type_checker(hint: Any) -> _Check:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        values = [o for o in options if o is not type(None)]
        lists = [o for o in values if typing.get_origin(o) is list]
        if lists and len(values) == 2:  # `str | list[str]`: a list, or the one scalar
            as_list, scalar = _type_checker(lists[0]), _type_checker(
                next(o for o in values if o is not lists[0]))
            return lambda value, key: (as_list if isinstance(value, list) else scalar)(value, key)
        inner = _type_checker(values[0])
        if type(None) not in options:
            return inner
        return lambda value, key: None if value is None else inner(value, key)
    if origin is list:
        (item_type,) = typing.get_args(hint)
        check_item, item_name = _type_checker(item_type), _type_name(item_type)

        def check_list(value: Any, key: str) -> Any:
            if not isinstance(value, list):
                raise ConfigError(f"must be a list of {item_name}, got {_show(value)}", key=key)
            return [check_item(v, key) for v in value]
        return check_list
    scalar = _SCALAR_CHECKS.get(hint)
    if scalar is not None:
        return scalar

    def unsupported(value: Any, key: str) -> Any:
        raise TypeError(f"unsupported config type {hint!r} for {key}")  # a bug in this module
    return unsupported


def _check_float(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"must be a number, got {_show(value)}", key=key)
    if not math.isfinite(value):  # nan slips through every range check: refuse it here
        raise ConfigError(f"must be a finite number, got {_show(value)}", key=key)
    return float(value)


def _check_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"must be an integer, got {_show(value)}", key=key)
    return value


def _check_bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"must be true or false, got {_show(value)}", key=key)
    return value


def _check_str(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"must be a string, got {_show(value)}", key=key)
    return value


_SCALAR_CHECKS: dict[Any, _Check] = {float: _check_float, int: _check_int, bool: _check_bool,
                                     str: _check_str}


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(hint) if a is not type(None))
    if origin is list:
        return f"list[{_type_name(typing.get_args(hint)[0])}]"
    return getattr(hint, "__name__", str(hint))

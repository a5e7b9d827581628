"""Typed config sections: fields with help text, and the checking of YAML values against their annotations."""

from __future__ import annotations

import dataclasses
import difflib
import enum
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import field
from typing import Any, Literal

OriginOf = Callable[[str], str]  # key path -> " (where it was set)", or "" when set in the config file itself


def option(text: str, default: Any = dataclasses.MISSING, **kwargs) -> Any:
    """A dataclass field with help text (mutable defaults go through default_factory)."""
    if isinstance(default, (list, dict)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata={"help": text}, **kwargs)
    return field(default=default, metadata={"help": text}, **kwargs)


def closest(key: str, valid: Iterable[str]) -> str:
    """`; did you mean 'x'?` for the closest valid key, or nothing."""
    match = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else ""


class Mismatch(Exception):
    """A value that does not fit its annotation; the message says what was expected."""


def type_name(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any) -> Any:
    """`value` checked against (and lightly coerced to) the annotation `tp`; raises Mismatch."""
    if tp is Any or tp is object:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg)
            except Mismatch:
                continue
        raise Mismatch(f"expected {type_name(tp)}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        raise Mismatch(f"must be one of {', '.join(repr(c) for c in choices)}{closest(str(value), map(str, choices))}")
    if origin in (list, tuple, typing.Sequence, Iterable) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise Mismatch(f"expected a list, got {type(value).__name__}")
        (item_tp,) = typing.get_args(tp)[:1] or (Any,)
        return [coerce(v, item_tp) for v in value]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise Mismatch(f"expected a mapping, got {type(value).__name__}")
        key_tp, val_tp = typing.get_args(tp) or (Any, Any)
        return {coerce(k, key_tp): coerce(v, val_tp) for k, v in value.items()}
    if tp is type(None):
        if value is None:
            return None
        raise Mismatch("expected null")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        valid = [m.value for m in tp]
        if value in valid or isinstance(value, tp):
            return value
        raise Mismatch(f"must be one of {', '.join(map(str, valid))}{closest(str(value), map(str, valid))}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise Mismatch(f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise Mismatch(f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads `1e-4` (no dot) as a string
            except ValueError:
                pass
        raise Mismatch(f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise Mismatch(f"expected a string, got {value!r}")
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise Mismatch(f"expected {tp.__name__}, got {type(value).__name__}")
    return value


def field_types(cls: type) -> dict[str, Any]:
    """The annotation of each field a user may set (init fields not starting with `_`)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_")}


def check_fields(values: dict, types_of: dict[str, Any], path: str, origin_of: OriginOf, problems: list[str]) -> dict:
    """Check a mapping against field annotations (nested dataclasses too); unknown keys and bad types become problems."""
    checked = {}
    for key, value in values.items():
        key_path = f"{path}{key}"
        if key not in types_of:
            problems.append(f"{key_path}{origin_of(key_path)}: unknown key{closest(key, types_of)}")
            continue
        tp = types_of[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                problems.append(f"{key_path}{origin_of(key_path)}: expected a section (a mapping)")
                continue
            checked[key] = check_fields(value, field_types(tp), f"{key_path}.", origin_of, problems)
            continue
        try:
            checked[key] = coerce(value, tp)
        except Mismatch as err:
            problems.append(f"{key_path}{origin_of(key_path)}: {err}")
    return checked


def build(cls: type, values: dict) -> Any:
    """Instantiate a (possibly nested) dataclass from checked values."""
    hints = typing.get_type_hints(cls)
    return cls(**{k: build(hints[k], v) if dataclasses.is_dataclass(hints[k]) else v for k, v in values.items()})


def check_dataclass(values: dict, cls: type, origin_of: OriginOf, problems: list[str], path: str = "") -> Any:
    """A dataclass built from `values` after checking every key and type; problems are appended, not raised."""
    return build(cls, check_fields(values, field_types(cls), path, origin_of, problems))

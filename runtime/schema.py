"""Declarative checks of parsed JSON: each check is ``check(value, where)`` and raises :class:`SchemaError` naming
where the bad value is (``components.scorer.bytes``) and what was expected; a :class:`Record` also gives the default
of an absent key. :mod:`runtime.manifest` builds the model folder's schema from them."""
from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Check = Callable[[Any, str], None]


class SchemaError(Exception):
    """A value that does not fit the schema; ``str()`` is ``"<where>: <what was expected, what was found>"``."""


def shown(value: Any, limit: int = 60) -> str:
    """A short JSON rendering of ``value`` for messages."""
    try:
        text = json.dumps(value, default=repr)
    except (RecursionError, ValueError):
        return type(value).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _at(where: str) -> str:
    return f"{where}: " if where else ""


def _fail(where: str, expected: str, value: Any) -> SchemaError:
    return SchemaError(f"{_at(where)}expected {expected}, got {shown(value)}")


def integer(lo: int, hi: int) -> Check:
    """An integer (not a bool, not a float) in ``[lo, hi]``."""

    def check(value: Any, where: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise _fail(where, f"an integer in [{lo}, {hi}]", value)

    return check


def boolean(value: Any, where: str) -> None:
    """``true`` or ``false``."""
    if not isinstance(value, bool):
        raise _fail(where, "true or false", value)


def number(lo: float = -math.inf, hi: float = math.inf) -> Check:
    """A finite number in ``[lo, hi]``."""

    def check(value: Any, where: str) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not lo <= value <= hi:
            raise _fail(where, f"a finite number in [{lo:g}, {hi:g}]", value)

    return check


def string(choices: Sequence[str] | None = None, pattern: str | None = None, max_length: int = 4096) -> Check:
    """A string: one of ``choices``, or matching ``pattern`` in full, at most ``max_length`` characters."""
    compiled = re.compile(pattern) if pattern else None

    def check(value: Any, where: str) -> None:
        if not isinstance(value, str) or len(value) > max_length:
            raise _fail(where, f"a string of at most {max_length} characters", value)
        if choices is not None and value not in choices:
            raise _fail(where, f"one of {list(choices)}", value)
        if compiled is not None and not compiled.fullmatch(value):
            raise _fail(where, f"a string matching {pattern}", value)

    return check


def nullable(inner: Check) -> Check:
    """``null`` or what ``inner`` accepts."""

    def check(value: Any, where: str) -> None:
        if value is not None:
            inner(value, where)

    return check


def either(*checks: Check, expected: str) -> Check:
    """What one of ``checks`` accepts (``expected`` describes them for the message)."""

    def check(value: Any, where: str) -> None:
        for inner in checks:
            try:
                inner(value, where)
            except SchemaError:
                continue
            return
        raise _fail(where, expected, value)

    return check


def array(item: Check, min_length: int = 0, max_length: int = 1 << 16) -> Check:
    """A list of ``min_length`` to ``max_length`` items, each checked by ``item``."""

    def check(value: Any, where: str) -> None:
        if not isinstance(value, list) or not min_length <= len(value) <= max_length:
            raise _fail(where, f"a list of {min_length} to {max_length} items", value)
        for k, v in enumerate(value):
            item(v, f"{where}[{k}]")

    return check


@dataclass(frozen=True)
class Field:
    """One key of a JSON object: the check of its value, whether it must be present, and the value readers take
    where an optional key is absent."""

    check: Check
    required: bool = True
    default: Any = None


@dataclass(frozen=True)
class Record:
    """A JSON object of known keys (name -> :class:`Field`, checked in this order). As a check: every required key
    present, no other key, each value checked by its field."""

    fields: Mapping[str, Field]

    def __call__(self, value: Any, where: str) -> None:
        if not isinstance(value, dict):
            raise _fail(where, f"an object with keys {sorted(self.fields)}", value)
        missing = [k for k, f in self.fields.items() if f.required and k not in value]
        if missing:
            raise SchemaError(f"{_at(where)}missing key(s) {missing}")
        unknown = sorted(k for k in value if k not in self.fields)
        if unknown:
            raise SchemaError(f"{_at(where)}unknown key(s) {unknown} (expected some of {sorted(self.fields)})")
        for key, field in self.fields.items():
            if key in value:
                field.check(value[key], f"{where}.{key}" if where else key)

    def get(self, value: Mapping[str, Any], key: str) -> Any:
        """``value[key]``, or a copy of the field's default where ``value`` lacks the key."""
        return value[key] if key in value else copy.deepcopy(self.fields[key].default)


def obj(
    required: Mapping[str, Check],
    optional: Mapping[str, Check] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> Record:
    """An object with every key of ``required``, any of ``optional`` and no other key; readers take ``defaults``
    (default ``None``) for absent optional keys."""
    defaults = defaults or {}
    if not set(defaults) <= set(optional or {}):
        raise ValueError(f"defaults {sorted(defaults)}: only optional keys take a default")
    return Record({**{key: Field(check) for key, check in required.items()},
                   **{key: Field(check, False, defaults.get(key)) for key, check in (optional or {}).items()}})


def mapping(values: Check, keys: Check | None = None, max_length: int = 1 << 16) -> Check:
    """An object with free keys (checked by ``keys``, default any string) and values checked by ``values``."""
    keys = keys or string(max_length=256)

    def check(value: Any, where: str) -> None:
        if not isinstance(value, dict) or len(value) > max_length:
            raise _fail(where, f"an object of at most {max_length} entries", value)
        for key, inner in value.items():
            keys(key, f"{where} key" if where else "key")
            values(inner, f"{where}.{key}" if where else key)

    return check


def anything(value: Any, where: str) -> None:
    """Any JSON value (free-form details)."""

"""A dataclass as a JSON object, both ways, driven by its field annotations (the converter behind
summary.json's schema, `summary.py`): `JsonRecord.from_json` reads and checks a part, naming the key
path at fault ('h1.OI.ranking[0].rank_sum') in a `MalformedSummary`; `to_json` writes its keys in
field order. `optional()` marks a key older or hand-written files may lack (None when absent, left out
when None); field metadata `MINIMUM` bounds an integer, `NOT_JSON` marks a field that is not a key."""

from __future__ import annotations

import functools
import json
import types
import typing
from dataclasses import MISSING, field, fields
from typing import Any, TypeVar

_OMIT = "omit_when_none"  # field metadata: an optional key, left out when None
MINIMUM = "minimum"  # field metadata: an integer's least value
NOT_JSON = "not_json"  # field metadata: not a key (where the summary was read from)
J = TypeVar("J", bound="JsonRecord")


class MalformedSummary(ValueError):
    """A part of a summary of the wrong shape. `load_summary` turns it into one `HeadpruneError`
    line naming the file; `key` is the key path at fault ('' for the whole document)."""

    def __init__(self, key: str, problem: str):
        super().__init__(problem)
        self.key = key


def optional() -> Any:
    """A key some summaries lack (older or hand-written ones): None when absent, not written when None."""
    return field(default=None, metadata={_OMIT: True})


def join_key(key: str, name: object) -> str:
    return f"{key}.{name}" if key else str(name)


def missing_key(key: str) -> MalformedSummary:
    return MalformedSummary(key, f"missing or invalid '{key}' (absent)")


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a JSON object"
    if isinstance(value, list):
        return "a list"
    text = json.dumps(value) if isinstance(value, (str, int, float, bool)) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _wrong(key: str, expected: str, value: Any) -> MalformedSummary:
    if not key:
        return MalformedSummary(key, f"expected {expected}, got {_describe(value)}")
    return MalformedSummary(key, f"'{key}' must be {expected}, got {_describe(value)}")


def as_object(value: Any, key: str) -> dict:
    if not isinstance(value, dict):
        raise _wrong(key, "a JSON object", value)
    return value


def read_value(value: Any, hint: Any, key: str, minimum: int | None = None) -> Any:
    """`value` checked against the annotation `hint`; numbers are kept as they are (exact round trips)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return read_value(value, inner, key, minimum)
    if isinstance(hint, type) and issubclass(hint, JsonRecord):
        return hint.from_json(value, key)
    if origin is list:
        if not isinstance(value, list):
            raise _wrong(key, "a list", value)
        return [read_value(item, args[0], f"{key}[{i}]") for i, item in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, list) or len(value) != len(args):
            raise _wrong(key, "a [layer, head] pair", value)
        return tuple(read_value(item, arg, f"{key}[{i}]") for i, (item, arg) in enumerate(zip(value, args)))
    if origin is dict:
        return {name: read_value(item, args[1], join_key(key, name)) for name, item in as_object(value, key).items()}
    if hint is dict:  # free-form: the configuration, the MLM head's description, library versions
        return as_object(value, key)
    if hint is str:
        if not isinstance(value, str):
            raise _wrong(key, "a string", value)
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
            expected = "an integer" if minimum is None else ("a positive integer" if minimum == 1 else
                                                             f"an integer >= {minimum}")
            raise _wrong(key, expected, value)
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _wrong(key, "a number", value)
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise _wrong(key, "true or false", value)
        return value
    raise TypeError(f"no JSON reader for the annotation {hint!r} of '{key}'")


def write_value(value: Any) -> Any:
    if isinstance(value, JsonRecord):
        return value.to_json()
    if isinstance(value, (list, tuple)):
        return [write_value(item) for item in value]
    if isinstance(value, dict):
        return {name: write_value(item) for name, item in value.items()}
    return value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


class JsonRecord:
    """from_json / to_json of a summary dataclass, from its fields and their annotations."""

    @classmethod
    def from_json(cls: type[J], data: Any, key: str = "") -> J:
        """Read one JSON object of this part; `key` is its path, for the error naming a bad key."""
        data = as_object(data, key)
        own = [f for f in fields(cls) if not f.metadata.get(NOT_JSON)]
        known = {f.name for f in own}
        unknown = [name for name in data if name not in known]
        if unknown:
            raise MalformedSummary(join_key(key, unknown[0]), f"unknown key '{join_key(key, unknown[0])}'")
        hints = _hints(cls)
        values = {}
        for f in own:
            if f.name not in data:
                if f.default is MISSING and f.default_factory is MISSING:
                    raise missing_key(join_key(key, f.name))
                continue
            values[f.name] = read_value(data[f.name], hints[f.name], join_key(key, f.name), f.metadata.get(MINIMUM))
        return cls(**values)

    def to_json(self) -> dict:
        """The JSON object of this part: its keys in field order, optional ones left out when None."""
        out = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.metadata.get(NOT_JSON) or (value is None and f.metadata.get(_OMIT)):
                continue
            out[f.name] = write_value(value)
        return out


__all__ = ["MINIMUM", "NOT_JSON", "JsonRecord", "MalformedSummary", "as_object", "join_key", "missing_key", "optional",
           "read_value", "write_value"]

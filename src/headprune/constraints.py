"""Settings' constraints as data, after scikit-learn's `utils/_param_validation.py`, small and our own.

Each settings class declares a table `constraints: ClassVar[dict[str, Constraint]]` beside its
fields (every field has an entry, its type included), and `check(name, value, constraint)` is the
one validator: it returns the value (an integer where a number is expected becomes a float) or
raises one `HeadpruneError` line naming `name` in one of two shapes, "NAME: expected <type>, got
<value>" for the wrong type and "NAME must be <words>, got <value>" for a value out of bounds. The
same table generates the tests (`examples()`: values it takes and values it refuses), so a
constraint cannot be dropped without a test noticing."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from .errors import HeadpruneError


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _fmt(value: Any) -> str:
    """A number as a configuration shows it, anything else as Python writes it ('a', [1])."""
    return str(value) if _number(value) else repr(value)


class Constraint:
    """What a setting accepts. `clean(name, value)` returns the value (converted where the type
    allows) or raises one error line naming `name`; `examples()` is (accepted values, refused values)
    for the generated tests."""

    def clean(self, name: str, value: Any) -> Any:
        raise NotImplementedError

    def examples(self) -> tuple[list, list]:
        raise NotImplementedError

    @staticmethod
    def expected(name: str, kind: str, value: Any) -> HeadpruneError:
        return HeadpruneError(f"{name}: expected {kind}, got {value!r}")

    @staticmethod
    def bound(name: str, words: str, value: Any) -> HeadpruneError:
        return HeadpruneError(f"{name} must be {words}, got {_fmt(value)}")


@dataclass(frozen=True)
class Interval(Constraint):
    """An integer (`kind` int) or a number (`kind` float) within `low`..`high` (None: unbounded);
    `closed`: which ends belong to it ("left", "right", "both", "neither"). `words` replace the
    generated description ("at least 1", "between 0 and 1", "0 or more") where a bound means
    something ("0 (automatic) or more")."""

    kind: type
    low: float | None = None
    high: float | None = None
    closed: str = "left"
    words: str = ""

    def _inside(self, value: float) -> bool:
        left, right = self.closed in ("left", "both"), self.closed in ("right", "both")
        return ((self.low is None or (value >= self.low if left else value > self.low))
                and (self.high is None or (value <= self.high if right else value < self.high)))

    def describe(self) -> str:
        if self.words:
            return self.words
        if self.high is None:
            if self.closed in ("left", "both"):
                return "0 or more" if self.low == 0 else f"at least {self.low}"
            return "positive" if self.low == 0 else f"above {self.low}"
        if self.closed == "left":
            return f"at least {self.low} and below {self.high}"
        if self.closed == "right":
            return f"in ({self.low}, {self.high}]"
        return f"between {self.low} and {self.high}"

    def clean(self, name: str, value: Any) -> Any:
        if self.kind is int and not _integer(value):
            raise self.expected(name, "an integer", value)
        if self.kind is float:
            if not _number(value):
                raise self.expected(name, "a number", value)
            value = float(value)
        if not self._inside(value):
            raise self.bound(name, self.describe(), value)
        return value

    def examples(self) -> tuple[list, list]:
        step = 1 if self.kind is int else 1e-3
        left, right = self.closed in ("left", "both"), self.closed in ("right", "both")
        valid, invalid = [], ["text", True]
        if self.low is not None:
            valid.append(self.kind(self.low) if left else self.kind(self.low + step))
            invalid.append(self.kind(self.low - step) if left else self.kind(self.low))
        if self.high is not None:
            valid.append(self.kind(self.high) if right else self.kind(self.high - step))
            invalid.append(self.kind(self.high + step) if right else self.kind(self.high))
        if self.low is None and self.high is None:
            valid.append(self.kind(1))
        return valid, invalid


@dataclass(frozen=True)
class Options(Constraint):
    """One of `values` (strings), described by `words` ("'auto', 'reference' or 'batched'" when empty)."""

    values: tuple[str, ...]
    words: str = ""

    def describe(self) -> str:
        if self.words:
            return self.words
        quoted = [repr(v) for v in self.values]
        return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"

    def clean(self, name: str, value: Any) -> Any:
        if not isinstance(value, str):
            raise self.expected(name, "a string", value)
        if value not in self.values:
            raise self.bound(name, self.describe(), value)
        return value

    def examples(self) -> tuple[list, list]:
        return list(self.values), ["no-such-option", 3]


@dataclass(frozen=True)
class Text(Constraint):
    """Any string (a name, a path, an address)."""

    def clean(self, name: str, value: Any) -> Any:
        if not isinstance(value, str):
            raise self.expected(name, "a string", value)
        return value

    def examples(self) -> tuple[list, list]:
        return ["", "some text"], [3, ["a"]]


@dataclass(frozen=True)
class Flag(Constraint):
    """true or false."""

    def clean(self, name: str, value: Any) -> Any:
        if not isinstance(value, bool):
            raise self.expected(name, "true or false", value)
        return value

    def examples(self) -> tuple[list, list]:
        return [True, False], [1, "yes"]


@dataclass(frozen=True)
class Names(Constraint):
    """A non-empty list of names (`what`: "dataset or group names")."""

    what: str = "dataset or group names"
    example: str = "G1"

    def clean(self, name: str, value: Any) -> Any:
        if not _strings(value):
            raise self.expected(name, "a list of strings", value)
        if not value:
            raise self.bound(name, f"a non-empty list of {self.what}", value)
        return value

    def examples(self) -> tuple[list, list]:
        return [[self.example], [self.example, self.example]], [[], "G1", [self.example, 2]]


@dataclass(frozen=True)
class Known(Constraint):
    """A list of names each `known` accepts (a collection, or a predicate); an unknown one is
    "NAME: 'x' is unknown (use `use`)". `example`: a known name."""

    known: Collection[str] | Callable[[str], bool]
    use: str
    example: str

    def _knows(self, item: str) -> bool:
        return bool(self.known(item)) if callable(self.known) else item in self.known

    def clean(self, name: str, value: Any) -> Any:
        if not _strings(value):
            raise self.expected(name, "a list of strings", value)
        for item in value:
            if not self._knows(item):
                raise HeadpruneError(f"{name}: '{item}' is unknown (use {self.use})")
        return value

    def examples(self) -> tuple[list, list]:
        return [[self.example]], [[self.example, "no-such-name"], [3], self.example]


@dataclass(frozen=True)
class Integers(Constraint):
    """A list of integers, each at least `low` (possibly empty)."""

    low: int = 0
    words: str = field(default="0 or more")

    def clean(self, name: str, value: Any) -> Any:
        if not (isinstance(value, list) and all(_integer(v) for v in value)):
            raise self.expected(name, "a list of integers", value)
        if any(v < self.low for v in value):
            raise self.bound(name, self.words, value)
        return value

    def examples(self) -> tuple[list, list]:
        return [[], [self.low, self.low + 2]], [[self.low - 1], [True], ["a"], self.low]


def check(name: str, value: Any, constraint: Constraint) -> Any:
    """`value` as `constraint` accepts it (see the module's docstring), or one error line naming `name`."""
    return constraint.clean(name, value)


__all__ = ["Constraint", "Flag", "Integers", "Interval", "Known", "Names", "Options", "Text", "check"]

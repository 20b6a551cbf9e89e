"""The functions pgwarden adds to CEL (Octelium's cellib). Add a function here and nowhere else.

`@cel_function("hasAny")` makes a method/global: `l.hasAny(x)` calls `has_any(l, x)`.
`@cel_function("time.isWeekday")` makes a namespaced function: `time.isWeekday(ts)` calls it with `ts`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celpy import celtypes

CelFunction = Callable[..., Any]

# CEL name -> implementation. Implementations take and return celpy.celtypes values and raise
# TypeError for operands they do not accept; celpy turns that into "no such overload", which the
# caller treats as a fail-closed evaluation error.
REGISTRY: dict[str, CelFunction] = {}


def cel_function(name: str) -> Callable[[CelFunction], CelFunction]:
    """Register the decorated function under its CEL name (`name` or `namespace.name`)."""

    def register(fn: CelFunction) -> CelFunction:
        if name in REGISTRY:
            raise ValueError(f"CEL function {name!r} is registered twice")
        REGISTRY[name] = fn
        return fn

    return register


def _require(value: Any, kind: type, function: str) -> None:
    if not isinstance(value, kind):
        raise TypeError(f"{function}() does not apply to {type(value).__name__}")


def _contains(items: celtypes.ListType, wanted: Any) -> bool:
    # CEL equality across types is false, but celpy raises TypeError for IntType == StringType.
    for item in items:
        try:
            if item == wanted:
                return True
        except TypeError:
            continue
    return False


@cel_function("hasAny")
def has_any(items: Any, wanted: Any) -> celtypes.BoolType:
    """`l.hasAny(x)`: some element of `x` is in `l`. An empty `x` gives false."""
    _require(items, celtypes.ListType, "hasAny")
    _require(wanted, celtypes.ListType, "hasAny")
    return celtypes.BoolType(any(_contains(items, w) for w in wanted))


@cel_function("hasAll")
def has_all(items: Any, wanted: Any) -> celtypes.BoolType:
    """`l.hasAll(x)`: every element of `x` is in `l`. An empty `x` gives true."""
    _require(items, celtypes.ListType, "hasAll")
    _require(wanted, celtypes.ListType, "hasAll")
    return celtypes.BoolType(all(_contains(items, w) for w in wanted))


@cel_function("toLower")
def to_lower(text: Any) -> celtypes.StringType:
    """`s.toLower()`."""
    _require(text, celtypes.StringType, "toLower")
    return celtypes.StringType(text.lower())


@cel_function("toUpper")
def to_upper(text: Any) -> celtypes.StringType:
    """`s.toUpper()`."""
    _require(text, celtypes.StringType, "toUpper")
    return celtypes.StringType(text.upper())

"""CEL time helpers for change windows: `now()` and weekday/hour tests in a named time zone.

`now()` has one-second resolution and reads an injectable clock (`set_clock`, `fixed_clock` for tests).
While the engine evaluates a request it pins the second it decided at (`pinned`), so a cached decision
keyed by that second is exactly what a fresh evaluation would give.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from celpy import celtypes

from proxy.policy.functions import cel_function

Clock = Callable[[], datetime.datetime]
WEEKDAYS = ("MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN")


def _system_clock() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


_clock: Clock = _system_clock
_pinned: ContextVar[int | None] = ContextVar("pgwarden_policy_now", default=None)


def set_clock(clock: Clock | None) -> None:
    """Replace the clock `now()` reads (an aware datetime); None restores the system clock."""
    global _clock
    _clock = clock or _system_clock


@contextlib.contextmanager
def fixed_clock(at: datetime.datetime) -> Iterator[None]:
    """Make `now()` return `at` (aware) inside the block: change-window tests."""
    if at.tzinfo is None:
        raise ValueError("fixed_clock needs an aware datetime")
    set_clock(lambda: at)
    try:
        yield
    finally:
        set_clock(None)


def current_time() -> datetime.datetime:
    """The clock's time (aware): what grant windows are judged against (proxy/grants.py)."""
    return _clock()


def current_second() -> int:
    """The clock's Unix time, truncated to the second: what `now()` returns unless pinned."""
    if _clock is _system_clock:
        return int(time.time())  # the per-query path: ~10x cheaper than building a datetime
    return int(_clock().timestamp())


@contextlib.contextmanager
def pinned(second: int) -> Iterator[None]:
    """Evaluate with `now()` fixed at `second` (Unix time)."""
    token = _pinned.set(second)
    try:
        yield
    finally:
        _pinned.reset(token)


@cel_function("now")
def now() -> celtypes.TimestampType:
    """`now()`: the current time (UTC, whole seconds)."""
    second = _pinned.get()
    if second is None:
        second = current_second()
    return celtypes.TimestampType(datetime.datetime.fromtimestamp(second, datetime.UTC))


@functools.lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise TypeError(f"unknown time zone {name!r}") from exc


def _local(ts: Any, zone: Any, function: str) -> datetime.datetime:
    if not isinstance(ts, celtypes.TimestampType) or not isinstance(zone, celtypes.StringType):
        raise TypeError(f"{function}() takes a timestamp and a time zone name")
    return datetime.datetime.fromtimestamp(ts.timestamp(), _zone(str(zone)))


@cel_function("weekdayIn")
def weekday_in(ts: Any, zone: Any) -> celtypes.StringType:
    """`now().weekdayIn("Europe/Berlin")`: "MON" … "SUN" in that zone."""
    return celtypes.StringType(WEEKDAYS[_local(ts, zone, "weekdayIn").weekday()])


@cel_function("hourIn")
def hour_in(ts: Any, zone: Any) -> celtypes.IntType:
    """`now().hourIn("Europe/Berlin")`: 0 … 23 in that zone."""
    return celtypes.IntType(_local(ts, zone, "hourIn").hour)


@cel_function("isWeekdayIn")
def is_weekday_in(ts: Any, zone: Any) -> celtypes.BoolType:
    """`now().isWeekdayIn("Europe/Berlin")`: Monday to Friday in that zone."""
    return celtypes.BoolType(_local(ts, zone, "isWeekdayIn").weekday() < 5)


@cel_function("isBetweenHoursIn")
def is_between_hours_in(ts: Any, start: Any, end: Any, zone: Any) -> celtypes.BoolType:
    """`now().isBetweenHoursIn(9, 17, "Europe/Berlin")`: start <= hour < end; 22, 6 wraps midnight."""
    if not isinstance(start, celtypes.IntType) or not isinstance(end, celtypes.IntType):
        raise TypeError("isBetweenHoursIn() takes whole hours")
    hour = _local(ts, zone, "isBetweenHoursIn").hour
    inside = start <= hour < end if start <= end else (hour >= start or hour < end)
    return celtypes.BoolType(inside)

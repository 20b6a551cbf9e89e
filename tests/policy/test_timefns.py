"""Change windows: now() and weekday/hour helpers in a time zone, under a fixed clock."""

from __future__ import annotations

import datetime

import pytest

from proxy.policy import timefns
from proxy.policy.cel import ConditionError, compile_expression
from proxy.snapshot import AuthorizationMode
from tests.policy.test_engine import REQUEST, live, policy, rule

UTC = datetime.UTC
# Sunday 23:30 UTC is Monday 00:30 in Berlin (CET, UTC+1).
SUNDAY_NIGHT_UTC = datetime.datetime(2026, 11, 29, 23, 30, tzinfo=UTC)


def holds(expression: str) -> bool:
    return compile_expression(expression).evaluate({})


def test_weekday_and_hour_in_a_zone() -> None:
    with timefns.fixed_clock(SUNDAY_NIGHT_UTC):
        assert holds('now().weekdayIn("Europe/Berlin") == "MON"')
        assert holds('now().weekdayIn("UTC") == "SUN"')
        assert holds('now().hourIn("Europe/Berlin") == 0')
        assert holds('now().isWeekdayIn("Europe/Berlin")')
        assert not holds('now().isWeekdayIn("America/New_York")')
        assert holds('now().isBetweenHoursIn(22, 6, "Europe/Berlin")')  # wraps midnight
        assert not holds('now().isBetweenHoursIn(9, 17, "Europe/Berlin")')
        assert holds('now() == timestamp("2026-11-29T23:30:00Z")')


def test_unknown_zone_fails_closed() -> None:
    with pytest.raises(ConditionError):
        holds('now().hourIn("Mars/Olympus") == 1')


CHANGE_WINDOW = policy(
    "no-drop-outside-window",
    rule("drop-outside-window", "DENY", {"all": {"of": [
        {"match": 'ctx.request.postgres.statement.kinds.exists(k, k.startsWith("DROP"))'},
        {"not": 'now().weekdayIn("Europe/Berlin") == "TUE" && now().isBetweenHoursIn(9, 11, "Europe/Berlin")'},
    ]}}),
    rule("rest", "ALLOW", {"matchAny": True}, priority=4),
)


def test_change_window_rule_follows_the_clock_even_for_a_cached_query_shape() -> None:
    snapshot = live(CHANGE_WINDOW, service_policies=("no-drop-outside-window",), mode=AuthorizationMode.ALL)
    sp = snapshot.connection_policy(snapshot.user("alice"), snapshot.service("db"), None, request=REQUEST)
    assert sp is not None
    tuesday_10_berlin = datetime.datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    tuesday_12_berlin = datetime.datetime(2026, 12, 1, 11, 0, tzinfo=UTC)
    with timefns.fixed_clock(tuesday_10_berlin):
        assert sp.decide_query("DROP TABLE old_events").allowed
        assert sp.decide_query("DROP TABLE old_events").allowed
    with timefns.fixed_clock(tuesday_12_berlin):
        denied = sp.decide_query("DROP TABLE old_events")
        assert (denied.allowed, denied.rule) == (False, "drop-outside-window")
        assert sp.decide_query("SELECT 1").allowed
    with timefns.fixed_clock(SUNDAY_NIGHT_UTC):
        assert not sp.decide_query("DROP TABLE old_events").allowed

"""Grant windows are enforced by the running proxy at the boundary, with no commit and no reload asked for.

The clock is the proxy's own (proxy.policy.timefns): a test moves it, and either lets the real timer fire a
second or two later or fires it at once. No sleeps: every wait polls for the outcome with a deadline.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from proxy.policy import timefns
from reconciler.directory import load_snapshot
from tests.support.proxy_harness import MANIFESTS, ProxyHarness, write_manifests

BOB = "spec: {type: HUMAN, email: bob@example.com, groups: []}"
UTC = datetime.UTC


def with_bob_groups(tmp_path: Any, pg: Any, groups: str) -> Any:
    """The fixture manifests with bob's spec.groups replaced (MANIFESTS is a str.format template)."""
    new = f"spec: {{type: HUMAN, email: bob@example.com, groups: {groups}}}"
    text = MANIFESTS.replace(BOB.replace("{", "{{").replace("}", "}}"), new.replace("{", "{{").replace("}", "}}"))
    assert text != MANIFESTS
    return load_snapshot(write_manifests(tmp_path / "m", pg, text))


def whole_second(delta: datetime.timedelta) -> datetime.datetime:
    return (datetime.datetime.now(UTC) + delta).replace(microsecond=0)


@pytest.fixture
def clock() -> Iterator[Callable[[datetime.datetime], None]]:
    """`clock(at)`: the proxy's clock reads `at` now and runs on from there in real time."""
    def move(at: datetime.datetime) -> None:
        offset = at - datetime.datetime.now(UTC)
        timefns.set_clock(lambda: datetime.datetime.now(UTC) + offset)

    yield move
    timefns.set_clock(None)


def current_user(proxy: ProxyHarness, user: str) -> str:
    with psycopg.connect(proxy.dsn(user)) as conn:
        return str(conn.execute("SELECT current_user").fetchone()[0])  # type: ignore[index]


def ended(proxy: ProxyHarness, user: str) -> Callable[[], bool]:
    return lambda: not any(s["user"] == user for s in proxy.running.server.session_list())


@pytest.mark.usefixtures("fresh_snapshot")
def test_expiry_ends_the_session_at_the_boundary_and_the_next_connection_routes_lower(
        proxy: ProxyHarness, pg: Any, tmp_path: Any, clock: Callable[[datetime.datetime], None]) -> None:
    until = whole_second(datetime.timedelta(hours=1))
    proxy.apply(with_bob_groups(tmp_path, pg, f'[{{name: engineering, validUntil: "{until.isoformat()}"}}]'))
    server = proxy.running.server
    generation = server.live.generation
    with psycopg.connect(proxy.dsn("bob")) as conn, psycopg.connect(proxy.dsn("alice")) as bystander:
        assert conn.execute("SELECT current_user").fetchone() == ("full_access",)
        clock(until - datetime.timedelta(seconds=1.5))
        proxy.call(server.grant_timer.arm, server.live)  # the capped wait, re-armed under the moved clock
        assert server.live.generation == generation  # nothing happens before the boundary
        proxy.wait_for(ended(proxy, "bob"), timeout_s=30)
        assert timefns.current_time() >= until
        assert server.live.generation == generation + 1  # re-evaluated exactly once, as a reload is
        with pytest.raises(psycopg.Error) as err:
            conn.execute("SELECT 1")
        assert err.value.diag.severity_nonlocalized == "FATAL"
        message = str(err.value)
        assert f'the grant group "engineering" of user "bob" expired at {until.isoformat().replace("+00:00", "Z")}' \
            in message
        assert 'routing changed (now config "read-only")' in message
        assert bystander.execute("SELECT current_user").fetchone() == ("full_access",)  # alice keeps admins
    assert current_user(proxy, "bob") == "read_only"
    ends = [e["entry"]["info"]["postgres"]["end"]["reason"] for e in proxy.log_entries()
            if e["entry"]["info"]["postgres"]["type"] == "SESSION_END" and e["entry"]["info"]["postgres"].get("end")]
    assert any('group "engineering" of user "bob" expired' in reason for reason in ends)


@pytest.mark.usefixtures("fresh_snapshot")
def test_a_membership_from_the_future_routes_low_until_it_starts(
        proxy: ProxyHarness, pg: Any, tmp_path: Any) -> None:
    start = whole_second(datetime.timedelta(days=2))
    proxy.apply(with_bob_groups(tmp_path, pg, f'[{{name: engineering, validFrom: "{start.isoformat()}"}}]'))
    server = proxy.running.server
    assert server.live.next_boundary == start
    with psycopg.connect(proxy.dsn("bob")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("read_only",)
        with timefns.fixed_clock(start):
            proxy.call(server.grant_timer.fire, server.live)
            proxy.wait_for(ended(proxy, "bob"), timeout_s=30)
            with pytest.raises(psycopg.Error, match='group "engineering" of user "bob" took effect'):
                conn.execute("SELECT 1")
            assert current_user(proxy, "bob") == "full_access"
            assert server.live.next_boundary is None
    # Without the moved clock the membership is in the future again: a reload (any swap) judges it anew.
    proxy.apply(server.live.snapshot)
    assert current_user(proxy, "bob") == "read_only"

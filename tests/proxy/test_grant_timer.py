"""Re-evaluating the live snapshot at a grant boundary never fights a reload: it takes no ticket, never supersedes
a reload in flight, and never swaps an older state back in over a newer one. Events order the steps; no sleeps."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from identity.sessions import SessionAuthority
from identity.store.sqlite import SqliteStore
from identity.tokens import TokenAuthority
from proxy.audit.accesslog import AccessLog, AccessLogWriter
from proxy.errors import SnapshotRejected
from proxy.policy import timefns
from proxy.server import ProxyServer
from proxy.snapshot import Condition, RoutingRule, Service, Snapshot, User, Validity
from tests.proxy.test_reload_off_loop import GatedServices, heavy_snapshot

UTC = datetime.UTC
UNTIL = datetime.datetime(2026, 12, 8, 18, 0, tzinfo=UTC)


def granted(revision: str, services: GatedServices | None = None) -> Snapshot:
    """bob in oncall until UNTIL."""
    bob = User(name="bob", groups=("oncall",), manifest={"spec": {"groups": ["oncall"]}},
               group_windows={"oncall": Validity(valid_until=UNTIL)})
    return Snapshot(revision=revision, users={"bob": bob}, services=services or {})


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ProxyServer]:
    store = await SqliteStore(tmp_path / "state.db", encryption_key=b"k" * 32).open()
    identity = SessionAuthority(TokenAuthority.load_or_create(tmp_path), store)
    yield ProxyServer(tls_context=None, identity=identity, access_log=AccessLog(AccessLogWriter(None)),
                      fingerprint_key=b"k" * 32)
    await store.close()


@pytest.fixture(autouse=True)
def clock() -> Iterator[None]:
    with timefns.fixed_clock(UNTIL - datetime.timedelta(hours=1)):
        yield


async def test_a_boundary_re_evaluates_as_a_reload_and_drops_the_expired_membership(server: ProxyServer) -> None:
    await server.reload(granted("A"))
    assert server.live.view.users["bob"].groups == ("oncall",) and server.live.next_boundary == UNTIL
    with timefns.fixed_clock(UNTIL):
        assert await server.refresh_grants() == 3
    assert server.live.snapshot.revision == "A" and server.live.view.users["bob"].groups == ()
    assert server.live.next_boundary is None


async def test_a_reload_in_flight_is_not_superseded_by_a_boundary(server: ProxyServer) -> None:
    await server.reload(granted("A"))
    slow = GatedServices(heavy_snapshot(2).services)
    in_flight = asyncio.create_task(server.reload(granted("B", slow)))
    while not slow.entered.is_set():  # B is compiling (before the boundary) when the boundary passes
        await asyncio.sleep(0)
    with timefns.fixed_clock(UNTIL):
        assert await server.refresh_grants() == 3  # A at the boundary goes live first
        slow.gate.set()
        assert await in_flight == 4  # and B after it: not dropped as superseded
    assert server.live.snapshot.revision == "B"


async def test_a_boundary_compiled_while_a_reload_went_live_is_dropped(server: ProxyServer) -> None:
    slow = GatedServices(heavy_snapshot(2).services)
    slow.gate.set()
    await server.reload(granted("A", slow))
    slow.gate.clear()
    slow.entered.clear()
    with timefns.fixed_clock(UNTIL):
        refreshing = asyncio.create_task(server.refresh_grants())
        while not slow.entered.is_set():  # the boundary's compile of A is under way
            await asyncio.sleep(0)
        assert await server.reload(granted("B")) == 3  # a new revision goes live meanwhile
        slow.gate.set()
        assert await refreshing is None  # A is never swapped back in over B
    assert server.live.snapshot.revision == "B" and server.live.generation == 3
    assert server.live.view.users["bob"].groups == ()  # B was compiled after the boundary: judged there


async def test_a_rejected_reload_does_not_stop_grants_from_expiring(server: ProxyServer) -> None:
    await server.reload(granted("A"))
    broken = Snapshot(services={"db": Service(name="db", rules=(
        RoutingRule(config_name="c", condition=Condition(match="ctx.user.(")),))})
    with pytest.raises(SnapshotRejected):
        await server.reload(broken)
    with timefns.fixed_clock(UNTIL):
        assert await server.refresh_grants() == 3
    assert server.live.view.users["bob"].groups == ()


async def test_the_timer_fires_the_refresh_once_the_clock_reaches_the_boundary(server: ProxyServer) -> None:
    await server.reload(granted("A"))
    assert server.grant_timer is not None
    server.grant_timer.fire(server.live)  # before the boundary: it only waits again
    await asyncio.sleep(0)
    assert server.live.generation == 2
    with timefns.fixed_clock(UNTIL + datetime.timedelta(seconds=1)):
        server.grant_timer.fire(server.live)
        for _ in range(1000):
            if server.live.generation == 3:
                break
            await asyncio.sleep(0.01)
    assert server.live.generation == 3 and server.live.view.users["bob"].groups == ()

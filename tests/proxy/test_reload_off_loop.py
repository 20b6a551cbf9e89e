"""A reload compiles the snapshot in a worker thread; the relay's loop keeps running and only swaps one reference.

Overlapping reloads go live in the order they were asked for: one that finishes compiling after a later one went
live is dropped (SnapshotSuperseded), never swapped in over it. No timing thresholds: the tests count loop turns
and order events with threading.Event.
"""

from __future__ import annotations

import asyncio
import gc
import secrets
import sys
import threading
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

import pytest

from identity.sessions import SessionAuthority
from identity.store.sqlite import SqliteStore
from identity.tokens import TokenAuthority
from proxy.audit.accesslog import AccessLog, AccessLogWriter
from proxy.errors import SnapshotRejected, SnapshotSuperseded
from proxy.offload import COMPILE_SWITCH_INTERVAL_S, compile_window, run_beside_relay
from proxy.server import ProxyServer, compile_snapshot
from proxy.snapshot import (
    Authorization,
    Condition,
    Policy,
    PolicyEffect,
    PolicyRule,
    PostgresSettings,
    RoutingRule,
    Service,
    ServiceConfig,
    Snapshot,
    Upstream,
)

UP = Upstream.from_url("postgres://127.0.0.1:1")
WAIT_S = 20.0  # only a broken build waits this long; a passing run never does


def heavy_snapshot(services: int) -> Snapshot:
    """`services` Services with 2 routing rules each and one Policy, every CEL text new to the compile cache."""
    salt = secrets.token_hex(4)
    config = ServiceConfig(name="c", upstream=UP, postgres=PostgresSettings(user="u", database="d"))
    policy = Policy(name="p", rules=tuple(
        PolicyRule(name=f"r{i}", effect=PolicyEffect.ALLOW,
                   condition=Condition(match=f'ctx.user.spec.groups.exists(g, g == "{salt}-p{i}")'))
        for i in range(20)))
    return Snapshot(policies={"p": policy}, services={
        f"s{i}": Service(name=f"s{i}", configs={"c": config}, default_config="c",
                         authorization=Authorization(policies=("p",)),
                         rules=tuple(RoutingRule(config_name="c", condition=Condition(
                             match=f'ctx.user.spec.groups.exists(g, g == "{salt}-{i}-{j}")')) for j in range(2)))
        for i in range(services)})


class GatedServices(Mapping[str, Service]):
    """Services whose iteration, which the compile performs, waits for `gate` and first sets `entered`."""

    def __init__(self, services: Mapping[str, Service]) -> None:
        self.services = dict(services)
        self.entered = threading.Event()
        self.gate = threading.Event()

    def __getitem__(self, name: str) -> Service:
        return self.services[name]

    def __len__(self) -> int:
        return len(self.services)

    def __iter__(self) -> Iterator[str]:
        self.entered.set()
        if not self.gate.wait(WAIT_S):
            raise TimeoutError("the compile waited for the loop, which never ran")
        return iter(self.services)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ProxyServer]:
    store = await SqliteStore(tmp_path / "state.db", encryption_key=b"k" * 32).open()
    identity = SessionAuthority(TokenAuthority.load_or_create(tmp_path), store)
    yield ProxyServer(tls_context=None, identity=identity, access_log=AccessLog(AccessLogWriter(None)),
                      fingerprint_key=b"k" * 32)
    await store.close()


async def test_the_loop_runs_while_a_reload_compiles(server: ProxyServer) -> None:
    """The compile cannot finish until the loop has turned 20 times: compiling on the loop would never finish."""
    services = GatedServices(heavy_snapshot(3).services)
    snapshot = Snapshot(services=services)
    turns = 0

    async def ticker() -> None:
        nonlocal turns
        while not services.entered.is_set():
            await asyncio.sleep(0)
        for turns in range(1, 21):  # noqa: B007 - counted for the assertion below
            assert server.live.generation == 1  # the new snapshot is not live while it compiles
            await asyncio.sleep(0)
        services.gate.set()

    ticking = asyncio.create_task(ticker())
    generation = await server.reload(snapshot)
    await ticking
    assert turns == 20
    assert generation == 2 and server.live.generation == 2 and server.live.snapshot is snapshot
    assert server.live.route  # the compiled rules came along with it


async def test_a_heavy_compile_leaves_the_loop_ticking(server: ProxyServer) -> None:
    """Hundreds of new CEL programs: the loop keeps taking turns during the compile, and then swaps."""
    snapshot = heavy_snapshot(150)
    reloading = asyncio.create_task(server.reload(snapshot))
    turns_during_compile = 0
    while not reloading.done():
        await asyncio.sleep(0)
        if server.live.generation == 1:
            turns_during_compile += 1
    assert await reloading == 2 and server.live.snapshot is snapshot
    assert turns_during_compile >= 10


async def test_overlapping_reloads_go_live_in_the_order_asked(server: ProxyServer) -> None:
    """A (asked first) compiles slowly; B (asked second) goes live first; A is then dropped, not swapped in."""
    slow = GatedServices(heavy_snapshot(2).services)
    first, second = Snapshot(services=slow, revision="A"), Snapshot(revision="B")
    asked_first = asyncio.create_task(server.reload(first))
    while not slow.entered.is_set():  # A is compiling (and holds its ticket) before B is asked for
        await asyncio.sleep(0)
    assert await server.reload(second) == 2
    slow.gate.set()
    with pytest.raises(SnapshotSuperseded, match="generation 2"):
        await asked_first
    assert server.live.snapshot.revision == "B" and server.live.generation == 2
    assert await server.reload(Snapshot(revision="C")) == 3  # generations stay consecutive


async def test_an_apply_on_the_loop_supersedes_a_reload_in_flight(server: ProxyServer) -> None:
    slow = GatedServices(heavy_snapshot(2).services)
    compiling = asyncio.create_task(server.reload(Snapshot(services=slow, revision="A")))
    while not slow.entered.is_set():
        await asyncio.sleep(0)
    assert server.apply(Snapshot(revision="B")) == 2
    slow.gate.set()
    with pytest.raises(SnapshotSuperseded):
        await compiling
    assert server.live.snapshot.revision == "B"


async def test_a_snapshot_that_does_not_compile_changes_nothing(server: ProxyServer) -> None:
    config = ServiceConfig(name="c", upstream=UP, postgres=PostgresSettings(user="u"))
    broken = Snapshot(services={"db": Service(name="db", configs={"c": config}, default_config="c", rules=(
        RoutingRule(config_name="c", condition=Condition(match="ctx.user.(")),))})
    with pytest.raises(SnapshotRejected, match="generation 1 stays live"):
        await server.reload(broken)
    assert server.live.generation == 1
    assert await server.reload(Snapshot(revision="next")) == 2
    assert gc.isenabled()  # the compile window restored the collector after the failure


def test_a_compiled_snapshot_holds_no_reference_cycles() -> None:
    """Reference counting alone frees a replaced snapshot, so moving it past the young collections is safe."""
    gc.collect()
    gc.disable()
    try:
        live = compile_snapshot(heavy_snapshot(20), 1)
        assert gc.collect() == 0  # the compile left no cyclic garbage behind
        del live
        assert gc.collect() == 0  # nor does a snapshot once it is replaced
    finally:
        gc.enable()


def test_a_compile_leaves_nothing_frozen() -> None:
    """A frozen object is never collected: a session's reference cycle frozen mid-compile would leak for ever."""
    class Cycle:
        def __init__(self) -> None:
            self.me = self

    alive = Cycle()  # e.g. a session ending during the compile
    with compile_window():
        compile_snapshot(heavy_snapshot(5), 1)
    assert gc.get_freeze_count() == 0
    ref = weakref.ref(alive)
    del alive
    gc.collect()
    assert ref() is None


async def test_work_beside_the_relay_hands_the_gil_back_often_and_restores_the_interval() -> None:
    before = sys.getswitchinterval()
    during = await run_beside_relay(sys.getswitchinterval)
    assert during == pytest.approx(COMPILE_SWITCH_INTERVAL_S) and during < before
    assert sys.getswitchinterval() == before

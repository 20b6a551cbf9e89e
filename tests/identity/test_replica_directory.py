"""The replica directory and writer lease in a real PostgreSQL state store: one leader at a time, handed over
when its connection ends; rows of replicas that stopped beating drop out of the directory."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta

import psycopg
import pytest

from identity.store.postgres import PostgresStore
from identity.store.replicas import STALE_AFTER_S, LocalReplica, ReplicaDirectory
from tests.support.pgcluster import TempCluster


@pytest.fixture(scope="module")
def state_dsn(pg: TempCluster) -> Iterator[str]:
    name = f"pgwarden_state_{secrets.token_hex(4)}"
    pg.psql(f"CREATE DATABASE {name}", database="postgres")
    try:
        yield pg.dsn("pgwarden_admin", name)
    finally:
        pg.psql(f"DROP DATABASE {name} WITH (FORCE)", database="postgres")


@pytest.fixture
async def directories(state_dsn: str) -> AsyncIterator[list[ReplicaDirectory]]:
    store = await PostgresStore(state_dsn, encryption_key=bytes(32)).open()  # migrates the tables
    await store.close()
    made = [ReplicaDirectory(state_dsn, LocalReplica(id=f"r{i}", cancel_address=f"127.0.0.1:{7000 + i}",
                                                     web_url="http://localhost", connections={"sid": i}))
            for i in range(3)]
    yield made
    for directory in made:
        await directory.close()


async def test_one_replica_leads_and_a_closed_leader_hands_over(directories: list[ReplicaDirectory]) -> None:
    held = [await d.beat() for d in directories]
    assert held == [True, False, False]  # the first to ask takes the lease; the others wait
    await directories[0].beat()
    for d in directories:
        await d.beat()
        assert [r.id for r in d.replicas] == ["r0", "r1", "r2"]
        assert d.leader() is not None and d.leader().id == "r0"  # type: ignore[union-attr]
    assert {r.id: r.connections for r in directories[1].others()} == {"r0": {"sid": 0}, "r2": {"sid": 2}}

    await directories[0].close()  # it unlocks the lease as it leaves
    assert [await d.beat() for d in directories[1:]] == [True, False]
    assert [r.id for r in directories[2].replicas] == ["r1", "r2"]  # a closed replica leaves the directory
    assert directories[2].leader().id == "r1"  # type: ignore[union-attr]


async def test_a_replica_that_stopped_beating_drops_out(directories: list[ReplicaDirectory], state_dsn: str) -> None:
    for d in directories:
        await d.beat()
    with psycopg.connect(state_dsn, autocommit=True) as conn:  # r2 froze (no heartbeat) for longer than allowed
        conn.execute("UPDATE pgwarden.replicas SET heartbeat_at = now() - %s WHERE id = 'r2'",
                     (timedelta(seconds=STALE_AFTER_S + 1),))
    await directories[0].beat()
    assert [r.id for r in directories[0].replicas] == ["r0", "r1"]


async def test_a_closed_leader_hands_over_at_the_very_next_beat_every_time(state_dsn: str) -> None:
    """close() releases the lease itself: the next beat of another replica takes it, however long the old
    backend takes to exit (a graceful shutdown or a rolling update must never leave a gap without a writer)."""
    store = await PostgresStore(state_dsn, encryption_key=bytes(32)).open()
    await store.close()
    follower = ReplicaDirectory(state_dsn, LocalReplica(id="f", cancel_address="127.0.0.1:7100",
                                                        web_url="http://localhost"))
    try:
        for round_ in range(40):
            leader = ReplicaDirectory(state_dsn, LocalReplica(id=f"l{round_}", cancel_address="127.0.0.1:7101",
                                                              web_url="http://localhost"))
            assert await leader.beat() is True, round_
            assert await follower.beat() is False, round_
            await leader.close()
            assert await follower.beat() is True, f"round {round_}: the lease was still held after close()"
            await follower.close()  # hand the lease back for the next round
    finally:
        await follower.close()

"""The PostgreSQL store's revocation feed: it reports its own loss and can be re-established without doubling."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta

import pytest

from identity.store.base import utc_now
from identity.store.postgres import LISTEN_APPLICATION_NAME, PostgresStore
from tests.identity.test_store import KEY, _new_database, new_session
from tests.support.pgcluster import TempCluster


@pytest.fixture
def state_dsn(pg: TempCluster) -> Iterator[str]:
    name = _new_database(pg)
    try:
        yield pg.dsn("pgwarden_admin", name)
    finally:
        pg.psql(f"DROP DATABASE {name} WITH (FORCE)", database="postgres")


async def test_a_terminated_listen_is_reported_and_re_established_once(pg: TempCluster, state_dsn: str) -> None:
    store = await PostgresStore(state_dsn, encryption_key=KEY).open()
    try:
        heard: list[str] = []
        arrived = asyncio.Event()

        def on_revoked(session_id: str) -> None:
            heard.append(session_id)
            arrived.set()

        await store.watch_revocations(on_revoked)
        await store.watch_revocations(on_revoked)  # idempotent: one callback, one connection
        pg.psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE application_name = '{LISTEN_APPLICATION_NAME}'", database="postgres")
        await asyncio.wait_for(store.revocation_watch_lost(), timeout=5)
        await store.watch_revocations(on_revoked)  # re-LISTEN on a new connection
        sid = await new_session(store, now=utc_now() - timedelta(minutes=1))
        assert await store.revoke_session(sid, utc_now())
        await asyncio.wait_for(arrived.wait(), timeout=5)
        await asyncio.sleep(0.1)  # a doubled callback would arrive in this window
        assert heard == [sid]
        listeners = pg.psql(f"SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                            f"'{LISTEN_APPLICATION_NAME}'", database="postgres")
        assert int(listeners) == 1
    finally:
        await store.close()

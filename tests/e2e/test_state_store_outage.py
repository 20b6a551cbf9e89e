"""Revocation keeps working through an outage of the PostgreSQL state store, or sessions end after the grace.

The store is a second real PostgreSQL cluster, stopped with `pg_ctl stop -m fast` and started again, or its
LISTEN backend is terminated with pg_terminate_backend. Before the fix the watcher task died with the store
and LISTEN was never re-established: a session revoked afterwards kept working until the next periodic
re-check at best.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from identity.store.base import REVOCATION_CHANNEL, utc_now
from identity.store.postgres import LISTEN_APPLICATION_NAME
from tests.support.pgcluster import TempCluster
from tests.support.proxy_harness import ProxyHarness, start_harness

OUTAGE = "state store unreachable"
RECOVERED = "state store reachable again"


@pytest.fixture(scope="module")
def store_pg() -> Iterator[TempCluster]:
    with TempCluster() as cluster:
        yield cluster


@pytest.fixture
def proxy_on_store(pg: Any, store_pg: TempCluster, tmp_path: Path, request: pytest.FixtureRequest
                   ) -> Iterator[ProxyHarness]:
    grace = getattr(request, "param", 300.0)
    database = f"pgwarden_state_{secrets.token_hex(4)}"  # each proxy has its own data dir, so its own key
    store_pg.psql(f"CREATE DATABASE {database}", database="postgres")
    harness, stop = start_harness(pg, tmp_path, state=store_pg.dsn("pgwarden_admin", database), name="outage",
                                  state_outage_grace_s=grace)
    harness.store_database = database  # type: ignore[attr-defined]
    try:
        yield harness
    finally:
        if not (store_pg.datadir / "postmaster.pid").exists():
            store_pg.resume()
        stop()


def wait_until(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s}s: {what}")
        time.sleep(0.02)


def listening(store_pg: TempCluster) -> bool:
    try:
        count = store_pg.psql(f"SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                              f"'{LISTEN_APPLICATION_NAME}'", database="postgres")
    except Exception:  # noqa: BLE001  the server is still starting
        return False
    return int(count.strip()) == 1


def live(proxy: ProxyHarness, session_id: str) -> bool:
    return any(s["identitySession"] == session_id for s in proxy.call(proxy.running.server.session_list))


def test_a_revocation_while_listen_is_down_is_caught_on_reconnect(proxy_on_store: ProxyHarness,
                                                                    store_pg: TempCluster) -> None:
    proxy = proxy_on_store
    session, token = proxy.issue("bob")
    with psycopg.connect(proxy.dsn("bob", token=token), autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("read_only",)
        wait_until(lambda: listening(store_pg), 5, "the proxy holds LISTEN")
        # Kill the LISTEN backend and revoke in the same breath, as another replica would (its NOTIFY has no
        # listener to reach): only a re-check on reconnect can find it before the 30 s periodic one.
        store_pg.psql(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = "
            f"'{LISTEN_APPLICATION_NAME}';"
            f"WITH r AS (UPDATE pgwarden.sessions SET revoked_at = now() WHERE id = '{session.id}' RETURNING id) "
            f"SELECT pg_notify('{REVOCATION_CHANNEL}', id) FROM r;",
            database=proxy.store_database,  # type: ignore[attr-defined]
        )
        wait_until(lambda: not live(proxy, session.id), 5, "the revoked session is ended")
        with pytest.raises(psycopg.OperationalError, match="session revoked"):
            conn.execute("SELECT 1")
    wait_until(lambda: listening(store_pg), 5, "LISTEN is held again")


def test_after_a_store_restart_a_revocation_ends_the_session_at_once(
    proxy_on_store: ProxyHarness, store_pg: TempCluster, caplog: pytest.LogCaptureFixture,
) -> None:
    proxy = proxy_on_store
    caplog.set_level(logging.INFO, logger="pgwarden.identity")
    session, token = proxy.issue("bob")
    with psycopg.connect(proxy.dsn("bob", token=token), autocommit=True) as conn:
        wait_until(lambda: listening(store_pg), 5, "the proxy holds LISTEN")
        store_pg.halt()
        wait_until(lambda: OUTAGE in caplog.text, 5, "the outage is logged")
        assert conn.execute("SELECT 1").fetchone() == (1,)  # within the grace the session goes on
        store_pg.resume()
        wait_until(lambda: listening(store_pg), 15, "LISTEN is re-established")
        wait_until(lambda: RECOVERED in caplog.text, 5, "the recovery is logged")
        assert live(proxy, session.id)
        assert proxy.run(proxy.running.server.identity.store.revoke_session(session.id, utc_now()))
        wait_until(lambda: not live(proxy, session.id), 1.5, "the revoked session is ended")
        with pytest.raises(psycopg.OperationalError, match="session revoked"):
            conn.execute("SELECT 1")
    messages = [r.getMessage() for r in caplog.records if r.name == "pgwarden.identity"]
    assert sum(OUTAGE in m for m in messages) == 1, messages  # once per outage, not once per retry
    assert sum(RECOVERED in m for m in messages) == 1, messages
    assert store_pg.passwords["pgwarden_admin"] not in caplog.text


@pytest.mark.parametrize("proxy_on_store", [1.0], indirect=True)
def test_sessions_end_when_the_store_stays_down_past_the_grace(proxy_on_store: ProxyHarness,
                                                                store_pg: TempCluster) -> None:
    proxy = proxy_on_store
    session, token = proxy.issue("bob")
    with psycopg.connect(proxy.dsn("bob", token=token), autocommit=True) as conn:
        wait_until(lambda: listening(store_pg), 5, "the proxy holds LISTEN")
        store_pg.halt()
        wait_until(lambda: not live(proxy, session.id), 10, "the session is ended after the grace")
        with pytest.raises(psycopg.OperationalError, match="state store has been unreachable for over 1s"):
            conn.execute("SELECT 1")

"""Cancel requests reach the right upstream backend: psql Ctrl-C, psycopg cancel, asyncpg timeout."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import asyncpg
import psycopg
import pytest

from tests.support.proxy_harness import ProxyHarness


def test_psycopg_cancel_stops_pg_sleep(proxy: ProxyHarness) -> None:
    with psycopg.connect(proxy.dsn("bob")) as conn:
        # cancel_safe waits without holding the GIL; the proxy under test runs in this process.
        timer = threading.Timer(0.5, conn.cancel_safe)
        timer.start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled, match="canceling statement due to user request"):
            conn.execute("SELECT pg_sleep(30)")
        assert time.monotonic() - started < 10
        conn.rollback()
        assert conn.execute("SELECT 1").fetchone() == (1,)  # the session goes on


def test_psql_ctrl_c_cancels_query(proxy: ProxyHarness) -> None:
    env = {**os.environ, "PGPASSWORD": proxy.token("bob")}
    dsn = f"host=127.0.0.1 port={proxy.port} dbname=my-db sslmode=require user=bob"
    psql = subprocess.Popen(["psql", dsn, "-Xc", "SELECT pg_sleep(30)"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    started = time.monotonic()
    psql.send_signal(signal.SIGINT)
    _, stderr = psql.communicate(timeout=15)
    assert "canceling statement due to user request" in stderr
    assert time.monotonic() - started < 10


async def test_asyncpg_timeout_cancels_on_server(proxy: ProxyHarness) -> None:
    conn = await asyncpg.connect(host="127.0.0.1", port=proxy.port, user="bob", database="my-db",
                                 password=proxy.token("bob"), ssl="require")
    try:
        with pytest.raises(TimeoutError):
            await conn.execute("SELECT pg_sleep(30)", timeout=0.5)
        assert await conn.fetchval("SELECT 2") == 2
    finally:
        await conn.close()


def test_cancel_with_wrong_key_is_ignored(proxy: ProxyHarness) -> None:
    import socket
    import struct

    with psycopg.connect(proxy.dsn("bob")) as conn:
        pid = conn.info.backend_pid
        with socket.create_connection(("127.0.0.1", proxy.port)) as s:
            s.sendall(struct.pack("!iiii", 16, 80877102, pid, 12345))
            # A key nobody issued has nothing to wait for: the connection closes at once, with no answer (a cancel
            # connection is held only while a real forward is under way).
            s.settimeout(5)
            assert s.recv(1) == b""
        assert conn.execute("SELECT pg_sleep(0.3), 1").fetchone() == ("", 1)


def test_a_cancel_has_reached_the_server_when_its_connection_closes(proxy: ProxyHarness) -> None:
    """libpq (and asyncpg) wait for the cancel connection to close and then go on: PostgreSQL closes it only after
    signalling the backend, so a cancel sent while idle is spent before the next query. A proxy that closed it
    first and forwarded later would cancel whatever the client ran next (asyncpg's COPY error recovery did)."""
    with psycopg.connect(proxy.dsn("bob"), autocommit=True) as conn:
        for attempt in range(20):
            conn.cancel_safe(timeout=10)  # idle: nothing to cancel, and it returns once the connection closed
            try:
                assert conn.execute("SELECT pg_sleep(0.05), 1").fetchone() == ("", 1)
            except psycopg.errors.QueryCanceled:
                pytest.fail(f"attempt {attempt}: a cancel sent while idle cancelled the next query")

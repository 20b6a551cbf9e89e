"""The test cluster is what other tests assume: TLS from the test CA, four auth methods, seeded privileges."""

from __future__ import annotations

import asyncpg
import psycopg
import pytest
from psycopg import errors

from tests.conftest import LeakGuard
from tests.support.pgcluster import TempCluster


def test_scram_over_verified_tls(pg: TempCluster) -> None:
    dsn = pg.dsn("full_access", sslmode="verify-full", sslrootcert=str(pg.ca_cert_path))
    with psycopg.connect(dsn, host="localhost") as conn:
        row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
        assert row == (True,)
        assert conn.execute("SELECT current_user, current_database()").fetchone() == ("full_access", "my_db")


def test_verify_full_to_ip_fails_on_host_name(pg: TempCluster, leak_guard: LeakGuard) -> None:
    dsn = pg.dsn("full_access", sslmode="verify-full", sslrootcert=str(pg.ca_cert_path))
    with pytest.raises(psycopg.OperationalError, match="does not match host name") as caught:
        psycopg.connect(dsn)
    leak_guard.check(str(caught.value), "psycopg's connection error")


@pytest.mark.parametrize("role", ["md5_user", "plain_user"])
async def test_asyncpg_logs_in_with_md5_and_password_methods(pg: TempCluster, role: str) -> None:
    conn = await asyncpg.connect(pg.dsn(role, sslmode="require"))
    try:
        assert await conn.fetchval("SELECT current_user") == role
        assert await conn.fetchval("SELECT count(*) FROM items") >= 3
    finally:
        await conn.close()


def test_md5_user_password_is_stored_as_md5(pg: TempCluster) -> None:
    stored = pg.psql("SELECT left(rolpassword, 3) FROM pg_authid WHERE rolname = 'md5_user'").strip()
    assert stored == "md5"


def test_read_only_cannot_insert(pg: TempCluster) -> None:
    with psycopg.connect(pg.dsn("read_only")) as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone()[0] >= 3  # type: ignore[index]
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("INSERT INTO items (name) VALUES ('nope')")


def test_full_access_can_insert(pg: TempCluster) -> None:
    with psycopg.connect(pg.dsn("full_access")) as conn:
        row = conn.execute("INSERT INTO items (name) VALUES ('delta') RETURNING id").fetchone()
        assert row is not None
        conn.rollback()  # leave the seed rows as other tests expect them


def test_second_database_and_admin(pg: TempCluster) -> None:
    with psycopg.connect(pg.dsn("pgwarden_admin", database="other_db")) as conn:
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() == (True,)


def test_leak_guard_fails_on_a_known_secret(pg: TempCluster, leak_guard: LeakGuard) -> None:
    leak_guard.check("nothing to see", "clean text")
    with pytest.raises(pytest.fail.Exception, match="leaked into a log line") as caught:
        leak_guard.check(f"password={pg.passwords['read_only']}", "a log line")
    assert pg.passwords["read_only"] not in str(caught.value)

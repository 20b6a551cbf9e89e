"""Identity-routed upstream login: the manifests choose the PostgreSQL role, never the client."""

from __future__ import annotations

import os
import subprocess

import asyncpg
import psycopg
import pytest

from tests.support.proxy_harness import ProxyHarness


def current_user(dsn: str) -> tuple[str, str]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT current_user, current_database()").fetchone()
        assert row is not None
        return row[0], row[1]


def test_admins_user_lands_as_full_access_and_can_write(proxy: ProxyHarness) -> None:
    with psycopg.connect(proxy.dsn("alice")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("full_access",)
        conn.execute("INSERT INTO items(name) VALUES ('from alice')")
        conn.commit()
        assert conn.execute("SELECT count(*) FROM items WHERE name = 'from alice'").fetchone()[0] >= 1  # type: ignore[index]


def test_plain_user_lands_as_read_only_and_postgres_refuses_writes(proxy: ProxyHarness) -> None:
    with psycopg.connect(proxy.dsn("bob")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("read_only",)
        assert conn.execute("SELECT count(*) FROM items").fetchone()[0] >= 1  # type: ignore[index]
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
            conn.execute("INSERT INTO items(name) VALUES ('from bob')")


def test_workload_in_engineering_group_gets_full_access(proxy: ProxyHarness) -> None:
    assert current_user(proxy.dsn("ci-bot")) == ("full_access", "my_db")


def test_psql_with_token_as_password(proxy: ProxyHarness) -> None:
    env = {**os.environ, "PGPASSWORD": proxy.token("alice")}
    dsn = f"host=127.0.0.1 port={proxy.port} dbname=my-db sslmode=require user=alice"
    out = subprocess.run(["psql", dsn, "-AtXc", "SELECT current_user"], env=env, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "full_access"


async def test_asyncpg_extended_protocol_through_proxy(proxy: ProxyHarness) -> None:
    conn = await asyncpg.connect(host="127.0.0.1", port=proxy.port, user="bob", database="my-db",
                                 password=proxy.token("bob"), ssl="require")
    try:
        assert await conn.fetchval("SELECT current_user") == "read_only"
        assert await conn.fetchval("SELECT $1::int + 1", 41) == 42
        rows = await conn.fetch("SELECT id, name FROM items ORDER BY id LIMIT 2")
        assert len(rows) == 2
    finally:
        await conn.close()


@pytest.mark.parametrize("service, role", [("legacy-md5", "md5_user"), ("legacy-plain", "plain_user")])
def test_md5_and_cleartext_upstreams(proxy: ProxyHarness, service: str, role: str) -> None:
    assert current_user(proxy.dsn("bob", service)) == (role, "my_db")


def test_upstream_verify_full_against_test_ca(proxy: ProxyHarness) -> None:
    with psycopg.connect(proxy.dsn("bob", "verified")) as conn:
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)


def test_upstream_verify_full_refuses_wrong_host_name(proxy: ProxyHarness, pg) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(proxy.dsn("bob", "wrong-host"))
    message = str(err.value)
    assert 'service "wrong-host"' in message and "certificate verification failed" in message
    assert pg.passwords["read_only"] not in message


def test_empty_user_and_database_forward_what_the_client_asked(proxy: ProxyHarness) -> None:
    token = proxy.token("bob")
    assert current_user(proxy.dsn("read_only", "passthrough/other_db", token=token)) == ("read_only", "other_db")


def test_service_chosen_by_sni_host_name(proxy: ProxyHarness) -> None:
    # libpq sends SNI for host names; "my-db.localhost" resolves to loopback on this machine's resolver
    # only if listed, so connect by hostaddr and let host= carry the name.
    dsn = proxy.dsn("bob", "my_db").replace("host='127.0.0.1'", "host='my-db.localhost' hostaddr='127.0.0.1'")
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == ("read_only", "my_db")


def test_startup_parameters_are_forwarded(proxy: ProxyHarness) -> None:
    dsn = proxy.dsn("bob", application_name="report-job", options="-c search_path=pg_catalog")
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SHOW application_name").fetchone() == ("report-job",)
        assert conn.execute("SHOW search_path").fetchone() == ("pg_catalog",)

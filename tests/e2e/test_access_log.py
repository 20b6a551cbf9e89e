"""Access log: SESSION_START, QUERY, PARSE, SESSION_END as JSON lines; never a password or token."""

from __future__ import annotations

import asyncpg
import psycopg

from tests.support.proxy_harness import ProxyHarness


async def test_session_lifecycle_is_logged(proxy: ProxyHarness, pg) -> None:  # type: ignore[no-untyped-def]
    token = proxy.token("alice")
    conn = await asyncpg.connect(host="127.0.0.1", port=proxy.port, user="alice", database="my-db",
                                 password=token, ssl="require")
    await conn.fetchval("SELECT 'logged-extended' || $1::text", "x")
    await conn.close()
    with psycopg.connect(proxy.dsn("alice", token=token)) as c:
        c.execute("SELECT 'logged-simple'", prepare=False)
    proxy.wait_for(lambda: sum(e["entry"]["info"]["postgres"]["type"] == "SESSION_END"
                               for e in proxy.log_entries() if e["entry"]["common"].get("user") == "alice") >= 2)
    entries = [e for e in proxy.log_entries() if e["entry"]["common"].get("user") == "alice"]
    kinds = [e["entry"]["info"]["postgres"]["type"] for e in entries]
    assert {"SESSION_START", "QUERY", "PARSE", "SESSION_END"} <= set(kinds)
    parse = next(e for e in entries if e["entry"]["info"]["postgres"]["type"] == "PARSE"
                 and "logged-extended" in e["entry"]["info"]["postgres"]["parse"]["query"])
    assert parse["kind"] == "AccessLog" and parse["entry"]["common"]["config"] == "full-access"
    assert any("logged-simple" in e["entry"]["info"]["postgres"].get("query", {}).get("query", "") for e in entries)
    start = next(e for e in entries if e["entry"]["info"]["postgres"]["type"] == "SESSION_START")
    assert start["entry"]["info"]["postgres"]["start"]["user"] == "full_access"
    assert start["entry"]["info"]["postgres"]["start"]["requestedUser"] == "alice"
    end = next(e for e in entries if e["entry"]["info"]["postgres"]["type"] == "SESSION_END")
    assert end["entry"]["info"]["postgres"]["end"]["bytesFromUpstream"] > 0
    text = proxy.log_path.read_text()
    assert token not in text
    for password in pg.passwords.values():
        assert password not in text


def test_query_text_decoded_in_client_encoding(proxy: ProxyHarness) -> None:
    with psycopg.connect(proxy.dsn("bob")) as conn:
        conn.execute("SET client_encoding TO 'LATIN9'")
        conn.execute("SELECT 'prix: 5€' AS price", prepare=False)
        conn.execute("SET client_encoding TO 'UTF8'")
    proxy.wait_for(lambda: any("prix: 5€" in e["entry"]["info"]["postgres"].get("query", {}).get("query", "")
                               for e in proxy.log_entries()))

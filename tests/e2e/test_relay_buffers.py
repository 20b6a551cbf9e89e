"""Payloads bigger than the relay's read buffer arrive intact over TLS, also when sessions interleave.

Every connection of a proxy reads into one shared buffer per event-loop thread (proxy/connection.py,
BufferedProtocol) and copies each read out before the next; these tests would catch a read that was
cut short, overwritten by another session's read, or not counted.
"""

from __future__ import annotations

import asyncio
import hashlib

import asyncpg
import psycopg

from tests.support.proxy_harness import ProxyHarness

BIG = 1_000_000  # bytes: about 4 reads of the 256 KiB buffer


def test_megabyte_query_and_multi_megabyte_result_pass_intact(proxy: ProxyHarness) -> None:
    text = "".join(chr(ord("a") + i % 26) for i in range(BIG))
    with psycopg.connect(proxy.dsn("bob")) as conn:
        # simple protocol: one 1 MB Query message from the client
        (echoed_length, echoed_md5), = conn.execute(
            f"SELECT length('{text}'), md5('{text}')", prepare=False).fetchall()
        # ~6.4 MB single value from the server
        (joined,), = conn.execute(
            "SELECT string_agg(md5(i::text), '' ORDER BY i) FROM generate_series(1, 200000) AS i",
            prepare=False).fetchall()
        rows = conn.execute("SELECT i, repeat(chr(65 + i % 26), 200) FROM generate_series(1, 20000) AS i",
                            prepare=False).fetchall()
    assert (echoed_length, echoed_md5) == (BIG, hashlib.md5(text.encode()).hexdigest())
    assert joined == "".join(hashlib.md5(str(i).encode()).hexdigest() for i in range(1, 200001))
    assert len(rows) == 20000 and all(row == (i, chr(65 + i % 26) * 200) for i, row in enumerate(rows, start=1))
    proxy.wait_for(lambda: any(
        e["entry"]["info"]["postgres"].get("type") == "QUERY"
        and len(e["entry"]["info"]["postgres"]["query"]["query"]) > BIG for e in proxy.log_entries()))


async def test_concurrent_sessions_get_their_own_bytes(proxy: ProxyHarness) -> None:
    token = proxy.token("alice")

    async def round_trips(letter: str) -> list[str]:
        conn = await asyncpg.connect(host="127.0.0.1", port=proxy.port, user="alice", database="my-db",
                                     password=token, ssl="require")
        try:
            return [await conn.fetchval("SELECT $1::text || repeat($2::text, 300000)", f"{letter}{n}", letter)
                    for n in range(5)]
        finally:
            await conn.close()

    letters = "pqrstu"
    results = await asyncio.gather(*(round_trips(letter) for letter in letters))
    for letter, values in zip(letters, results, strict=True):
        assert values == [f"{letter}{n}" + letter * 300000 for n in range(5)]
    proxy.wait_for(lambda: sum(
        e["entry"]["info"]["postgres"].get("type") == "SESSION_END"
        and e["entry"]["info"]["postgres"]["end"]["bytesFromUpstream"] > 5 * 300000
        for e in proxy.log_entries() if e["entry"]["common"].get("user") == "alice") >= len(letters))

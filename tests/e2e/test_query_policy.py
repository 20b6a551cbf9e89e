"""Per-query policy (authorization mode ALL) with the real engine, real PostgreSQL and real drivers.

A denial must look to the client exactly like a statement PostgreSQL itself refused: same messages,
same SQLSTATE (42501), same transaction status, the session goes on. The comparisons run one sequence
directly against PostgreSQL (where the statement fails on a schema permission) and through the proxy
(where a Policy denies it), and compare what the client sees.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from proxy.pgwire import messages as m
from proxy.pgwire.denials import raise_sql
from tests.support.proxy_harness import MANIFESTS, ProxyHarness, start_harness, write_manifests

POLICIES = MANIFESTS + """\
---
kind: Service
metadata: {{name: guarded}}
spec:
  mode: POSTGRES
  authorization: {{policies: [read-only-sql, inserts-for-admins]}}
  config:
    upstream: {{url: "postgres://{host}:{port}"}}
    postgres: {{user: full_access, database: my_db, auth: {{password: {{fromSecret: full-access-password}}}},
               authorization: {{mode: ALL}}}}
---
kind: Policy
metadata: {{name: read-only-sql}}
spec:
  rules:
    - name: no-writes
      effect: DENY
      condition: {{match: 'ctx.request.postgres.statement.readOnly == false'}}
    - name: no-function-calls
      effect: DENY
      condition: {{match: 'ctx.request.postgres.functionCall.oid >= 0'}}
    - name: everything-else
      effect: ALLOW
      priority: 4
      condition: {{matchAny: true}}
---
kind: Policy
metadata: {{name: inserts-for-admins}}
spec:
  rules:
    - name: insert-items
      effect: ALLOW
      priority: -1
      condition:
        all:
          of:
            - match: '"admins" in ctx.user.spec.groups'
            - match: 'ctx.request.postgres.statement.kinds.all(k, k == "INSERT")'
"""
DENIED = 'denied by policy "read-only-sql", rule "no-writes"'
# Fails at parse analysis directly against PostgreSQL (no USAGE on the schema), like a denied Parse.
REFUSED_WRITE = "DELETE FROM pgw_private.t"


@pytest.fixture(scope="module")
def guarded(pg: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyHarness]:
    pg.psql("CREATE SCHEMA IF NOT EXISTS pgw_private; CREATE TABLE IF NOT EXISTS pgw_private.t (x int);")
    harness, stop = start_harness(pg, tmp_path_factory.mktemp("query-policy"), manifests_text=POLICIES,
                                  name="qp")
    yield harness
    stop()


def item_count(pg: Any, name: str) -> int:
    return int(pg.psql(f"SELECT count(*) FROM items WHERE name = '{name}'").strip())


def denials(proxy: ProxyHarness, kind: str) -> list[dict[str, Any]]:
    found = []
    for entry in proxy.log_entries():
        postgres = entry["entry"]["info"]["postgres"]
        if postgres["type"] == kind and postgres.get("decision", {}).get("status") == "DENIED":
            found.append(postgres)
    return found


def test_psql_simple_protocol_denies_every_kind_of_write_and_goes_on(guarded: ProxyHarness, pg: Any) -> None:
    script = """\
INSERT INTO items(name) VALUES ('psql-denied');
UPDATE items SET name = 'psql-denied' WHERE id = 1;
DELETE FROM items WHERE name = 'alpha';
CREATE TABLE psql_denied (x int);
DROP TABLE items;
SELECT 1 \\; INSERT INTO items(name) VALUES ('psql-denied');
WITH gone AS (DELETE FROM items RETURNING *) SELECT count(*) FROM gone;
SELECT 'still here', count(*) > 0 FROM items;
"""
    env = {**os.environ, "PGPASSWORD": guarded.token("bob")}
    dsn = f"host=127.0.0.1 port={guarded.port} dbname=guarded sslmode=require user=bob"
    out = subprocess.run(["psql", dsn, "-XAt"], input=script, env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "still here|t", out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 7 and all(DENIED in line for line in errors), out.stderr
    assert "CONTEXT" not in out.stderr and "PL/pgSQL" not in out.stderr and "pgwarden.denial" not in out.stderr
    assert item_count(pg, "psql-denied") == 0 and item_count(pg, "alpha") == 1
    guarded.wait_for(lambda: len([d for d in denials(guarded, "QUERY") if "psql-denied" in d["query"]["query"]]) >= 3)
    logged = denials(guarded, "QUERY")
    assert all(d["decision"]["policy"] == "read-only-sql" and d["decision"]["rule"] == "no-writes" for d in logged)
    assert any(d["query"]["query"].startswith("WITH gone AS (DELETE") for d in logged)


def test_copy_from_stdin_is_denied_before_the_upstream_reads_data(guarded: ProxyHarness, pg: Any) -> None:
    with psycopg.connect(guarded.dsn("bob", "guarded"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match=DENIED):
            with conn.cursor().copy("COPY items(name) FROM STDIN") as copy:
                copy.write_row(("copy-denied",))
        assert conn.execute("SELECT 41 + 1").fetchone() == (42,)
        with conn.cursor().copy("COPY (SELECT name FROM items WHERE name = 'beta') TO STDOUT") as copy:
            assert [bytes(row) for row in copy] == [b"beta\n"]  # COPY TO is read-only, and allowed
    assert item_count(pg, "copy-denied") == 0


def test_psycopg_server_side_prepared_statements(guarded: ProxyHarness, pg: Any) -> None:
    with psycopg.connect(guarded.dsn("bob", "guarded"), prepare_threshold=0, autocommit=True) as conn:
        for _ in range(3):  # prepared once, then reused by name
            assert conn.execute("SELECT count(*) >= %s FROM items", [0]).fetchone() == (True,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match=DENIED):
            conn.execute("INSERT INTO items(name) VALUES (%s)", ["prepared-denied"])
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match=DENIED):
            conn.execute("UPDATE items SET name = %s WHERE id = %s", ["prepared-denied", 1])
        assert conn.execute("SELECT %s::int * 2", [21]).fetchone() == (42,)
    assert item_count(pg, "prepared-denied") == 0
    guarded.wait_for(lambda: any("prepared-denied" not in str(d) and d["parse"]["query"].startswith("UPDATE")
                                 for d in denials(guarded, "PARSE")))


async def test_asyncpg_extended_protocol(guarded: ProxyHarness, pg: Any) -> None:
    conn = await asyncpg.connect(host="127.0.0.1", port=guarded.port, user="bob", database="guarded",
                                 password=guarded.token("bob"), ssl="require")
    try:
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError, match=DENIED):
            await conn.execute("INSERT INTO items(name) VALUES ($1)", "asyncpg-denied")
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError, match=DENIED):
            await conn.prepare("DELETE FROM items WHERE id = $1")
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError, match=DENIED):
            await conn.executemany("INSERT INTO items(name) VALUES ($1)", [("asyncpg-denied",), ("x",)])
        assert await conn.fetchval("SELECT $1::int + 1", 41) == 42
        statement = await conn.prepare("SELECT name FROM items WHERE id = $1")
        assert await statement.fetchval(1) is not None
        async with conn.transaction():
            assert await conn.fetchval("SELECT count(*) FROM items") > 0
    finally:
        await conn.close()
    assert item_count(pg, "asyncpg-denied") == 0


def test_function_call_via_lo_import_is_denied(guarded: ProxyHarness, pg: Any, tmp_path: Path) -> None:
    before = pg.psql("SELECT count(*) FROM pg_largeobject_metadata").strip()
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"large object that must not arrive")
    env = {**os.environ, "PGPASSWORD": guarded.token("bob")}
    dsn = f"host=127.0.0.1 port={guarded.port} dbname=guarded sslmode=require user=bob"
    # libpq's lo_import() looks the functions up with a SELECT, then calls lo_creat/lo_open by FunctionCall.
    out = subprocess.run(["psql", dsn, "-XAt", "-c", f"\\lo_import {payload}", "-c", "SELECT 'after'"],
                         env=env, capture_output=True, text=True, timeout=60)
    # A FunctionCall presents a statement that is not read-only, so the first rule, no-writes, denies it.
    assert 'function call denied by policy "read-only-sql", rule "no-writes"' in out.stderr, out.stderr
    assert out.stdout.strip().endswith("after")
    assert pg.psql("SELECT count(*) FROM pg_largeobject_metadata").strip() == before
    guarded.wait_for(lambda: bool(denials(guarded, "FUNCTION_CALL")))
    assert denials(guarded, "FUNCTION_CALL")[0]["functionCall"]["oid"] > 0


# --- exactly what PostgreSQL does ------------------------------------------------------------------------


def transaction_outcome(dsn: str, marker: str, *, simple: bool) -> list[Any]:
    """Run INSERT, a refused write, SELECT, COMMIT in one transaction; what the client saw at each step."""
    seen: list[Any] = []
    with psycopg.connect(dsn) as conn:
        # psycopg sends a statement without parameters as a simple Query unless asked to prepare it.
        cursor = psycopg.ClientCursor(conn) if simple else conn.cursor()
        for sql in (f"INSERT INTO items(name) VALUES ('{marker}')", REFUSED_WRITE, "SELECT 1", "COMMIT"):
            try:
                cursor.execute(sql, prepare=not simple)
                seen.append(("ok", cursor.statusmessage))
            except psycopg.Error as exc:
                seen.append(("error", exc.sqlstate))
            seen.append(conn.info.transaction_status.name)
    return seen


@pytest.mark.parametrize("simple", [True, False], ids=["simple", "extended"])
def test_denial_inside_a_transaction_aborts_it_like_postgresql(guarded: ProxyHarness, pg: Any, simple: bool) -> None:
    direct = transaction_outcome(pg.dsn("full_access"), f"tx-direct-{simple}", simple=simple)
    proxied = transaction_outcome(guarded.dsn("alice", "guarded"), f"tx-proxied-{simple}", simple=simple)
    assert direct == [("ok", "INSERT 0 1"), "INTRANS", ("error", "42501"), "INERROR",
                      ("error", "25P02"), "INERROR", ("ok", "ROLLBACK"), "IDLE"]
    assert proxied == direct
    assert item_count(pg, f"tx-direct-{simple}") == 0 and item_count(pg, f"tx-proxied-{simple}") == 0
    kind = "QUERY" if simple else "PARSE"  # the denial came through the protocol this test meant
    guarded.wait_for(lambda: any(REFUSED_WRITE in str(d) for d in denials(guarded, kind)))


class RawClient:
    """A minimal protocol 3.0 frontend: cleartext password login, then raw messages in and out."""

    def __init__(self, port: int, *, user: str, database: str, password: str, tls: bool) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        if tls:
            sock.sendall(m.encode_ssl_request())
            assert sock.recv(1) == b"S"
            context = ssl.create_default_context()
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            sock = context.wrap_socket(sock)
        self.sock, self.buf = sock, b""
        sock.sendall(m.encode_startup_message({"user": user, "database": database}))
        while True:
            type_byte, body = self.read()
            if type_byte == m.AUTHENTICATION and body[:4] == m.AUTH_CLEARTEXT.to_bytes(4, "big"):
                sock.sendall(m.encode_password_message(password.encode() + b"\x00"))
            elif type_byte == m.ERROR_RESPONSE:
                raise AssertionError(m.parse_error_fields(body).message)
            elif type_byte == m.READY_FOR_QUERY:
                return

    def read(self) -> tuple[int, bytes]:
        while len(self.buf) < 5 or len(self.buf) < 1 + int.from_bytes(self.buf[1:5], "big"):
            data = self.sock.recv(65536)
            assert data, "connection closed"
            self.buf += data
        length = int.from_bytes(self.buf[1:5], "big")
        type_byte, body, self.buf = self.buf[0], self.buf[5 : 1 + length], self.buf[1 + length :]
        return type_byte, body

    def exchange(self, data: bytes, ready_count: int) -> list[tuple[str, str]]:
        """Send, then read until `ready_count` ReadyForQuery; returns (type, detail) per message."""
        self.sock.sendall(data)
        seen: list[tuple[str, str]] = []
        while ready_count:
            type_byte, body = self.read()
            if type_byte in (m.PARAMETER_STATUS, m.NOTICE_RESPONSE):
                continue
            detail = body.rstrip(b"\x00").decode("utf-8", "replace")
            if type_byte == m.ERROR_RESPONSE:
                detail = m.parse_error_fields(body).code
            elif type_byte == ord("T"):
                detail = ""  # column table OIDs differ between the two roles' views; names are in D/C
            ready_count -= type_byte == m.READY_FOR_QUERY
            seen.append((chr(type_byte), detail))
        return seen

    def close(self) -> None:
        self.sock.sendall(m.encode_terminate())
        self.sock.close()


def parse(name: str, sql: str) -> bytes:
    return m.encode_message(m.PARSE, name.encode() + b"\x00" + sql.encode() + b"\x00\x00\x00")


def bind(name: str) -> bytes:
    return m.encode_message(m.BIND, b"\x00" + name.encode() + b"\x00\x00\x00\x00\x00\x00\x00")


EXECUTE = m.encode_message(m.EXECUTE, b"\x00\x00\x00\x00\x00")
DESCRIBE = m.encode_message(m.DESCRIBE, b"P\x00")
SYNC = m.encode_message(m.SYNC)
PIPELINE = [
    # A denied Parse in the middle of a pipeline: the rest is skipped until Sync, then all goes on.
    (parse("s1", "SELECT 1") + bind("s1") + EXECUTE + parse("s2", REFUSED_WRITE) + bind("s2") + DESCRIBE
     + EXECUTE + parse("s3", "SELECT 3") + bind("s3") + EXECUTE + m.encode_query("SELECT 'skipped'") + SYNC, 1),
    (bind("s1") + EXECUTE + SYNC, 1),  # s1 was prepared before the denial
    (bind("s2") + EXECUTE + SYNC, 1),  # s2 does not exist (26000), as after a failed Parse
    (parse("", "SELECT 4") + bind("") + EXECUTE + SYNC + m.encode_query("SELECT 5"), 2),
    (m.encode_query("BEGIN") + parse("", REFUSED_WRITE) + bind("") + EXECUTE + SYNC + m.encode_query("SELECT 6")
     + m.encode_query("COMMIT"), 4),  # inside a block: aborted, 25P02, COMMIT answers ROLLBACK
    # Large rows still arriving while the stand-in's reply is awaited: cut and forwarded across chunks.
    (parse("", "SELECT repeat('x', 70000) || g FROM generate_series(1, 40) g") + bind("") + EXECUTE
     + parse("", REFUSED_WRITE) + bind("") + EXECUTE + SYNC, 1),
    (m.encode_query("BEGIN") + m.encode_query(REFUSED_WRITE) + parse("s4", REFUSED_WRITE) + bind("s4") + EXECUTE
     + SYNC + m.encode_query("ROLLBACK"), 4),  # refused again in the aborted block: 25P02, like PostgreSQL
]


def function_call(oid: int, argument: bytes) -> bytes:
    """FunctionCall with one text argument; results in text."""
    body = oid.to_bytes(4, "big") + b"\x00\x00\x00\x01" + len(argument).to_bytes(4, "big") + argument + b"\x00\x00"
    return m.encode_message(m.FUNCTION_CALL, body)


def test_pipelined_extended_protocol_matches_postgresql(guarded: ProxyHarness, pg: Any) -> None:
    direct = RawClient(pg.port, user="plain_user", database="my_db", password=pg.passwords["plain_user"], tls=False)
    proxied = RawClient(guarded.port, user="bob", database="guarded", password=guarded.token("bob"), tls=True)
    # pg_read_file is not executable by PUBLIC: PostgreSQL refuses the FunctionCall with 42501 too.
    read_file = int(pg.psql("SELECT 'pg_read_file(text)'::regprocedure::oid").strip())
    steps = [*PIPELINE, (function_call(read_file, b"/etc/hostname") + m.encode_query("SELECT 9"), 2)]
    seen: list[tuple[str, str]] = []
    try:
        for data, ready in steps:
            expected = direct.exchange(data, ready)
            assert proxied.exchange(data, ready) == expected, data
            seen += expected
    finally:
        direct.close()
        proxied.close()
    assert seen.count(("E", "42501")) == 5 and seen.count(("E", "25P02")) == 2 and ("E", "26000") in seen
    assert ("C", "ROLLBACK") in seen


# --- reloads ---------------------------------------------------------------------------------------------

NO_READS_OF_ITEMS = POLICIES.replace("""    - name: everything-else
      effect: ALLOW""", """    - name: items-closed
      effect: DENY
      condition: {{match: '"items" in ctx.request.postgres.statement.tables'}}
    - name: everything-else
      effect: ALLOW""")


async def test_statement_prepared_before_a_reload_is_decided_again_at_bind(
    guarded: ProxyHarness, pg: Any, tmp_path: Path
) -> None:
    conn = await asyncpg.connect(host="127.0.0.1", port=guarded.port, user="bob", database="guarded",
                                 password=guarded.token("bob"), ssl="require")
    try:
        statement = await conn.prepare("SELECT name FROM items WHERE id = $1")
        other = await conn.prepare("SELECT $1::int * 2")
        assert await statement.fetchval(2) == "beta"
        closed = write_manifests(tmp_path / "closed", pg, NO_READS_OF_ITEMS)
        guarded.reload_from(closed)
        try:
            with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError, match='rule "items-closed"'):
                await statement.fetchval(2)  # Bind only: the statement was parsed under the old policies
            assert await other.fetchval(21) == 42
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            guarded.reload_from(guarded.manifests)
        assert await statement.fetchval(2) == "beta"  # decided again, allowed again
    finally:
        await conn.close()
    guarded.wait_for(lambda: any(d["bind"]["name"] for d in denials(guarded, "BIND")))
    bind = denials(guarded, "BIND")[0]
    assert bind["bind"]["query"] == "SELECT name FROM items WHERE id = $1"
    assert bind["decision"]["rule"] == "items-closed"


def test_decisions_are_logged_with_the_upstreams_answer(guarded: ProxyHarness, pg: Any) -> None:
    token = guarded.token("bob")
    with psycopg.connect(guarded.dsn("bob", "guarded", token=token), autocommit=True) as conn:
        assert len(conn.execute("SELECT generate_series(1, 3) AS summary_rows").fetchall()) == 3
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM items WHERE name = %s", ["summary-denied"])
        psycopg.ClientCursor(conn).execute("SELECT 'summary-simple' FROM generate_series(1, 2)")

    def entry(text: str) -> dict[str, Any] | None:
        for e in guarded.log_entries():
            postgres = e["entry"]["info"]["postgres"]
            request = postgres.get("parse") or postgres.get("query") or {}
            if text in str(request) and "decision" in postgres:
                return postgres
        return None

    guarded.wait_for(lambda: entry("summary-simple") is not None)
    allowed, denied, simple = entry("summary_rows"), entry("DELETE FROM items WHERE name = $1"), entry("summary-simple")
    assert allowed and denied and simple
    assert allowed["decision"]["status"] == "ALLOWED" and allowed["decision"]["rule"] == "everything-else"
    assert allowed["response"]["commandTag"] == "SELECT 3" and allowed["response"]["rows"] == 3
    assert "sqlstate" not in allowed["response"] and allowed["response"]["durationMs"] >= 0
    assert denied["type"] == "PARSE" and denied["decision"]["status"] == "DENIED"
    assert denied["response"]["sqlstate"] == "42501"
    assert simple["type"] == "QUERY" and simple["response"]["rows"] == 2
    text = guarded.log_path.read_text()
    assert token not in text and not any(password in text for password in pg.passwords.values())


def pipeline_outcome(dsn: str) -> list[Any]:
    """psycopg pipeline mode: a refused write between two reads, then the connection goes on."""
    seen: list[Any] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        cursors = [conn.cursor() for _ in range(3)]
        try:
            with conn.pipeline():
                cursors[0].execute("SELECT %s::int", [1])
                cursors[1].execute(REFUSED_WRITE + " WHERE x = %s", [2])
                cursors[2].execute("SELECT %s::int", [3])
        except psycopg.Error as exc:
            seen.append(("raised", type(exc).__name__, exc.sqlstate))
        for cursor in cursors:
            try:
                seen.append(cursor.fetchall())
            except psycopg.Error as exc:
                seen.append(("fetch", type(exc).__name__))
        seen.append(conn.execute("SELECT %s::int", [4]).fetchone())
    return seen


def test_psycopg_pipeline_with_a_denied_statement_matches_postgresql(guarded: ProxyHarness, pg: Any) -> None:
    direct = pipeline_outcome(pg.dsn("full_access"))
    assert ("raised", "InsufficientPrivilege", "42501") in direct
    assert pipeline_outcome(guarded.dsn("bob", "guarded")) == direct


@pytest.mark.parametrize("text", ["plain", "it's $m$ and $pgw$ and $$", "ends in $m", "back\\slash 'q' \"d\" ünï €"])
def test_stand_in_raises_exactly_the_text_it_was_given(pg: Any, text: str) -> None:
    sql = raise_sql(text, marker="pgwarden.denial.9", detail=text, hint=text)
    with psycopg.connect(pg.dsn("full_access"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as caught:
            conn.execute(sql)
    diag = caught.value.diag
    assert (diag.message_primary, diag.message_detail, diag.message_hint) == (text, text, text)
    assert diag.schema_name == "pgwarden.denial.9"


def test_revoking_a_checked_session_ends_it_with_a_fatal(guarded: ProxyHarness) -> None:
    identity, token = guarded.issue("bob")
    with psycopg.connect(guarded.dsn("bob", "guarded", token=token), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM items WHERE id = %s", [1])  # a stand-in's reply was filtered
        ended = guarded.run(guarded.running.server.revoke_identity_sessions([identity.id], reason="test"))
        assert ended == 1
        with pytest.raises(psycopg.OperationalError, match="session revoked"):
            conn.execute("SELECT 2")

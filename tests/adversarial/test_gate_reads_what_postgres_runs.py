"""Attacks on the request gate: text it would read differently from PostgreSQL, and names it never decided.

Real PostgreSQL (UTF8 server encoding), real proxy, raw protocol bytes where the attack needs them. Every test
asserts on the server's own state (rows, sequence values) queried directly, not only on the error.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from proxy.pgwire import messages as m
from tests.e2e.test_jdbc_client import probe_dir, through_proxy  # noqa: F401 - probe_dir is a fixture
from tests.support.proxy_harness import MANIFESTS, ProxyHarness, start_harness, write_manifests

SERVICES = MANIFESTS + """\
---
kind: Service
metadata: {{name: ro}}
spec:
  mode: POSTGRES
  authorization: {{policies: [read-only-juniors]}}
  config:
    upstream: {{url: "postgres://{host}:{port}"}}
    postgres: {{user: full_access, database: my_db, auth: {{password: {{fromSecret: full-access-password}}}},
               authorization: {{mode: ALL}}}}
---
kind: Service
metadata: {{name: reloaded}}
spec:
  mode: POSTGRES
  authorization: {{policies: [@RELOADED@]}}
  config:
    upstream: {{url: "postgres://{host}:{port}"}}
    postgres: {{user: full_access, database: my_db, auth: {{password: {{fromSecret: full-access-password}}}},
               authorization: {{mode: ALL}}}}
---
kind: Policy
metadata: {{name: read-only-juniors}}
spec:
  rules:
    - name: no-writes
      effect: DENY
      priority: -1
      condition: {{match: 'ctx.request.postgres.statement.readOnly == false'}}
    - name: rest
      effect: ALLOW
      priority: 4
      condition: {{matchAny: true}}
---
kind: Policy
metadata: {{name: anything-goes}}
spec:
  rules:
    - name: all
      effect: ALLOW
      condition: {{matchAny: true}}
"""
PERMISSIVE = SERVICES.replace("@RELOADED@", "anything-goes")
READ_ONLY = SERVICES.replace("@RELOADED@", "read-only-juniors")
SJIS_ATTACK = b"SELECT E'\xfa\x5c' AS x; DELETE FROM items; --'"
SCS_ATTACK = b"SELECT 'a\\', ' ; DELETE FROM items; -- '"
# One statement (Parse refuses several): with standard_conforming_strings=off a DELETE inside a CTE-led query.
SCS_ATTACK_ONE = b"WITH d AS (SELECT 'a\\', ' ) DELETE FROM items RETURNING 1 -- ') SELECT 1"


@pytest.fixture(scope="module")
def gate(pg: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyHarness]:
    pg.psql("DROP TABLE IF EXISTS h1_rows; CREATE TABLE h1_rows (x int); INSERT INTO h1_rows VALUES (1), (2);"
            "DROP SEQUENCE IF EXISTS h1_seq; CREATE SEQUENCE h1_seq;"
            "GRANT ALL ON h1_rows, h1_seq TO full_access;"
            # SQL that pgwarden never sees as such: a function that prepares a statement.
            "CREATE OR REPLACE FUNCTION h1_prepare_hidden() RETURNS int LANGUAGE plpgsql AS "
            "$$ BEGIN EXECUTE 'PREPARE hidden AS DELETE FROM h1_rows'; RETURN 1; END $$;")
    harness, stop = start_harness(pg, tmp_path_factory.mktemp("gate-lexing"), manifests_text=PERMISSIVE, name="lx")
    yield harness
    stop()


@pytest.fixture
def reload_back(gate: ProxyHarness) -> Iterator[None]:
    yield
    gate.reload_from(gate.manifests)


def items(pg: Any) -> int:
    return int(pg.psql("SELECT count(*) FROM items").strip())


class Raw:
    """A protocol 3.0 frontend over TLS with startup parameters of our choosing."""

    def __init__(self, harness: ProxyHarness, service: str, **params: str) -> None:
        sock = socket.create_connection(("127.0.0.1", harness.port), timeout=20)
        sock.sendall(m.encode_ssl_request())
        assert sock.recv(1) == b"S"
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        self.sock, self.buf = context.wrap_socket(sock), b""
        self.sock.sendall(m.encode_startup_message({"user": "bob", "database": service, **params}))
        while True:
            type_byte, body = self.read()
            if type_byte == m.AUTHENTICATION and body[:4] == m.AUTH_CLEARTEXT.to_bytes(4, "big"):
                self.sock.sendall(m.encode_password_message(harness.token("bob").encode() + b"\x00"))
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
        """Send in one write, read until `ready_count` ReadyForQuery: (type, SQLSTATE or message) per reply."""
        self.sock.sendall(data)
        seen: list[tuple[str, str]] = []
        while ready_count:
            type_byte, body = self.read()
            if type_byte in (m.PARAMETER_STATUS, m.NOTICE_RESPONSE):
                continue
            detail = body.rstrip(b"\x00").decode("utf-8", "replace")
            if type_byte == m.ERROR_RESPONSE:
                fields = m.parse_error_fields(body)
                detail = f"{fields.code} {fields.message}"
            ready_count -= type_byte == m.READY_FOR_QUERY
            seen.append((chr(type_byte), detail))
        return seen

    def close(self) -> None:
        self.sock.sendall(m.encode_terminate())
        self.sock.close()


def query(sql: bytes) -> bytes:
    return m.encode_message(m.QUERY, sql + b"\x00")


def parse(name: bytes, sql: bytes) -> bytes:
    return m.encode_message(m.PARSE, name + b"\x00" + sql + b"\x00\x00\x00")


def bind(statement: bytes, portal: bytes = b"") -> bytes:
    return m.encode_message(m.BIND, portal + b"\x00" + statement + b"\x00\x00\x00\x00\x00\x00\x00")


def execute(portal: bytes = b"") -> bytes:
    return m.encode_message(m.EXECUTE, portal + b"\x00\x00\x00\x00\x00")


SYNC = m.encode_message(m.SYNC)


def errors(seen: list[tuple[str, str]]) -> list[str]:
    return [detail for kind, detail in seen if kind == "E"]


def gate_denials(harness: ProxyHarness, needle: str) -> list[dict[str, Any]]:
    found = []
    for entry in harness.log_entries():
        postgres = entry["entry"]["info"]["postgres"]
        decision = postgres.get("decision", {})
        if decision.get("status") == "DENIED" and needle in decision.get("reason", ""):
            found.append(postgres)
    return found


# --- class 1: the text PostgreSQL parses ----------------------------------------------------------------


def test_psql_in_sjis_cannot_smuggle_a_delete(gate: ProxyHarness, pg: Any) -> None:
    before = items(pg)
    env = {**os.environ, "PGPASSWORD": gate.token("bob"), "PGCLIENTENCODING": "SJIS"}
    dsn = f"host=127.0.0.1 port={gate.port} dbname=ro sslmode=require user=bob"
    out = subprocess.run([b"psql", dsn.encode(), b"-XAt", b"-c", SJIS_ATTACK], env=env, capture_output=True,
                         timeout=60)
    assert b"client_encoding SJIS" in out.stderr and b"42501" not in out.stdout, out
    assert items(pg) == before > 0
    gate.wait_for(lambda: bool(gate_denials(gate, "client_encoding SJIS")))
    logged = gate_denials(gate, "client_encoding SJIS")[0]
    assert logged["type"] == "QUERY" and "DELETE FROM items" in logged["query"]["query"]
    assert not any(e["entry"]["info"]["postgres"].get("decision", {}).get("status") == "ALLOWED"
                   and "DELETE FROM items" in str(e) for e in gate.log_entries())


@pytest.mark.parametrize("how", ["startup", "pipelined-set"])
def test_raw_sjis_query_is_refused(gate: ProxyHarness, pg: Any, how: str) -> None:
    before = items(pg)
    client = Raw(gate, "ro", client_encoding="SJIS") if how == "startup" else Raw(gate, "ro")
    try:
        # Pipelined: the SET and the attack in one write; the attack must wait for the SET's answer.
        first = b"" if how == "startup" else query(b"SET client_encoding TO 'SJIS'")
        seen = client.exchange(first + query(SJIS_ATTACK) + query(b"SELECT 'after'"), 3 if first else 2)
        assert len(errors(seen)) == 1 and errors(seen)[0].startswith("42501"), seen
        assert "client_encoding SJIS" in errors(seen)[0] and ("D", "\x00\x00\x00\x01\x00\x00\x00\x05after") in [
            (k, d) for k, d in seen] or any(d.endswith("after") for k, d in seen if k == "D"), seen
    finally:
        client.close()
    assert items(pg) == before > 0


@pytest.mark.parametrize("how", ["set", "set_config", "startup-options"])
def test_standard_conforming_strings_off_cannot_smuggle_a_delete(gate: ProxyHarness, pg: Any, how: str) -> None:
    before = items(pg)
    if how == "startup-options":
        client = Raw(gate, "ro", options="-c standard_conforming_strings=off")
        first = b""
    else:
        client = Raw(gate, "ro")
        first = query(b"SET standard_conforming_strings TO off" if how == "set"
                      else b"SELECT set_config('standard_conforming_strings', 'off', false)")
    try:
        seen = client.exchange(first + query(SCS_ATTACK), 2 if first else 1)
        assert errors(seen)[-1].startswith("42501"), seen
        if how != "set_config":  # set_config may be refused by the policy itself (a side-effecting function)
            assert "standard_conforming_strings is off" in errors(seen)[-1], seen
    finally:
        client.close()
    assert items(pg) == before > 0


def test_extended_protocol_text_after_an_execute_is_refused(gate: ProxyHarness, pg: Any) -> None:
    before = items(pg)
    client = Raw(gate, "ro")
    try:
        # The SET runs at Execute; the server reports the change only at the ReadyForQuery after Sync.
        batch = (parse(b"", b"SET standard_conforming_strings TO off") + bind(b"") + execute()
                 + parse(b"", SCS_ATTACK_ONE) + bind(b"") + execute() + SYNC)
        seen = client.exchange(batch, 1)
        assert errors(seen) and errors(seen)[0].startswith("42501") and "send Sync" in errors(seen)[0], seen
        assert client.exchange(query(b"SELECT 1"), 1)[-1] == ("Z", "I")
    finally:
        client.close()
    assert items(pg) == before > 0


def test_ordinary_non_ascii_queries_still_work(gate: ProxyHarness) -> None:
    with psycopg.connect(gate.dsn("bob", "ro"), autocommit=True) as conn:
        assert conn.execute("SELECT 'café' AS x", prepare=False).fetchone() == ("café",)
        assert conn.execute("SELECT 'naïve' || %s", ["ü"]).fetchone() == ("naïveü",)
        assert conn.execute("SELECT E'tab\\there'").fetchone() == ("tab\there",)
        with conn.pipeline():
            cursors = [conn.cursor() for _ in range(2)]
            cursors[0].execute("SELECT 'pipelined é'")
            cursors[1].execute("SELECT %s::text", ["€"])
        assert [c.fetchone() for c in cursors] == [("pipelined é",), ("€",)]
        conn.execute("SET client_encoding TO 'LATIN9'")
        assert conn.execute("SELECT 'prix: 5€' AS price", prepare=False).fetchone() == ("prix: 5€",)
        conn.execute("SET client_encoding TO 'UTF8'")
    client = Raw(gate, "ro")
    try:  # pipelined simple Queries with UTF-8 text: each waits for the last, all answered in order
        seen = client.exchange(query("SELECT 'é1'".encode()) + query("SELECT 'é2'".encode()), 2)
        assert [d[-2:] for k, d in seen if k == "D"] == ["é1", "é2"]
    finally:
        client.close()


def test_jdbc_transactions_with_non_ascii_literals_still_work(probe_dir: Path, gate: ProxyHarness) -> None:  # noqa: F811
    # With autocommit off pgjdbc sends BEGIN (Parse, Bind, Execute) and the statement before one Sync: BEGIN
    # cannot change settings, so the statement is still read under the confirmed ones.
    steps = [["autocommit", "off"], ["execute", "SELECT 'München'"], ["execute", "SELECT E'a\\\\b'"],
             ["prepared", "SELECT ? || 'ü'", "x"], ["commit"]]
    for _ in range(3):  # past pgjdbc's prepareThreshold: BEGIN becomes a named server-side statement
        steps += [["execute", "SELECT 'é'"], ["commit"]]
    results = through_proxy(probe_dir, gate, "bob", "ro", steps)
    assert all(r["ok"] for r in results), results
    assert [r.get("value") for r in results[1:4]] == ["München", "a\\b", "xü"]


# --- class 3: requests without a statement, and names from before a reload ----------------------------------


def function_call(oid: int, *args: bytes) -> bytes:
    body = oid.to_bytes(4, "big") + b"\x00\x00" + len(args).to_bytes(2, "big")
    for arg in args:
        body += len(arg).to_bytes(4, "big") + arg
    return m.encode_message(m.FUNCTION_CALL, body + b"\x00\x00")


def test_function_call_setval_meets_the_read_only_policy(gate: ProxyHarness, pg: Any) -> None:
    before = pg.psql("SELECT last_value FROM items_id_seq").strip()
    client = Raw(gate, "ro")
    try:
        seen = client.exchange(function_call(1576, b"items_id_seq", b"424242"), 1)  # setval(regclass, bigint)
        assert errors(seen) and 'rule "no-writes"' in errors(seen)[0], seen
    finally:
        client.close()
    assert pg.psql("SELECT last_value FROM items_id_seq").strip() == before


def rows(pg: Any) -> int:
    return int(pg.psql("SELECT count(*) FROM h1_rows").strip())


def test_sql_prepared_delete_is_decided_again_after_a_reload(gate: ProxyHarness, pg: Any, tmp_path: Path,
                                                              reload_back: None) -> None:
    client = Raw(gate, "reloaded")
    try:
        assert not errors(client.exchange(query(b"PREPARE p AS DELETE FROM h1_rows"), 1))
        gate.reload_from(write_manifests(tmp_path / "ro", pg, READ_ONLY))
        seen = client.exchange(bind(b"p") + execute() + SYNC, 1)
        assert errors(seen) and 'rule "no-writes"' in errors(seen)[0], seen
        seen = client.exchange(query(b"EXECUTE p"), 1)
        assert errors(seen) and errors(seen)[0].startswith("42501"), seen
    finally:
        client.close()
    assert rows(pg) == 2


def test_portal_bound_before_a_reload_is_decided_again(gate: ProxyHarness, pg: Any, tmp_path: Path,
                                                        reload_back: None) -> None:
    client = Raw(gate, "reloaded")
    try:
        seen = client.exchange(query(b"BEGIN") + parse(b"s", b"DELETE FROM h1_rows") + bind(b"s", b"pt") + SYNC, 2)
        assert not errors(seen), seen
        gate.reload_from(write_manifests(tmp_path / "ro", pg, READ_ONLY))
        seen = client.exchange(execute(b"pt") + SYNC, 1)
        assert errors(seen) and 'rule "no-writes"' in errors(seen)[0], seen
        client.exchange(query(b"COMMIT"), 1)
    finally:
        client.close()
    assert rows(pg) == 2


def test_unnamed_portal_bound_before_a_reload_is_denied(gate: ProxyHarness, pg: Any, tmp_path: Path,
                                                         reload_back: None) -> None:
    client = Raw(gate, "reloaded")
    try:
        seen = client.exchange(query(b"BEGIN") + parse(b"", b"DELETE FROM h1_rows") + bind(b"") + SYNC, 2)
        assert not errors(seen), seen
        gate.reload_from(write_manifests(tmp_path / "ro", pg, READ_ONLY))
        seen = client.exchange(execute(b"") + SYNC, 1)  # pgwarden keeps no text for unnamed portals: denied
        assert errors(seen) and 'portal "" was bound or declared before the policies changed' in errors(seen)[0]
        client.exchange(query(b"COMMIT"), 1)
    finally:
        client.close()
    assert rows(pg) == 2


def test_cursor_declared_before_a_reload_is_decided_again(gate: ProxyHarness, pg: Any, tmp_path: Path,
                                                          reload_back: None) -> None:
    before = pg.psql("SELECT last_value FROM h1_seq").strip()
    client = Raw(gate, "reloaded")
    try:
        seen = client.exchange(query(b"BEGIN") + query(b"DECLARE c CURSOR FOR SELECT setval('h1_seq', 777)"), 2)
        assert not errors(seen), seen
        gate.reload_from(write_manifests(tmp_path / "ro", pg, READ_ONLY))
        seen = client.exchange(query(b"FETCH c"), 1)
        assert errors(seen) and 'rule "no-writes"' in errors(seen)[0], seen
        client.exchange(query(b"ROLLBACK"), 1)
    finally:
        client.close()
    assert pg.psql("SELECT last_value FROM h1_seq").strip() == before


def test_statement_prepared_where_pgwarden_cannot_see_is_denied_after_a_reload(
    gate: ProxyHarness, pg: Any, tmp_path: Path, reload_back: None
) -> None:
    client = Raw(gate, "reloaded")
    try:
        assert not errors(client.exchange(query(b"SELECT h1_prepare_hidden()"), 1))
        gate.reload_from(write_manifests(tmp_path / "ro", pg, READ_ONLY))
        seen = client.exchange(bind(b"hidden") + execute() + SYNC, 1)
        assert errors(seen) and 'prepared statement "hidden" was not made through pgwarden' in errors(seen)[0], seen
        assert client.exchange(query(b"SELECT 1"), 1)[-1] == ("Z", "I")
    finally:
        client.close()
    assert rows(pg) == 2
    gate.wait_for(lambda: bool(gate_denials(gate, 'prepared statement "hidden"')))
    assert gate_denials(gate, 'prepared statement "hidden"')[0]["type"] == "BIND"


def test_held_requests_keep_their_order_under_backpressure(gate: ProxyHarness) -> None:
    client = Raw(gate, "ro")
    try:
        # The non-ASCII Query waits for pg_sleep's answer; megabytes sent behind it wait too, in order,
        # while pgwarden stops reading the client.
        padding = [query(b"SELECT %d -- " % i + b"x" * 600_000) for i in range(3)]
        seen = client.exchange(query(b"SELECT pg_sleep(0.3)") + query("SELECT 'é'".encode()) + b"".join(padding), 5)
        assert not errors(seen), seen
        assert [d[-2:] for k, d in seen if k == "D"][1:] == ["\x02é", "\x010", "\x011", "\x012"]
    finally:
        client.close()

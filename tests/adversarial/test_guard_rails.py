"""Guard rails end to end: PostgreSQL itself refuses what the gate lets through, and clients cannot undo the rails.

Real PostgreSQL, real proxy, psql, psycopg, asyncpg and raw protocol messages. The policy here allows
everything, so each refusal comes from a rail: 25006 from PostgreSQL for writes (readOnly), 42501 from the
gate for attempts to change a locked setting. Every write attempt is checked on the server, as superuser.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from typing import Any

import asyncpg
import psycopg
import pytest

from proxy.pgwire import messages as m
from tests.support.proxy_harness import MANIFESTS, ProxyHarness, start_harness, write_manifests
from tests.support.raw_protocol import raw_login, read_until

RAILED = MANIFESTS + """\
---
kind: Service
metadata: {{name: railed}}
spec:
  mode: POSTGRES
  authorization: {{policies: [allow-everything]}}
  dynamicConfig:
    configs:
      - name: read-only
        upstream: {{url: "postgres://{host}:{port}"}}
        postgres:
          user: full_access
          database: my_db
          auth: {{password: {{fromSecret: full-access-password}}}}
          authorization: {{mode: ALL}}
          guardRails:
            readOnly: true
            statementTimeout: 1s
            idleInTransactionTimeout: 60s
            lockTimeout: 5s
            searchPath: [public]
      - name: capped
        parent: read-only
        postgres: {{guardRails: {{maxConnectionsPerUser: 2}}}}
    rules:
      - condition: {{match: 'ctx.request.postgres.connect.applicationName == "capped"'}}
        configName: capped
      - condition: {{matchAny: true}}
        configName: read-only
---
kind: Policy
metadata: {{name: allow-everything}}
spec:
  rules:
    - name: everything
      effect: ALLOW
      condition: {{matchAny: true}}
"""
WRITE_REFUSED = "cannot execute INSERT in a read-only transaction"


def rail(setting_rail: str) -> str:
    return f'denied by guard rail "{setting_rail}" of config "read-only"'


@pytest.fixture(scope="module")
def railed(pg: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyHarness]:
    # Functions the classifier cannot see into: one writes, one turns the read-only default off.
    pg.psql("""
        CREATE OR REPLACE FUNCTION pgw_rail_insert(n text) RETURNS int LANGUAGE sql
          AS $$ INSERT INTO items(name) VALUES (n) RETURNING 1 $$;
        CREATE OR REPLACE FUNCTION pgw_rail_unlock() RETURNS text LANGUAGE sql
          AS $$ SELECT set_config('default_transaction_read_only', 'off', false) $$;
        GRANT EXECUTE ON FUNCTION pgw_rail_insert(text), pgw_rail_unlock() TO full_access;
    """)
    harness, stop = start_harness(pg, tmp_path_factory.mktemp("guard-rails"), manifests_text=RAILED, name="rails")
    yield harness
    stop()


def item_count(pg: Any, name: str) -> int:
    return int(pg.psql(f"SELECT count(*) FROM items WHERE name LIKE '{name}%'").strip())


def psql(railed: ProxyHarness, script: str, **params: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PGPASSWORD": railed.token("bob")}
    dsn = f"host=127.0.0.1 port={railed.port} dbname=railed sslmode=require user=bob"
    dsn += "".join(f" {k}='{v}'" for k, v in params.items())
    return subprocess.run(["psql", dsn, "-XAtq", "-v", "VERBOSITY=verbose"], input=script, env=env,
                          capture_output=True, text=True, timeout=60)


def test_psql_writes_meet_postgresql_and_locked_settings_stay(railed: ProxyHarness, pg: Any) -> None:
    script = """\
\\set VERBOSITY verbose
INSERT INTO items(name) VALUES ('rail-psql');
SELECT pgw_rail_insert('rail-psql-fn');
SET default_transaction_read_only = off;
SELECT set_config('default_transaction_read_only', 'off', false);
BEGIN READ WRITE;
START TRANSACTION READ WRITE;
SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE;
SET statement_timeout = 0;
SET "Lock_Timeout" TO '0';
SET search_path = pg_temp, public;
SET idle_in_transaction_session_timeout = 0;
SET LOCAL statement_timeout = 0;
BEGIN;
RESET transaction_read_only;
INSERT INTO items(name) VALUES ('rail-psql-reset');
ROLLBACK;
SET transaction_read_only TO DEFAULT;
SELECT query_to_xml('SELECT set_config(''statement_timeout'', ''0'', false)', true, true, '');
INSERT INTO items(name) VALUES ('rail-psql-after');
SELECT 'still here';
SHOW search_path;
SHOW lock_timeout;
SHOW statement_timeout;
SHOW default_transaction_read_only;
"""
    out = psql(railed, script)
    assert out.stdout.split() == ["still", "here", "public", "5s", "1s", "on"], out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("ERROR:")]
    # RESET transaction_read_only would make the transaction read-write (its reset value is the built-in off).
    assert [e.split()[1] for e in errors] == ["25006:", "25006:", *["42501:"] * 11, "25P02:", *["42501:"] * 2,
                                              "25006:"], \
        out.stderr
    assert rail("readOnly") in errors[2] and "SET default_transaction_read_only" in errors[2]
    assert "set_config(default_transaction_read_only)" in errors[3]
    assert "BEGIN READ WRITE" in errors[4] and "START TRANSACTION READ WRITE" in errors[5]
    assert "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE" in errors[6]
    assert 'SET statement_timeout denied by guard rail "statementTimeout" of config "read-only"' in errors[7]
    assert rail("lockTimeout") in errors[8] and rail("searchPath") in errors[9]
    assert rail("idleInTransactionTimeout") in errors[10] and rail("statementTimeout") in errors[11]
    assert item_count(pg, "rail-psql") == 0

    def rail_decisions() -> list[dict[str, Any]]:
        return [p["decision"] for p in (e["entry"]["info"]["postgres"] for e in railed.log_entries())
                if p.get("decision", {}).get("rule", "").startswith("guardRails.")]

    railed.wait_for(lambda: any(d["rule"] == "guardRails.lockTimeout" for d in rail_decisions()))
    logged = rail_decisions()
    assert all(d["status"] == "DENIED" and d["policy"] == "" and "denied by guard rail" in d["reason"]
               for d in logged), logged


def test_the_rails_own_values_resets_and_other_settings_are_allowed(railed: ProxyHarness) -> None:
    script = """\
SET statement_timeout = '1000ms';
SET statement_timeout TO 1000;
SET lock_timeout = '5s';
SET search_path = public;
SET default_transaction_read_only = on;
BEGIN READ ONLY;
COMMIT;
SELECT set_config('search_path', 'PUBLIC', false) IS NOT NULL;
RESET statement_timeout;
SET lock_timeout TO DEFAULT;
RESET ALL;
SET work_mem = '8MB';
SET application_name = 'still-free';
SHOW statement_timeout;
SHOW lock_timeout;
SHOW search_path;
"""
    out = psql(railed, script)
    assert "ERROR" not in out.stderr, out.stderr
    assert out.stdout.split() == ["t", "1s", "5s", "public"], out.stdout


def test_statement_timeout_rail_cancels_a_long_statement(railed: ProxyHarness) -> None:
    with psycopg.connect(railed.dsn("bob", "railed"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(5)")
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_psycopg_extended_protocol(railed: ProxyHarness, pg: Any) -> None:
    with psycopg.connect(railed.dsn("bob", "railed"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("INSERT INTO items(name) VALUES (%s)", ["rail-psycopg"])
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("SELECT pgw_rail_insert(%s)", ["rail-psycopg-fn"])
        for sql, args, named in [
            ("SELECT set_config(%s, %s, false)", ["default_transaction_read_only", "off"], "readOnly"),
            ("SELECT set_config('statement_timeout', %s, false)", ["0"], "statementTimeout"),
            ("SET statement_timeout = 0", None, "statementTimeout"),
            ("SET TRANSACTION READ WRITE", None, "readOnly"),
        ]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match=f'guard rail "{named}"'):
                conn.execute(sql, args)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match='guard rail "readOnly"'):
            with conn.transaction():
                conn.execute("SET TRANSACTION READ WRITE")
        with conn.transaction():  # a read-only transaction still works, and its writes fail in PostgreSQL
            assert conn.execute("SHOW transaction_read_only").fetchone() == ("on",)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("INSERT INTO items(name) VALUES (%s)", ["rail-psycopg-after"])
        assert conn.execute("SHOW statement_timeout").fetchone() == ("1s",)
    assert item_count(pg, "rail-psycopg") == 0


def test_psycopg_pipeline_mode_is_served_one_cycle_at_a_time(railed: ProxyHarness, pg: Any) -> None:
    with psycopg.connect(railed.dsn("bob", "railed"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            with conn.pipeline() as pipeline:
                cursors = [conn.execute("SELECT %s::int", [i]) for i in range(5)]
                pipeline.sync()
                assert [c.fetchone() for c in cursors] == [(i,) for i in range(5)]
                conn.execute("SELECT pgw_rail_insert(%s)", ["rail-pipeline"])
                conn.execute("INSERT INTO items(name) VALUES (%s)", ["rail-pipeline-2"])
        with conn.pipeline():
            assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
    assert item_count(pg, "rail-pipeline") == 0


async def test_asyncpg(railed: ProxyHarness, pg: Any) -> None:
    conn = await asyncpg.connect(host="127.0.0.1", port=railed.port, user="bob", database="railed",
                                 password=railed.token("bob"), ssl="require")
    try:
        with pytest.raises(asyncpg.exceptions.ReadOnlySQLTransactionError):
            await conn.execute("INSERT INTO items(name) VALUES ($1)", "rail-asyncpg")
        with pytest.raises(asyncpg.exceptions.ReadOnlySQLTransactionError):
            await conn.executemany("INSERT INTO items(name) VALUES ($1)", [("rail-asyncpg-m",), ("rail-asyncpg-n",)])
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError, match='guard rail "readOnly"'):
            await conn.execute("BEGIN READ WRITE")
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError, match='guard rail "readOnly"'):
            await conn.fetchval("SELECT set_config('default_transaction_read_only', 'off', false)")
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError, match='guard rail "searchPath"'):
            await conn.execute("SET search_path TO pg_temp, public")
        with pytest.raises(asyncpg.exceptions.ReadOnlySQLTransactionError):
            async with conn.transaction():
                await conn.execute("INSERT INTO items(name) VALUES ($1)", "rail-asyncpg-tx")
        assert await conn.fetchval("SHOW search_path") == "public"
    finally:
        await conn.close()
    assert item_count(pg, "rail-asyncpg") == 0


@pytest.mark.parametrize("options", [
    "-c default_transaction_read_only=off",
    "-cstatement_timeout=0",
    "--default-transaction-read-only=off",
    r"-c\ application_name=x -c DEFAULT_TRANSACTION_READ_ONLY=off",
    "-c application_name=x -F",  # a postmaster switch: refused while rails are on
])
def test_locked_settings_in_startup_options_are_refused_at_connect(railed: ProxyHarness, options: str) -> None:
    with pytest.raises(psycopg.OperationalError, match="guard rail|refused by the guard rails"):
        psycopg.connect(railed.dsn("bob", "railed", options=options.replace("\\", "\\\\")), autocommit=True)


def test_ordinary_startup_options_still_pass(railed: ProxyHarness) -> None:
    with psycopg.connect(railed.dsn("bob", "railed", options="-c work_mem=8MB -c application_name=opts"),
                         autocommit=True) as conn:
        assert conn.execute("SHOW work_mem").fetchone() == ("8MB",)
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)


def test_psql_startup_options_refused(railed: ProxyHarness) -> None:
    out = psql(railed, "SELECT 1;", options="-c default_transaction_read_only=off")
    assert out.returncode != 0 and 'startup option "-c default_transaction_read_only"' in out.stderr
    assert rail("readOnly") in out.stderr

    def refused() -> list[dict[str, Any]]:
        return [e["entry"]["common"] for e in railed.log_entries()
                if e["entry"]["common"].get("status") == "DENIED" and "-c default_transaction_read_only"
                in e["entry"]["common"].get("reason", "")]

    railed.wait_for(lambda: bool(refused()))
    assert refused()[0]["sqlstate"] == "42501"


async def test_asyncpg_startup_parameter_refused(railed: ProxyHarness) -> None:
    for settings in ({"default_transaction_read_only": "off"}, {"Statement_Timeout": "0"}):
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError, match="guard rail"):
            await asyncpg.connect(host="127.0.0.1", port=railed.port, user="bob", database="railed",
                                  password=railed.token("bob"), ssl="require", server_settings=settings)


def test_raw_startup_parameter_in_any_case_is_refused(railed: ProxyHarness, pg: Any) -> None:
    for name in ("default_transaction_read_only", "TRANSACTION_READ_ONLY", "search_path", "Lock_Timeout"):
        sock, seen = raw_login(railed.port, {"user": "bob", "database": "railed", name: "off"}, railed.token("bob"))
        sock.close()
        errors = [m.parse_error_fields(body) for t, body in seen if t == m.ERROR_RESPONSE]
        assert [(e.code, f'startup parameter "{name}"' in e.message) for e in errors] == [("42501", True)], seen


def test_function_that_turns_read_only_off_ends_the_session(railed: ProxyHarness, pg: Any) -> None:
    with psycopg.connect(railed.dsn("bob", "railed"), autocommit=True) as conn:
        with pytest.raises(psycopg.Error, match='session ended: .*guard rail "readOnly"'):
            conn.execute("SELECT pgw_rail_unlock()")
            conn.execute("INSERT INTO items(name) VALUES ('rail-unlocked')")
        assert conn.closed or conn.broken
    assert item_count(pg, "rail-unlocked") == 0


def test_a_write_pipelined_behind_the_unlocking_function_never_runs(railed: ProxyHarness, pg: Any) -> None:
    sock, seen = raw_login(railed.port, {"user": "bob", "database": "railed"}, railed.token("bob"))
    assert seen[-1][0] == m.READY_FOR_QUERY
    # One write: the function commits default_transaction_read_only=off, then the INSERT would start a
    # new, read-write transaction if it reached the server before the proxy saw the report.
    sock.sendall(m.encode_query("SELECT pgw_rail_unlock()")
                 + m.encode_query("INSERT INTO items(name) VALUES ('rail-pipelined')")
                 + m.encode_query("INSERT INTO items(name) VALUES ('rail-pipelined-2')"))
    seen = read_until(sock, lambda t, b: t == m.ERROR_RESPONSE and b"FATAL" in b)
    sock.close()
    fatal = m.parse_error_fields(seen[-1][1])
    assert 'guard rail "readOnly"' in fatal.message, seen
    assert item_count(pg, "rail-pipelined") == 0


def test_a_write_behind_a_commit_in_the_same_query_never_runs(railed: ProxyHarness, pg: Any) -> None:
    sock, seen = raw_login(railed.port, {"user": "bob", "database": "railed"}, railed.token("bob"))
    # In one Query, the statements after COMMIT run in a new transaction, which the unlocking function
    # made read-write; the server would report that only with this Query's ReadyForQuery.
    sock.sendall(m.encode_query("SELECT pgw_rail_unlock(); COMMIT; INSERT INTO items(name) VALUES ('rail-commit')")
                 + m.encode_query("UPDATE pg_settings SET setting = '0' WHERE name = 'statement_timeout'")
                 + m.encode_query("SHOW statement_timeout"))
    readies: list[int] = []
    seen = read_until(sock, lambda t, _b: readies.append(t) is None and readies.count(m.READY_FOR_QUERY) == 3)
    sock.close()
    assert item_count(pg, "rail-commit") == 0
    errors = [m.parse_error_fields(b) for t, b in seen if t == m.ERROR_RESPONSE]
    assert [(e.code, 'guard rail "readOnly"' in e.message) for e in errors] == [("42501", True)] * 2, errors
    assert [b[-2:] for t, b in seen if t == ord("D")] == [b"1s"]


def parse(name: str, sql: str) -> bytes:
    return m.encode_message(m.PARSE, name.encode() + b"\x00" + sql.encode() + b"\x00\x00\x00")


def bind(portal: str, statement: str) -> bytes:
    return m.encode_message(m.BIND, portal.encode() + b"\x00" + statement.encode() + b"\x00" + b"\x00" * 6)


def execute(portal: str = "") -> bytes:
    return m.encode_message(m.EXECUTE, portal.encode() + b"\x00\x00\x00\x00\x00")


SYNC = m.encode_message(m.SYNC)


def test_extended_protocol_work_after_a_commit_before_sync_ends_the_session(railed: ProxyHarness, pg: Any) -> None:
    sock, _ = raw_login(railed.port, {"user": "bob", "database": "railed"}, railed.token("bob"))
    # A COMMIT that is followed by Sync is fine (JDBC sends its COMMIT so), also as a named statement reused.
    sock.sendall(parse("commit", "COMMIT") + bind("", "commit") + execute() + SYNC
                 + bind("p", "commit") + execute("p") + SYNC)
    readies: list[int] = []
    seen = read_until(sock, lambda t, _b: readies.append(t) is None and readies.count(m.READY_FOR_QUERY) == 2)
    assert not [b for t, b in seen if t == m.ERROR_RESPONSE], seen
    # In one cycle: the function turns the default off, COMMIT ends the implicit transaction, and the INSERT
    # would start a read-write one. The reused named COMMIT must count too.
    sock.sendall(parse("", "SELECT pgw_rail_unlock()") + bind("", "") + execute()
                 + bind("q", "commit") + execute("q")
                 + parse("", "INSERT INTO items(name) VALUES ('rail-extended')") + bind("", "") + execute() + SYNC)
    seen = read_until(sock, lambda t, b: t == m.ERROR_RESPONSE and b"FATAL" in b)
    sock.close()
    assert item_count(pg, "rail-extended") == 0
    fatal = m.parse_error_fields(seen[-1][1])
    assert 'a request after COMMIT before Sync denied by guard rail "readOnly"' in fatal.message, seen


def test_a_query_inside_an_extended_batch_ends_the_session_instead_of_hanging(railed: ProxyHarness) -> None:
    sock, _ = raw_login(railed.port, {"user": "bob", "database": "railed"}, railed.token("bob"))
    sock.settimeout(5)
    # The server skips everything after the failing Parse until Sync, the Query too: no ReadyForQuery for it.
    sock.sendall(parse("", "SELECT * FROM pgw_no_such_table") + bind("", "") + execute()
                 + m.encode_query("SELECT 1") + SYNC)
    seen = read_until(sock, lambda t, b: t == m.ERROR_RESPONSE and b"FATAL" in b)
    sock.close()
    fatal = m.parse_error_fields(seen[-1][1])
    assert "a simple Query or FunctionCall inside an extended-protocol batch" in fatal.message, seen


def test_a_bad_header_behind_a_cycle_ends_the_session_with_a_protocol_error(railed: ProxyHarness, pg: Any) -> None:
    # The rails frame the client stream themselves (one cycle at a time, the COMMIT watch); a header they
    # refuse must end the session with 08P01, like the gate does, and nothing after it may run.
    sock, _ = raw_login(railed.port, {"user": "bob", "database": "railed"}, railed.token("bob"))
    sock.settimeout(20)
    sock.sendall(m.encode_query("SELECT 1") + b"Q\x00\x00\x00\x02"
                 + m.encode_query("INSERT INTO items(name) VALUES ('rail-bad-header')"))
    seen = read_until(sock, lambda t, b: t == m.ERROR_RESPONSE and b"FATAL" in b)
    sock.close()
    fatal = m.parse_error_fields(seen[-1][1])
    assert fatal.code == "08P01" and "invalid length 2" in fatal.message, seen
    assert item_count(pg, "rail-bad-header") == 0


def test_fast_path_set_config_is_refused(railed: ProxyHarness, pg: Any) -> None:
    sock, _ = raw_login(railed.port, {"user": "bob", "database": "railed"}, railed.token("bob"))
    args = [b"default_transaction_read_only", b"off", b"\x00"]
    body = (2078).to_bytes(4, "big") + b"\x00\x01\x00\x00" + len(args).to_bytes(2, "big")
    body += b"".join(len(a).to_bytes(4, "big") + a for a in args) + b"\x00\x00"
    sock.sendall(m.encode_message(m.FUNCTION_CALL, body) + m.encode_query("SHOW default_transaction_read_only"))
    readies = []
    seen = read_until(sock, lambda t, _b: readies.append(t) is None and readies.count(m.READY_FOR_QUERY) == 2)
    sock.close()
    errors = [m.parse_error_fields(b) for t, b in seen if t == m.ERROR_RESPONSE]
    assert errors and errors[0].code == "42501" and 'guard rail "readOnly"' in errors[0].message
    rows = [b for t, b in seen if t == ord("D")]
    assert rows and rows[0].endswith(b"on")


async def test_asyncpg_over_the_connection_cap(railed: ProxyHarness) -> None:
    kwargs: dict[str, Any] = {"host": "127.0.0.1", "port": railed.port, "user": "alice", "database": "railed",
                              "ssl": "require", "server_settings": {"application_name": "capped"}}
    first = await asyncpg.connect(password=railed.token("alice"), **kwargs)
    second = await asyncpg.connect(password=railed.token("alice"), **kwargs)
    try:
        with pytest.raises(asyncpg.exceptions.TooManyConnectionsError, match="maxConnectionsPerUser"):  # 53300
            await asyncpg.connect(password=railed.token("alice"), **kwargs)
        assert await first.fetchval("SELECT 1") == 1
    finally:
        await first.close()
        await second.close()


def test_max_connections_per_user(railed: ProxyHarness) -> None:
    dsn = railed.dsn("bob", "railed", application_name="capped")
    first, second = psycopg.connect(dsn, autocommit=True), psycopg.connect(dsn, autocommit=True)
    try:
        with pytest.raises(psycopg.OperationalError, match='"maxConnectionsPerUser" of config "capped"'):
            psycopg.connect(dsn, autocommit=True)
        sock, seen = raw_login(railed.port, {"user": "bob", "database": "railed", "application_name": "capped"},
                               railed.token("bob"))
        sock.close()
        errors = [m.parse_error_fields(body) for t, body in seen if t == m.ERROR_RESPONSE]
        assert [(e.code, "maxConnectionsPerUser" in e.message) for e in errors] == [("53300", True)]
        with psycopg.connect(railed.dsn("alice", "railed", application_name="capped"), autocommit=True) as other:
            assert other.execute("SELECT 1").fetchone() == (1,)  # another user has their own count
        assert first.execute("SELECT 1").fetchone() == (1,) and second.execute("SELECT 2").fetchone() == (2,)
    finally:
        first.close()
    railed.wait_for(lambda: _connects(dsn))
    second.close()


def _connects(dsn: str) -> bool:
    try:
        psycopg.connect(dsn, autocommit=True).close()
    except psycopg.OperationalError:
        return False
    return True


def test_a_reload_that_changes_the_rails_ends_the_session(railed: ProxyHarness, pg: Any, tmp_path: Any) -> None:
    with psycopg.connect(railed.dsn("bob", "railed"), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        looser = RAILED.replace("statementTimeout: 1s", "statementTimeout: 2s")
        looser_dir = write_manifests(tmp_path / "looser", pg, looser)
        try:
            railed.reload_from(looser_dir)
            with pytest.raises(psycopg.Error, match="guard rails of this session's config changed"):
                railed.wait_for(lambda: conn.execute("SELECT 1") is None)
        finally:
            railed.reload_from(railed.manifests)
    with psycopg.connect(railed.dsn("bob", "railed"), autocommit=True) as conn:  # the rails as they are now
        assert conn.execute("SHOW statement_timeout").fetchone() == ("1s",)

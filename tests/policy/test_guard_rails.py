"""Guard rails without a server: startup parameters and `options`, the per-query rail gate, setting values."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.errors import AccessDenied
from proxy.guardrails import (
    CycleSplitter,
    TransactionEndWatch,
    keeps_rail,
    locked_settings,
    options_settings,
    parse_duration_ms,
    parse_setting_ms,
    search_path_value,
    split_identifiers,
    split_options,
    startup_parameters,
    upstream_settings,
)
from proxy.pgwire import messages as m
from proxy.pgwire.errors import ProtocolViolation
from proxy.policy.classify import classify
from proxy.routing import LiveSnapshot
from proxy.snapshot import (
    Authorization,
    AuthorizationMode,
    GuardRails,
    PostgresSettings,
    Service,
    ServiceConfig,
    Snapshot,
    Upstream,
    User,
)
from proxy.snapshot_wire import policy_from_spec

RAILS = GuardRails(read_only=True, statement_timeout_ms=30_000, lock_timeout_ms=5_000,
                   idle_in_transaction_timeout_ms=60_000, search_path=("public", "My Schema"))


def test_upstream_settings_and_search_path_quoting() -> None:
    assert upstream_settings(RAILS) == {
        "default_transaction_read_only": "on", "statement_timeout": "30000ms", "lock_timeout": "5000ms",
        "idle_in_transaction_session_timeout": "60000ms", "search_path": 'public, "My Schema"'}
    assert search_path_value(("$user", 'a"b', "x,y", "ok_1")) == '"$user", "a""b", "x,y", ok_1'
    assert split_identifiers(search_path_value(("$user", 'a"b', "x,y", "Ok"))) == ("$user", 'a"b', "x,y", "Ok")
    assert upstream_settings(GuardRails(max_connections_per_user=3)) == {}


@pytest.mark.parametrize(("text", "ms"), [("500ms", 500), ("30s", 30_000), ("5min", 300_000), ("1h", 3_600_000)])
def test_durations(text: str, ms: int) -> None:
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize("text", ["0ms", "30", "30 s", "1d", "-1s", "1.5s", "600h", ""])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration_ms(text)


def test_split_options_as_postgresql() -> None:
    assert split_options(r"  -c a=b   -c\ x=y\\z --q-r=s\ t ") == ["-c", "a=b", "-c x=y\\z", "--q-r=s t"]
    assert options_settings("-c a=b -cC=d --e-f=g") == ["a", "C", "e-f"]
    for bad in ("-F", "-c", "-c a", "x", "-c a=b -B 100", "--", "-ec a=b", "-c =b"):
        assert options_settings(bad) is None, bad


@pytest.mark.parametrize(("parameters", "refused"), [
    ({"statement_timeout": "0"}, 'startup parameter "statement_timeout" denied by guard rail "statementTimeout"'),
    ({"Default_Transaction_Read_Only": "off"}, 'guard rail "readOnly"'),
    ({"transaction-read-only": "off"}, 'guard rail "readOnly"'),
    ({"options": "-c work_mem=1MB --lock-timeout=0"}, 'startup option "-c lock-timeout" denied'),
    ({"options": r"-c\ x=1 -c SEARCH_PATH=evil"}, 'guard rail "searchPath"'),
    ({"options": "-F"}, "switches other than -c name=value are refused"),
])
def test_startup_parameters_refused(parameters: dict[str, str], refused: str) -> None:
    with pytest.raises(AccessDenied, match=refused) as info:
        startup_parameters(parameters, RAILS, config="ro")
    assert 'config "ro"' in info.value.message and info.value.sqlstate == "42501"


def test_startup_parameters_put_the_rails_last() -> None:
    params = startup_parameters({"application_name": "x", "options": "-c work_mem=8MB"}, RAILS, config="ro")
    assert params["application_name"] == "x" and params["options"] == "-c work_mem=8MB"
    assert params["default_transaction_read_only"] == "on" and list(params)[-1] == "search_path"
    # Without rails that lock a setting, anything goes through as before.
    free = {"options": "-F", "statement_timeout": "0"}
    assert startup_parameters(free, GuardRails(max_connections_per_user=2), config="x") == free


def test_values_that_keep_the_rail() -> None:
    locks = locked_settings(RAILS)
    assert [keeps_rail(locks["statement_timeout"], v) for v in ("30s", "30000", " 30000 ms ", "0.5min", ("30s",))] \
        == [True] * 5
    changed = ("0", "30", "0x7530", "030000", "1e4", ("a", "b"))
    assert not any(keeps_rail(locks["statement_timeout"], v) for v in changed)
    assert [keeps_rail(locks["transaction_read_only"], v) for v in ("on", "TRUE", "y", "1", "off", "0", "o")] \
        == [True, True, True, True, False, False, False]
    assert keeps_rail(locks["search_path"], 'public, "My Schema"')
    assert keeps_rail(locks["search_path"], ("public", "My Schema"))
    assert not keeps_rail(locks["search_path"], "public, my schema")
    assert not keeps_rail(locks["search_path"], ("public",))
    assert parse_setting_ms("1.5s") == 1500 and parse_setting_ms("250us") == 0 and parse_setting_ms("-1") is None


def railed_policy(rails: GuardRails = RAILS) -> Any:
    allow = policy_from_spec("allow", {"rules": [{"name": "all", "effect": "ALLOW", "condition": {"matchAny": True}}]})
    config = ServiceConfig(name="ro", upstream=Upstream.from_url("postgres://127.0.0.1:5432"),
                           postgres=PostgresSettings(authorization_mode=AuthorizationMode.ALL, guard_rails=rails))
    service = Service(name="db", configs={"ro": config}, default_config="ro",
                      authorization=Authorization(policies=("allow",)))
    live = LiveSnapshot(Snapshot(services={"db": service}, users={"alice": User(name="alice")},
                                 policies={"allow": allow}), generation=1)
    policy = live.connection_policy(live.user("alice"), service, None, config=config)
    assert policy is not None
    return policy


DENIED = [
    ("SET statement_timeout = 0", "statementTimeout", "SET statement_timeout"),
    ("set STATEMENT_TIMEOUT to '0'", "statementTimeout", "SET statement_timeout"),
    ('SET SESSION "Statement_Timeout" = 0', "statementTimeout", "SET statement_timeout"),
    ("SET LOCAL lock_timeout = 0", "lockTimeout", "SET lock_timeout"),
    ("SET idle_in_transaction_session_timeout = 0", "idleInTransactionTimeout", ""),
    ("SET search_path = public", "searchPath", "SET search_path"),  # not the whole rail: My Schema is missing
    ("SET SCHEMA 'evil'", "searchPath", "SET search_path"),
    ("SET transaction_read_only = off", "readOnly", ""),
    ("SET default_transaction_read_only TO false", "readOnly", ""),
    ("SELECT set_config('default_transaction_read_only', 'off', false)", "readOnly",
     "set_config(default_transaction_read_only)"),
    ("SELECT pg_catalog.set_config('statement_timeout'::text, '0', true)", "statementTimeout", ""),
    ("SELECT set_config(name, 'x', false) FROM t", "readOnly", "not a literal"),
    ("SELECT set_config('lock_timeout', current_setting('x'), false)", "lockTimeout", ""),
    ("SELECT 1; SET statement_timeout = 0", "statementTimeout", ""),
    ("RESET transaction_read_only", "readOnly", "SET transaction_read_only"),  # back to off, not the rail
    ("SET transaction_read_only TO DEFAULT", "readOnly", ""),
    ("BEGIN; RESET transaction_read_only; INSERT INTO t VALUES (1); COMMIT", "readOnly", ""),
    ("UPDATE pg_settings SET setting = '0' WHERE name = 'statement_timeout'", "readOnly", "writing pg_settings"),
    ("WITH u AS (UPDATE pg_catalog.pg_settings SET setting = 0 RETURNING 1) SELECT 1", "readOnly", ""),
    ("SELECT f(); COMMIT; INSERT INTO t VALUES (1)", "readOnly", "COMMIT followed by more statements"),
    ("BEGIN; SELECT f(); END; SELECT 1", "readOnly", "COMMIT followed"),
    ("SELECT f(); PREPARE TRANSACTION 'x'; SELECT 1", "readOnly", "COMMIT followed"),
    ("SELECT query_to_xml('SELECT set_config(''statement_timeout'', ''0'', false)', true, true, '')", "readOnly",
     "query_to_xml() (it runs SQL text"),
    ("SELECT * FROM ts_stat('SELECT 1')", "readOnly", "ts_stat()"),
    ("SELECT ts_rewrite('a'::tsquery, 'SELECT set_config(''lock_timeout'', ''0'', false)')", "readOnly", ""),
    ("BEGIN READ WRITE", "readOnly", "BEGIN READ WRITE"),
    ("BEGIN ISOLATION LEVEL SERIALIZABLE, READ WRITE", "readOnly", "BEGIN READ WRITE"),
    ("START TRANSACTION READ WRITE", "readOnly", "START TRANSACTION READ WRITE"),
    ("SET TRANSACTION READ WRITE", "readOnly", "SET TRANSACTION READ WRITE"),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE", "readOnly",
     "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE"),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql SET statement_timeout = 0 AS 'select 1'", "statementTimeout", ""),
    ("DO $$ BEGIN PERFORM set_config('statement_timeout', '0', false); END $$", "readOnly", "DO denied"),
    ("EXPLAIN ANALYZE SELECT set_config('statement_timeout', '0', false)", "statementTimeout", ""),
    ("PREPARE p AS SELECT set_config('statement_timeout', '0', false)", "statementTimeout", ""),
]
ALLOWED = [
    "SELECT 1", "SET statement_timeout = '30s'", "SET statement_timeout = 30000", "RESET statement_timeout",
    "SET lock_timeout TO DEFAULT", "RESET ALL", "DISCARD ALL", "SET search_path = public, \"My Schema\"",
    "SET default_transaction_read_only = on", "BEGIN READ ONLY", "BEGIN",
    "START TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", "SET work_mem = '64MB'", "SET application_name = 'x'",
    "SELECT set_config('application_name', 'x', false)", "SELECT current_setting('statement_timeout')",
    "SET statement_timeout FROM CURRENT", "RESET default_transaction_read_only", "SELECT * FROM pg_settings",
    "BEGIN; SELECT 1; COMMIT", "COMMIT", "SELECT f(); ROLLBACK; SELECT 1",
    "BEGIN; SELECT f(); COMMIT AND CHAIN; SELECT 1", "SET LOCAL transaction_read_only = on",
]


@pytest.mark.parametrize(("sql", "rail", "wording"), DENIED)
def test_rail_gate_denies(sql: str, rail: str, wording: str) -> None:
    policy = railed_policy()
    for decide in (policy.decide_query, lambda s: policy.decide_parse("p", s)):
        decision = decide(sql)
        assert not decision.allowed and decision.rule == f"guardRails.{rail}", decision
        assert f'denied by guard rail "{rail}" of config "ro"' in decision.reason and wording in decision.reason


@pytest.mark.parametrize("sql", ALLOWED)
def test_rail_gate_allows(sql: str) -> None:
    decision = railed_policy().decide_query(sql)
    assert decision.allowed and decision.policy == "allow", (sql, decision)


def test_values_are_read_from_the_text_not_a_cached_shape() -> None:
    # A harmless text decided (and cached) first must not let the harmful one with other literals through.
    policy = railed_policy()
    pairs = [("SET statement_timeout = 30000", "SET statement_timeout = 0"),
             ("SELECT set_config('application_name', 'x', false)",
              "SELECT set_config('default_transaction_read_only', 'off', false)")]
    for harmless, harmful in pairs:
        assert policy.decide_query(harmless).allowed
        assert not policy.decide_query(harmful).allowed
        assert not policy.decide_parse("", harmful).allowed


def test_fast_path_set_config_is_denied_with_any_locking_rail() -> None:
    assert not railed_policy().decide_function_call(2078).allowed
    assert railed_policy().decide_function_call(1598).allowed  # random(): not a setting
    only_timeout = railed_policy(GuardRails(statement_timeout_ms=1000))
    assert only_timeout.decide_function_call(2078).rule == "guardRails.statementTimeout"
    assert only_timeout.decide_query("SET default_transaction_read_only = off").allowed  # not locked here


def test_no_rail_gate_without_locking_rails() -> None:
    policy = railed_policy(GuardRails(max_connections_per_user=3))
    assert policy.decide_query("SET statement_timeout = 0").allowed
    assert policy.decide_query("DO $$ BEGIN END $$").allowed


def test_locking_rails_need_mode_all_even_over_the_admin_api() -> None:
    with pytest.raises(ValueError, match="guardRails need postgres.authorization.mode ALL"):
        PostgresSettings(guard_rails=RAILS)
    PostgresSettings(guard_rails=GuardRails(max_connections_per_user=1))  # a cap needs no gate


def stream(*messages: bytes) -> bytes:
    return b"".join(messages)


PIPELINE = [m.encode_message(m.PARSE, b"\x00SELECT 1\x00\x00\x00"), m.encode_message(m.BIND, b"\x00" * 8),
            m.encode_message(m.EXECUTE, b"\x00\x00\x00\x00\x00"), m.encode_message(m.SYNC),
            m.encode_query("SELECT pgw_rail_unlock()"), m.encode_message(m.FLUSH),
            m.encode_query("INSERT INTO items(name) VALUES ('x')"), m.encode_terminate()]
CYCLE_ENDS = [sum(map(len, PIPELINE[:i + 1])) for i in (3, 4, 6)]


@given(st.lists(st.integers(min_value=1, max_value=40), max_size=30))
def test_cycle_splitter_finds_the_end_of_each_sync_query_and_function_call(sizes: list[int]) -> None:
    data = stream(*PIPELINE)
    splitter, offset, cuts = CycleSplitter(), 0, []
    chunks, start = [], 0
    for size in sizes:
        chunks.append(data[start:start + size])
        start += size
    chunks.append(data[start:])
    for chunk in chunks:
        cuts += [offset + end for end in splitter.cycle_ends(chunk)]
        offset += len(chunk)
    assert cuts == CYCLE_ENDS


def parse(name: bytes, sql: bytes) -> bytes:
    return m.encode_message(m.PARSE, name + b"\x00" + sql + b"\x00\x00\x00")


def bind(portal: bytes, statement: bytes) -> bytes:
    return m.encode_message(m.BIND, portal + b"\x00" + statement + b"\x00" + b"\x00" * 6)


def execute(portal: bytes = b"") -> bytes:
    return m.encode_message(m.EXECUTE, portal + b"\x00\x00\x00\x00\x00")


SYNC, FLUSH = m.encode_message(m.SYNC), m.encode_message(m.FLUSH)
CLOSE_C = m.encode_message(ord("C"), b"Sc\x00")


@pytest.mark.parametrize(("stream", "violates"), [
    (parse(b"c", b"COMMIT") + bind(b"", b"c") + execute() + SYNC + bind(b"", b"c") + execute() + SYNC, False),
    (parse(b"", b"COMMIT") + bind(b"", b"") + execute() + FLUSH + CLOSE_C + SYNC + parse(b"", b"SELECT 1"), False),
    (parse(b"", b"COMMIT") + bind(b"", b"") + execute() + m.encode_terminate(), False),
    (parse(b"", b"SELECT f()") + bind(b"", b"") + execute() + parse(b"", b"END") + bind(b"", b"") + execute()
     + parse(b"", b"INSERT INTO t VALUES (1)"), True),
    (parse(b"c", b" /* x */ commit") + SYNC + bind(b"p", b"c") + execute(b"p") + m.encode_query("SELECT 1"), True),
    (parse(b"", b"SELECT f()") + bind(b"", b"") + execute() + m.encode_query("SELECT 1"), True),  # commits the batch
    (parse(b"", b"SELECT 1") + bind(b"", b"") + execute() + SYNC + m.encode_query("SELECT 1") + SYNC
     + m.encode_query("SELECT 2"), False),
    (parse(b"c", b"PREPARE TRANSACTION 'x'") + bind(b"", b"c") + execute() + bind(b"", b"s"), True),
    (parse(b"c", b"COMMIT") + bind(b"p", b"c") + CLOSE_C + parse(b"c", b"SELECT 1") + bind(b"p", b"c") + execute(b"p")
     + execute(b"p"), False),  # `c` is no longer the COMMIT when `p` is bound again
])
@given(st.lists(st.integers(min_value=1, max_value=30), max_size=20))
def test_transaction_end_watch(stream: bytes, violates: bool, sizes: list[int]) -> None:
    watch = TransactionEndWatch(lambda q: classify(q.decode()).kinds[:1] in (("COMMIT",), ("PREPARE TRANSACTION",)))
    found, start = False, 0
    for size in [*sizes, len(stream)]:
        found = found or watch.violation(stream[start:start + size]) is not None
        start += size
    assert found is violates


@pytest.mark.parametrize("header", [b"Q\x00\x00\x00\x03", b"d\x7f\xff\xff\xff"])
def test_rails_framing_refuses_what_the_gate_refuses(header: bytes) -> None:
    # One walker frames every reader: a length below 4 or over the limit is a ProtocolViolation, never a guess.
    with pytest.raises(ProtocolViolation):
        CycleSplitter().cycle_ends(header)
    with pytest.raises(ProtocolViolation):
        TransactionEndWatch(lambda _q: False).violation(m.encode_message(m.SYNC) + header)

"""Every cache key holds every input its cached result depends on (issue 10, class 2).

Two caches sit on the decision path: classify()'s literal-free keys (the regex "shape" and libpg_query's
normalised text) and the decision cache a RuleBook shares between sessions. The property test below runs
sequences of requests through both and compares each decision with one computed from scratch: uncached
classification, every rule evaluated on the full ctx, no folding, no shared cache.
"""

from __future__ import annotations

import datetime
from collections import OrderedDict
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from identity.store.base import AssuranceLevel, AuthMethod, IdentitySession, utc_now
from proxy.policy import classify as classify_module
from proxy.policy import timefns
from proxy.policy.classify import classify
from proxy.policy.engine import ConnectionPolicy, Decision
from proxy.routing import LiveSnapshot
from proxy.snapshot import (
    Authorization,
    AuthorizationMode,
    Group,
    PostgresSettings,
    Service,
    ServiceConfig,
    Snapshot,
    Upstream,
    User,
)
from proxy.snapshot_wire import policy_from_spec


@pytest.fixture(autouse=True)
def fresh_classify_caches(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("_by_text", "_by_normalized", "_by_shape"):
        monkeypatch.setattr(classify_module, name, OrderedDict())
    yield


def _clear_classify_caches() -> None:
    for cache in (classify_module._by_text, classify_module._by_normalized, classify_module._by_shape):
        cache.clear()


# --- classify(): literal-free keys never serve a classification a literal decided --------------------------


@pytest.mark.parametrize("read, write", [
    ("EXPLAIN (ANALYZE 0) DELETE FROM t", "EXPLAIN (ANALYZE 1) DELETE FROM t"),  # the reported case: shape key
    ('EXPLAIN (ANALYZE 0) DELETE FROM "t"', 'EXPLAIN (ANALYZE 1) DELETE FROM "t"'),  # normalised key
    ("EXPLAIN (ANALYZE 0, BUFFERS 1) UPDATE t SET a = 1", "EXPLAIN (ANALYZE 2, BUFFERS 1) UPDATE t SET a = 1"),
    ("EXPLAIN (ANALYZE 'off') DELETE FROM t", "EXPLAIN (ANALYZE 'on') DELETE FROM t"),
    ("EXPLAIN (ANALYZE false) DELETE FROM t", "EXPLAIN (ANALYZE true) DELETE FROM t"),
    # PostgreSQL 15 takes the last of repeated options: this one runs the DELETE.
    ("EXPLAIN (ANALYZE 0, ANALYZE 0) DELETE FROM t", "EXPLAIN (ANALYZE 0, ANALYZE 1) DELETE FROM t"),
])
def test_a_read_cannot_answer_for_a_write_that_differs_only_in_a_literal(read: str, write: str) -> None:
    assert classify(read).is_read_only
    found = classify(write)
    assert not found.is_read_only and "EXPLAIN" in found.kinds and len(found.kinds) == 2
    assert classify(read).is_read_only  # and the other way round


@pytest.mark.parametrize("sql", [
    "EXPLAIN (ANALYZE 0) DELETE FROM t",
    "SET default_transaction_read_only = off",
    "SET standard_conforming_strings = 'off'",
    "SET TRANSACTION READ WRITE",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
    "BEGIN READ WRITE",
    "START TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    "SELECT set_config('default_transaction_read_only', 'off', false)",
    "SELECT pg_catalog.set_config('search_path', 'evil', true) FROM t WHERE a = 1",
    "COPY t TO '/tmp/out' (FORMAT csv)",
])
def test_classifications_a_literal_decided_are_cached_by_exact_text_only(sql: str) -> None:
    found = classify(sql)
    assert found.depends_on_literals
    assert found not in classify_module._by_shape.values()
    assert found not in classify_module._by_normalized.values()
    assert classify_module._by_text[sql] is found


def test_literal_free_statements_still_share_one_cached_shape() -> None:
    a = classify("SELECT * FROM t WHERE id = 1")
    assert not a.depends_on_literals
    assert classify("SELECT * FROM t WHERE id = 2") is a
    assert classify('SELECT * FROM "t" WHERE id = 1') is classify('SELECT * FROM "t" WHERE id = 2')


# --- decision cache: the values of session fields read by per-request expressions are in the key -----------


def identity(aal: AssuranceLevel, method: AuthMethod = AuthMethod.OIDC, sid: str = "") -> IdentitySession:
    now = utc_now()
    return IdentitySession(id=sid or f"s-{aal.name}-{method}", user="alice", idp="corp", method=method, aal=aal,
                           created_at=now, expires_at=now + timedelta(hours=1), last_seen_at=now)


UP = Upstream.from_url("postgres://127.0.0.1:5432")


def snapshot(*policies: Any) -> LiveSnapshot:
    config = ServiceConfig(name="default", upstream=UP,
                           postgres=PostgresSettings(authorization_mode=AuthorizationMode.ALL))
    service = Service(name="db", configs={"default": config}, default_config="default",
                      manifest={"metadata": {"name": "db"}, "spec": {"attrs": {"env": "prod"}}},
                      authorization=Authorization(policies=tuple(p.name for p in policies)))
    users = {name: User(name=name, groups=groups, manifest={"spec": {"groups": list(groups)}})
             for name, groups in USERS.items()}
    groups = {g: Group(name=g, manifest={"spec": {"attrs": {"tier": g}}}) for g in ("juniors", "dba")}
    return LiveSnapshot(Snapshot(services={"db": service}, users=users, groups=groups,
                                 policies={p.name: p for p in policies}), generation=1)


USERS = {"alice": ("juniors",), "bob": ("dba",), "carol": ()}

AAL2_WRITES = policy_from_spec("aal2-writes", {"rules": [
    {"name": "aal1-no-writes", "effect": "DENY", "condition": {
        "match": 'ctx.request.postgres.statement.readOnly == false'
                 ' && ctx.session.status.authentication.info.aal != "AAL2"'}},
    {"name": "rest", "effect": "ALLOW", "priority": 5, "condition": {"matchAny": True}},
]})


def test_an_aal2_sessions_allow_is_not_reused_for_the_same_users_aal1_session() -> None:
    live = snapshot(AAL2_WRITES)
    user, service = live.user("alice"), live.service("db")
    strong = live.connection_policy(user, service, identity(AssuranceLevel.AAL2))
    weak = live.connection_policy(user, service, identity(AssuranceLevel.AAL1))
    assert strong is not None and weak is not None
    assert strong.decide_query("DELETE FROM t WHERE id = 1").allowed
    assert weak.decide_query("DELETE FROM t WHERE id = 2").rule == "aal1-no-writes"
    assert weak.decide_parse("", "DELETE FROM t").rule == "aal1-no-writes"
    assert strong.decide_parse("", "DELETE FROM t").allowed


def test_sessions_whose_relevant_values_are_equal_still_share_decisions() -> None:
    live = snapshot(AAL2_WRITES)
    user, service = live.user("alice"), live.service("db")
    # Different session ids and methods, same AAL: the rule reads only the AAL, so one cache entry serves both.
    one = live.connection_policy(user, service, identity(AssuranceLevel.AAL2, AuthMethod.OIDC, "s-1"))
    two = live.connection_policy(user, service, identity(AssuranceLevel.AAL2, AuthMethod.PASSKEY, "s-2"))
    assert one is not None and two is not None
    assert one._shape == two._shape
    weak = live.connection_policy(user, service, identity(AssuranceLevel.AAL1, AuthMethod.OIDC, "s-3"))
    assert weak is not None and weak._shape != one._shape


# --- property: through the caches == from scratch ---------------------------------------------------------

POLICIES = [
    AAL2_WRITES,
    policy_from_spec("mixed", {"rules": [
        # Reads a session field and the request in one expression, and a group through a folded part.
        {"name": "passkey-deletes-only", "effect": "DENY", "condition": {"all": {"of": [
            {"match": 'ctx.request.postgres.statement.kinds.exists(k, k == "DELETE")'
                      ' && ctx.session.status.authentication.info.type != "passkey"'},
            {"match": 'ctx.user.spec.groups.hasAny(["juniors"])'}]}}},
        {"name": "dba-ddl-in-window", "effect": "ALLOW", "condition": {"all": {"of": [
            {"match": 'ctx.groups.exists(g, g.spec.attrs.tier == "dba")'},
            {"match": 'ctx.request.postgres.statement.kinds.exists(k, k.startsWith("DROP"))'
                      ' && now().isBetweenHoursIn(9, 17, "Europe/Berlin")'}]}}},
        {"name": "no-ddl", "effect": "DENY", "priority": 1, "condition": {
            "match": 'ctx.request.postgres.statement.kinds.exists(k, k.startsWith("DROP"))'}},
        {"name": "settings-by-text", "effect": "DENY", "priority": 2, "condition": {
            "match": 'ctx.request.postgres.statement.kinds.exists(k, k == "SET")'
                     ' && ctx.user.metadata.name != "bob"'}},
    ]}),
]

# Statement templates whose literal slots ({b}: a boolean-ish option value, {n}: a number, {s}: a string)
# take generated values. Few templates, so that one example often sends the same statement with different
# literals: the case a literal-free cache key gets wrong.
TEMPLATES = [
    "EXPLAIN (ANALYZE {b}) DELETE FROM t",
    'EXPLAIN (ANALYZE {b}) UPDATE "t" SET a = {n}',  # a quoted name: libpg_query's normalised key
    "EXPLAIN (ANALYZE {b}, VERBOSE {b}) SELECT * FROM t WHERE a = {n}",
    "DELETE FROM app.t WHERE a = {n}",
    "SELECT * FROM t WHERE a = {n} AND b = '{s}'",
    "SET default_transaction_read_only = {b}",
    "SET TRANSACTION READ {rw}",
    "BEGIN READ {rw}",
    "SELECT set_config('default_transaction_read_only', '{s}', false)",
    "SELECT nextval('s{n}')",
    "DROP TABLE t{n}",
    "COPY t TO {target}",
    "WITH x AS (SELECT * FROM t WHERE a = {n} {lock}) SELECT * FROM x",
]
BOOLS = ["0", "1", "2", "true", "false", "on", "off", "'on'", "'off'", "'1'", "'0'"]


def statements(templates: list[str]) -> st.SearchStrategy[str]:
    @st.composite
    def one(draw: st.DrawFn) -> str:
        return draw(st.sampled_from(templates)).format(
            b=draw(st.sampled_from(BOOLS)), n=draw(st.integers(min_value=0, max_value=3)),
            s=draw(st.sampled_from(["on", "off", "x"])), rw=draw(st.sampled_from(["ONLY", "WRITE"])),
            target=draw(st.sampled_from(["STDOUT", "'/tmp/x'", "PROGRAM 'id'"])),
            lock=draw(st.sampled_from(["", "FOR UPDATE"])))
    return one()


SESSIONS = st.tuples(st.sampled_from(sorted(USERS)), st.sampled_from([AssuranceLevel.AAL1, AssuranceLevel.AAL2]),
                     st.sampled_from([AuthMethod.OIDC, AuthMethod.PASSKEY, AuthMethod.TOTP]),
                     st.integers(min_value=0, max_value=2))  # session id: same values, different sessions
CLOCKS = st.sampled_from([datetime.datetime(2026, 3, 3, h, 30, tzinfo=datetime.UTC) for h in (6, 10, 20)])
# Each example picks a few templates and sends them in literal variants from several sessions.
STEPS = st.lists(st.sampled_from(TEMPLATES), min_size=1, max_size=2).flatmap(
    lambda templates: st.lists(st.tuples(statements(templates), SESSIONS, CLOCKS, st.booleans()),
                               min_size=3, max_size=8))


def _from_scratch(live: LiveSnapshot, key: tuple[Any, ...], sql: str, is_parse: bool) -> Decision:
    user_name, aal, method, sid = key
    user, service = live.user(user_name), live.service("db")
    ctx = live.context(user, service, None, identity(aal, method, f"s{sid}"))
    c = classify_module._classify_uncached(sql)
    ctx["request"] = {"postgres": ConnectionPolicy._statement_request("parse" if is_parse else "query", c, sql, "")}
    return live.policies.decide(live.policies.book(user, service), ctx)


LIVE = snapshot(*POLICIES)


@settings(max_examples=150, deadline=None)
@given(steps=STEPS)
def test_decisions_through_the_caches_equal_decisions_from_scratch(steps: list[Any]) -> None:
    _clear_classify_caches()
    live = LIVE
    for book in live.policies._books.values():  # empty decision caches (compiled rules are kept: CEL is slow)
        book.cache.clear()
        book._shapes.clear()
    sessions: dict[tuple[Any, ...], ConnectionPolicy] = {}
    for sql, key, clock, is_parse in steps:
        if key not in sessions:
            user_name, aal, method, sid = key
            sp = live.connection_policy(live.user(user_name), live.service("db"), identity(aal, method, f"s{sid}"))
            assert sp is not None
            sessions[key] = sp
        with timefns.fixed_clock(clock):
            cached = sessions[key].decide_parse("", sql) if is_parse else sessions[key].decide_query(sql)
            expected = _from_scratch(live, key, sql, is_parse)
        assert cached == expected, (sql, key, clock)


def test_a_statement_field_the_request_key_does_not_know_keys_by_text(monkeypatch: pytest.MonkeyPatch) -> None:
    # A field added to `statement` later (say, the settings a SET changes) without a request-key getter must
    # not be left out of the key: the key falls back to the text itself.
    real = ConnectionPolicy._statement_request

    def with_length(kind: str, c: Any, sql: str, name: str) -> dict[str, Any]:
        out = real(kind, c, sql, name)
        out["statement"]["length"] = len(sql)
        return out

    monkeypatch.setattr(ConnectionPolicy, "_statement_request", staticmethod(with_length))
    long_ones = policy_from_spec("long", {"rules": [
        {"name": "no-long", "effect": "DENY", "condition": {"match": "ctx.request.postgres.statement.length > 20"}},
        {"name": "rest", "effect": "ALLOW", "priority": 1, "condition": {"matchAny": True}},
    ]})
    live = snapshot(long_ones)
    sp = live.connection_policy(live.user("alice"), live.service("db"), identity(AssuranceLevel.AAL1))
    assert sp is not None
    assert sp.decide_query("SELECT 1").allowed
    assert sp.decide_query("SELECT 1        /* padding */").rule == "no-long"  # same classification

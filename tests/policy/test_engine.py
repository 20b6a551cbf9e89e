"""Policy decisions: priority, DENY before ALLOW, default deny, nesting, disabled policies, attrs, caching."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from identity.store.base import AssuranceLevel, AuthMethod, IdentitySession, utc_now
from proxy.errors import AccessDenied
from proxy.policy.engine import Decision
from proxy.routing import ConnectRequest, LiveSnapshot
from proxy.snapshot import (
    Authorization,
    AuthorizationMode,
    Group,
    Policy,
    PostgresSettings,
    Service,
    ServiceConfig,
    Snapshot,
    Upstream,
    User,
)
from proxy.snapshot_wire import policy_from_spec

UP = Upstream.from_url("postgres://127.0.0.1:5432")
REQUEST = ConnectRequest(user="alice", database="app")


def rule(name: str, effect: str, condition: dict[str, Any], priority: int = 0) -> dict[str, Any]:
    return {"name": name, "effect": effect, "priority": priority, "condition": condition}


def policy(name: str, *rules: dict[str, Any], attrs: dict[str, Any] | None = None, disabled: bool = False) -> Policy:
    return policy_from_spec(name, {"rules": list(rules), "attrs": attrs or {}, "isDisabled": disabled})


def live(*policies: Policy, user_policies: tuple[str, ...] = (), group_policies: tuple[str, ...] = (),
         service_policies: tuple[str, ...] = (), inline: tuple[Policy, ...] = (),
         mode: AuthorizationMode = AuthorizationMode.ALL, groups: tuple[str, ...] = ("juniors",)) -> LiveSnapshot:
    config = ServiceConfig(name="default", upstream=UP, postgres=PostgresSettings(authorization_mode=mode))
    service = Service(name="db", configs={"default": config}, default_config="default",
                      manifest={"metadata": {"name": "db"}, "spec": {"attrs": {"env": "prod"}}},
                      authorization=Authorization(policies=service_policies))
    user = User(name="alice", groups=groups, manifest={"spec": {"groups": list(groups)}},
                authorization=Authorization(policies=user_policies, inline_policies=inline))
    return LiveSnapshot(Snapshot(
        services={"db": service}, users={"alice": user},
        groups={"juniors": Group(name="juniors", authorization=Authorization(policies=group_policies))},
        policies={p.name: p for p in policies},
    ), generation=7)


def connection_policy(snapshot: LiveSnapshot, identity_session: IdentitySession | None = None) -> Any:
    sp = snapshot.connection_policy(snapshot.user("alice"), snapshot.service("db"), identity_session,
                                 request=REQUEST)
    assert sp is not None
    return sp


WRITES = {"match": "!ctx.request.postgres.statement.readOnly"}
READ_ONLY = policy("read-only-juniors",
                   rule("no-writes", "DENY", WRITES),
                   rule("everything-else", "ALLOW", {"matchAny": True}))


def test_read_only_policy_denies_writes_and_allows_reads_naming_the_rule() -> None:
    sp = connection_policy(live(READ_ONLY, group_policies=("read-only-juniors",)))
    assert sp.generation == 7
    denied = sp.decide_query("INSERT INTO t VALUES (1)")
    assert denied == Decision(False, "read-only-juniors", "no-writes",
                              'denied by policy "read-only-juniors" rule "no-writes"')
    assert sp.decide_query("SELECT * FROM t").allowed
    assert sp.decide_query("SELECT 1; DELETE FROM t").rule == "no-writes"  # multi-statement
    assert not sp.decide_query("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d").allowed  # CTE
    assert not sp.decide_parse("s1", "UPDATE t SET a = 1").allowed
    assert sp.decide_parse("s1", "SELECT $1").allowed
    assert not sp.decide_query("COPY t FROM STDIN").allowed
    assert sp.decide_query("COPY t TO STDOUT").allowed
    assert not sp.decide_query("not sql at all").allowed  # UNKNOWN is not read-only


def test_no_match_denies_by_default() -> None:
    selects = {"match": 'ctx.request.postgres.query.kinds == ["SELECT"]'}
    only_selects = policy("selects", rule("select", "ALLOW", selects))
    sp = connection_policy(live(only_selects, user_policies=("selects",)))
    assert sp.decide_query("SELECT 1").allowed
    assert sp.decide_query("SHOW work_mem") == Decision(False, "", "", "no rule matched: denied by default")
    assert not sp.decide_parse("", "SELECT 1").allowed  # the rule reads `query`, a Parse has `parse`
    # And the connection itself: nothing allows it.
    with pytest.raises(AccessDenied, match="denied by default"):
        only_selects_live = live(only_selects, user_policies=("selects",))
        only_selects_live.route("alice", "db", REQUEST)


def test_lower_priority_wins_and_deny_beats_allow_at_equal_priority() -> None:
    allow_first = policy("p", rule("allow-all", "ALLOW", {"matchAny": True}, priority=-1),
                         rule("deny-all", "DENY", {"matchAny": True}, priority=0))
    assert connection_policy(live(allow_first, user_policies=("p",))).decide_query("DROP TABLE t").rule == "allow-all"
    tie = policy("p", rule("allow-all", "ALLOW", {"matchAny": True}), rule("deny-all", "DENY", {"matchAny": True}))
    assert connection_policy(live(tie, user_policies=("p",))).decide_query("SELECT 1").rule == "deny-all"
    # Across policies attached at different places the same order holds.
    allow = policy("allow", rule("a", "ALLOW", {"matchAny": True}, priority=2))
    drops = {"match": 'ctx.request.postgres.query.kinds.hasAny(["DROP TABLE"])'}
    deny_drop = policy("no-drop", rule("d", "DENY", drops, priority=1))
    sp = connection_policy(live(allow, deny_drop, service_policies=("allow",), user_policies=("no-drop",)))
    assert sp.decide_query("DROP TABLE t").policy == "no-drop"
    assert sp.decide_query("SELECT 1").policy == "allow"


def test_nested_conditions_and_attrs() -> None:
    nested = policy(
        "nested",
        rule("prod-ddl", "DENY", {"all": {"of": [
            {"match": 'ctx.service.spec.attrs.env == attrs.protectedEnv'},
            {"any": {"of": [
                {"match": 'ctx.request.postgres.statement.kinds.exists(k, k.startsWith("DROP"))'},
                {"match": 'ctx.request.postgres.statement.kinds.hasAny(["TRUNCATE"])'},
            ]}},
            {"none": {"of": [{"match": 'ctx.user.spec.groups.hasAny(attrs.trusted)'}]}},
        ]}}),
        rule("rest", "ALLOW", {"not": "false"}),
        attrs={"protectedEnv": "prod", "trusted": ["dba"]},
    )
    sp = connection_policy(live(nested, user_policies=("nested",)))
    assert sp.decide_query("DROP INDEX i").rule == "prod-ddl"
    assert sp.decide_query("TRUNCATE t").rule == "prod-ddl"
    assert sp.decide_query("DELETE FROM t").rule == "rest"
    dba = connection_policy(live(nested, user_policies=("nested",), groups=("dba",)))
    assert dba.decide_query("DROP INDEX i").allowed


def test_disabled_policy_contributes_no_rules() -> None:
    deny = policy("deny-all", rule("no", "DENY", {"matchAny": True}), disabled=True)
    allow = policy("allow-all", rule("yes", "ALLOW", {"matchAny": True}))
    sp = connection_policy(live(deny, allow, user_policies=("deny-all", "allow-all")))
    assert sp.decide_query("DELETE FROM t").policy == "allow-all"


def test_inline_policies_apply() -> None:
    inline = policy("mine", rule("reads-only", "ALLOW", {"match": "ctx.request.postgres.statement.readOnly"}),
                    rule("connect", "ALLOW", {"match": "has(ctx.request.postgres.connect)"}))
    snapshot = live(inline=(inline,))
    assert snapshot.route("alice", "db", REQUEST).decision.rule == "connect"
    sp = connection_policy(snapshot)
    assert sp.decide_query("SELECT 1").rule == "reads-only"


def test_connect_decision_is_recorded_in_the_route_and_denial_names_policy_and_rule() -> None:
    gate = policy("aal2-only", rule("no-aal1", "DENY", {"not": 'ctx.session.status.authentication.info.aal == "AAL2"'}),
                  rule("ok", "ALLOW", {"matchAny": True}))
    snapshot = live(gate, service_policies=("aal2-only",))
    with pytest.raises(AccessDenied, match='denied by policy "aal2-only" rule "no-aal1"'):
        snapshot.route("alice", "db", REQUEST, identity_session=identity(AssuranceLevel.AAL1))
    route = snapshot.route("alice", "db", REQUEST, identity_session=identity(AssuranceLevel.AAL2))
    assert (route.decision.policy, route.decision.rule) == ("aal2-only", "ok")
    assert 'allowed by policy "aal2-only" rule "ok"' in route.reason


def test_no_policy_attached_keeps_routing_alone_and_mode_none_has_no_connection_policy() -> None:
    snapshot = live(mode=AuthorizationMode.NONE)
    assert snapshot.route("alice", "db", REQUEST).decision.allowed
    assert snapshot.connection_policy(snapshot.user("alice"), snapshot.service("db"), None) is None
    # Mode ALL without any policy: nothing allows a request.
    sp = connection_policy(live())
    assert sp.decide_query("SELECT 1") == Decision(False, "", "", "no rule matched: denied by default")


def test_session_constant_parts_are_per_session_and_the_cache_never_mixes_sessions() -> None:
    by_aal = policy("by-aal", rule("aal2-writes", "ALLOW", {"all": {"of": [
        {"match": 'ctx.session.status.authentication.info.aal == "AAL2"'},
        {"match": 'ctx.request.postgres.statement.kinds.hasAny(["CREATE TABLE"])'}]}}),
        rule("reads", "ALLOW", {"match": "ctx.request.postgres.statement.readOnly"}))
    snapshot = live(by_aal, user_policies=("by-aal",))
    weak, strong = connection_policy(snapshot, identity(AssuranceLevel.AAL1)), connection_policy(
        snapshot, identity(AssuranceLevel.AAL2))
    ddl = "CREATE TABLE x (a int)"
    for _ in range(3):  # repeated: served from the shared cache, still per session shape
        assert strong.decide_query(ddl).allowed
        assert not weak.decide_query(ddl).allowed
        assert weak.decide_query("SELECT 1").allowed


def test_rules_reading_the_raw_text_are_keyed_by_it() -> None:
    tagged = {"match": 'ctx.request.postgres.query.query.contains("/* ok */")'}
    comment = policy("tagged", rule("tagged", "ALLOW", tagged))
    sp = connection_policy(live(comment, user_policies=("tagged",)))
    assert sp.decide_query("SELECT 1 /* ok */").allowed
    assert not sp.decide_query("SELECT 1").allowed  # same fingerprint and kinds, different text


def test_function_call_and_parse_name() -> None:
    p = policy("fc", rule("oid", "ALLOW", {"match": "ctx.request.postgres.functionCall.oid == 1598"}),
               rule("named", "ALLOW", {"match": 'ctx.request.postgres.parse.name.startsWith("ok_")'}))
    sp = connection_policy(live(p, user_policies=("fc",)))
    assert sp.decide_function_call(1598).allowed
    assert not sp.decide_function_call(1599).allowed
    assert sp.decide_parse("ok_1", "DELETE FROM t").allowed
    assert not sp.decide_parse("other", "DELETE FROM t").allowed


def test_evaluation_error_denies_naming_the_rule() -> None:
    bad = policy("bad", rule("int-vs-string", "ALLOW", {"match": 'ctx.request.postgres.statement.kinds.size() == "x"'}))
    sp = connection_policy(live(bad, user_policies=("bad",)))
    decision = sp.decide_query("SELECT 1")
    assert not decision.allowed and decision.rule == "int-vs-string" and "failed to evaluate" in decision.reason


def test_copy_request_context() -> None:
    p = policy("copy", rule("no-copy-in", "DENY", {"match": 'ctx.request.postgres.copy.direction == "FROM"'}),
               rule("rest", "ALLOW", {"matchAny": True}))
    sp = connection_policy(live(p, user_policies=("copy",)))
    assert sp.decide_query("COPY public.t FROM STDIN").rule == "no-copy-in"
    assert sp.decide_query("COPY public.t TO STDOUT").rule == "rest"


def identity(aal: AssuranceLevel) -> IdentitySession:
    now = utc_now()
    return IdentitySession(id=f"s-{aal.name}", user="alice", idp="corp", method=AuthMethod.PASSKEY, aal=aal,
                           created_at=now, expires_at=now + timedelta(hours=1), last_seen_at=now)


def test_presence_of_a_request_kind_is_decided_per_request_not_folded_per_session() -> None:
    p = policy("kinds", rule("queries-only", "ALLOW", {"match": "has(ctx.request.postgres.query)"}),
               rule("connect", "ALLOW", {"match": "has(ctx.request.postgres.connect)"}, priority=1))
    snapshot = live(p, user_policies=("kinds",))
    assert snapshot.route("alice", "db", REQUEST).decision.rule == "connect"
    sp = connection_policy(snapshot)
    assert sp.decide_query("DELETE FROM t").rule == "queries-only"
    assert not sp.decide_parse("", "DELETE FROM t").allowed  # no `query` in a Parse; `connect` only at connect


def test_function_call_presents_a_statement_that_is_not_read_only() -> None:
    p = policy("ro", rule("no-writes", "DENY", {"match": "ctx.request.postgres.statement.readOnly == false"}),
           rule("calls", "ALLOW", {"match": 'ctx.request.postgres.statement.kinds == ["FUNCTION CALL"]'}),
           rule("rest", "ALLOW", {"matchAny": True}))
    sp = connection_policy(live(p, user_policies=("ro",)))
    denied = sp.decide_function_call(1576)  # setval(regclass, bigint)
    assert not denied.allowed and denied.rule == "no-writes"
    assert sp.decide_query("SELECT 1").allowed

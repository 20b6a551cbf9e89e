"""Policy enforcement AUDIT (shadow mode): evaluated, never deciding; what it would deny rides on the decision."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.errors import AccessDenied
from proxy.policy.engine import Decision, WouldDeny
from proxy.snapshot import PolicyEnforcement
from proxy.snapshot_wire import policy_from_spec, policy_spec_to_wire
from tests.policy.test_engine import REQUEST, WRITES, connection_policy, live, rule

ALLOW_ALL = policy_from_spec("allow-all", {"rules": [rule("everything", "ALLOW", {"matchAny": True}, priority=4)]})
NO_DELETES = {"match": 'ctx.request.postgres.statement.kinds.exists(k, k == "DELETE")'}
NO_TRUNCATE = {"match": 'ctx.request.postgres.statement.kinds.exists(k, k == "TRUNCATE")'}


def audit(name: str, *rules: dict[str, Any]) -> Any:
    return policy_from_spec(name, {"rules": list(rules), "enforcement": "AUDIT"})


def test_enforcement_defaults_to_enforce_and_round_trips_through_the_wire_form() -> None:
    assert ALLOW_ALL.enforcement is PolicyEnforcement.ENFORCE
    shadow = audit("shadow", rule("no-writes", "DENY", WRITES))
    assert shadow.enforcement is PolicyEnforcement.AUDIT
    assert policy_from_spec("shadow", policy_spec_to_wire(shadow)) == shadow


def test_an_audit_deny_allows_and_names_itself_as_would_deny() -> None:
    shadow = audit("no-writes-yet", rule("writes", "DENY", WRITES))
    sp = connection_policy(live(ALLOW_ALL, shadow, service_policies=("allow-all", "no-writes-yet")))
    decided = sp.decide_query("INSERT INTO t VALUES (1)")
    assert decided == Decision(True, "allow-all", "everything", 'allowed by policy "allow-all" rule "everything"',
                               WouldDeny("no-writes-yet", "writes"))
    assert sp.decide_query("SELECT 1").would_deny is None  # the audit rule does not match a read
    # Cached: the same statement again is the very same Decision object, wouldDeny and all.
    assert sp.decide_query("INSERT INTO t VALUES (1)") is decided


def test_an_enforce_deny_still_denies_with_an_audit_policy_attached() -> None:
    enforce = policy_from_spec("no-truncate", {"rules": [rule("truncate", "DENY", NO_TRUNCATE)]})
    shadow = audit("no-deletes-yet", rule("deletes", "DENY", NO_DELETES))
    sp = connection_policy(live(ALLOW_ALL, enforce, shadow,
                             service_policies=("allow-all", "no-truncate", "no-deletes-yet")))
    assert sp.decide_query("TRUNCATE t") == Decision(False, "no-truncate", "truncate",
                                                     'denied by policy "no-truncate" rule "truncate"')
    assert sp.decide_query("DELETE FROM t").would_deny == WouldDeny("no-deletes-yet", "deletes")
    assert sp.decide_query("DELETE FROM t").allowed


def test_an_audit_allow_never_lifts_an_enforce_deny_nor_hides_it() -> None:
    enforce = policy_from_spec("read-only", {"rules": [rule("writes", "DENY", WRITES, priority=0),
                                                      rule("rest", "ALLOW", {"matchAny": True}, priority=4)]})
    lenient = audit("writes-for-all", rule("writes", "ALLOW", WRITES, priority=-1))
    sp = connection_policy(live(enforce, lenient, service_policies=("read-only", "writes-for-all")))
    decided = sp.decide_query("INSERT INTO t VALUES (1)")
    assert (decided.allowed, decided.policy, decided.would_deny) == (False, "read-only", None)


def test_an_audit_deny_after_the_deciding_rule_would_not_deny() -> None:
    # Promoted to ENFORCE it would come after the ALLOW that decides (priority 4 > 0): it would change nothing.
    early = policy_from_spec("early", {"rules": [rule("all", "ALLOW", {"matchAny": True}, priority=0)]})
    late = audit("late", rule("writes", "DENY", WRITES, priority=4))
    sp = connection_policy(live(early, late, service_policies=("early", "late")))
    assert sp.decide_query("INSERT INTO t VALUES (1)").would_deny is None


def test_an_audit_rule_that_fails_to_evaluate_would_deny_but_does_not_block() -> None:
    shadow = audit("broken", rule("bad", "DENY", {"match": 'ctx.request.postgres.statement.kinds.size() == "x"'}))
    sp = connection_policy(live(ALLOW_ALL, shadow, service_policies=("allow-all", "broken")))
    decided = sp.decide_query("SELECT 1")
    assert decided.allowed and decided.would_deny == WouldDeny("broken", "bad")


def test_audit_policies_alone_decide_a_connection_as_if_none_were_attached() -> None:
    shadow = audit("no-alice-yet", rule("alice", "DENY", {"match": 'ctx.user.metadata.name == "alice"'}))
    snapshot = live(shadow, service_policies=("no-alice-yet",))
    route = snapshot.route("alice", "db", REQUEST)
    assert route.decision.allowed and route.decision.would_deny == WouldDeny("no-alice-yet", "alice")
    assert 'AUDIT policy "no-alice-yet" rule "alice" would deny' in route.reason
    # The same rule as ENFORCE refuses: the AUDIT answer is what promoting it would do.
    enforced = policy_from_spec("no-alice-yet", {"rules": [rule("alice", "DENY",
                                                               {"match": 'ctx.user.metadata.name == "alice"'})]})
    with pytest.raises(AccessDenied):
        live(enforced, service_policies=("no-alice-yet",)).route("alice", "db", REQUEST)

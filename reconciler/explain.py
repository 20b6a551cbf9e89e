"""The decision path of one connection and query, as the proxy would take it: routing, config, policy rules.

Every step is the proxy's own code: routing rules are compiled and evaluated as LiveSnapshot compiles and
evaluates them (and LiveSnapshot.route picks the config), each policy rule is run alone through a one-rule
RuleBook to say whether it matches, and the final answer is the session's ConnectionPolicy decision.
"""

from __future__ import annotations

import dataclasses
import datetime
from dataclasses import dataclass, field

from proxy.errors import PgwardenError
from proxy.policy import timefns
from proxy.policy.cel import ConditionError, compile_condition
from proxy.policy.classify import classify
from proxy.policy.compile import CompiledRule
from proxy.policy.engine import ConnectionPolicy, Decision, RuleBook, WouldDeny
from proxy.routing import ConnectRequest, LiveSnapshot
from proxy.snapshot import Condition, Snapshot
from reconciler.access import FUNCTION_CALL_OID, decided_by, identity_session


@dataclass(slots=True)
class Explanation:
    """The lines to print and the final answer (None when there was no query to decide)."""

    lines: list[str] = field(default_factory=list)
    is_connected: bool = False
    is_allowed: bool | None = None


def condition_text(c: Condition) -> str:
    """A condition tree in one line, the way it is written."""
    if c.match is not None:
        return c.match
    if c.not_ is not None:
        return f"not: {c.not_}"
    if c.match_any:
        return "matchAny: true"
    for word, children in (("all", c.all_of), ("any", c.any_of), ("none", c.none_of)):
        if children is not None:
            return f"{word} of [" + "; ".join(condition_text(child) for child in children) + "]"
    return "(empty: never matches)"


def explain(snapshot: Snapshot, *, user: str, service: str, aal: str = "AAL1", query: str | None = None,
            is_function_call: bool = False, at: datetime.datetime | None = None) -> Explanation:
    """Explain connecting as `user` to `service` (dbname=SERVICE, a token session) and running `query`."""
    at = at or datetime.datetime.now(datetime.UTC)
    with timefns.fixed_clock(at):
        return _explain(LiveSnapshot(snapshot, 0), user, service, aal, query, is_function_call, at)


def _explain(live: LiveSnapshot, user_name: str, service_name: str, aal: str, query: str | None,
             is_function_call: bool, at: datetime.datetime) -> Explanation:
    out = Explanation()
    say = out.lines.append
    session = identity_session(user_name, aal, at)
    method = "passkey login" if aal == "AAL2" else "token session"
    say(f"user {user_name} · service {service_name} · {aal} ({method}) · at {at.isoformat()}")
    request = ConnectRequest(user=user_name, database="")
    try:
        user, service = live.user(user_name), live.service(service_name)
    except PgwardenError as exc:
        say(f"refused: {exc.message}")
        return out
    book = live.policies.book(user, service)
    say("")
    say("connect: attached policy rules in evaluation order" if book.rules else "connect: no policy attached")
    ctx = live.context(user, service, request, session)
    shadow = live.decide_connect(user, service, request, session).would_deny
    for i, rule in enumerate(book.rules, 1):
        alone = live.policies.decide(_alone(rule), ctx)
        say(f"  {i}. {_rule_line(rule)}: {_match_words(alone.policy, alone.reason)}{_shadow_mark(rule, shadow)}")
    say("")
    say("routing (rules in order, first match wins):" if service.rules else "routing: no rules")
    activation = live.activation(user, service, request, session)
    first = ""
    for i, routing_rule in enumerate(service.rules, 1):
        label = routing_rule.name or str(i)
        if first:
            say(f"  rule {label} → {routing_rule.config_name}: {condition_text(routing_rule.condition)}: not tried "
                f"(rule {first} matched)")
            continue
        try:
            matched = "MATCH" if compile_condition(routing_rule.condition).evaluate(activation) else "no match"
        except ConditionError as exc:
            matched = f"failed to evaluate ({exc.reason}): the connection is refused"
        first = label if matched == "MATCH" else ""
        say(f"  rule {label} → {routing_rule.config_name}: {condition_text(routing_rule.condition)}: {matched}")
    try:
        route = live.route(user_name, service_name, request, identity_session=session)
    except PgwardenError as exc:
        say(f"refused: {exc.message}")
        return out
    out.is_connected = True
    mode = route.config.postgres.authorization_mode
    say(f"config {route.config.name} ({route.reason}): upstream role {route.upstream_user}, "
        f"database {route.upstream_database or '(as requested)'}, authorization mode {mode}")
    if query is None and not is_function_call:
        return out
    say("")
    if is_function_call:
        say(f"request: FunctionCall (OID {FUNCTION_CALL_OID}): kinds [FUNCTION CALL], readOnly false")
    else:
        c = classify(query or "")
        say(f"query: {query}")
        say(f"  kinds [{', '.join(c.kinds)}] · tables [{', '.join(c.tables)}] · functions "
            f"[{', '.join(c.functions)}] · readOnly {str(c.is_read_only).lower()}")
    policy = live.connection_policy(user, service, session, config=route.config)
    if policy is None:
        out.is_allowed = True
        say(f"ALLOW: not checked per statement (config {route.config.name} has authorization mode {mode})")
        return out
    base = live.context(user, service, None, session)
    decision = _decide(policy, query, is_function_call)
    say("  rules in evaluation order (lower priority first, DENY before ALLOW at equal priority):")
    decided = False
    shadow = decision.would_deny
    for i, rule in enumerate(book.rules, 1):
        alone = _decide(ConnectionPolicy(_alone(rule), base, 0), query, is_function_call)
        mark = " (not reached)" if decided else ""
        if not decided and not rule.is_audit and (rule.policy, rule.rule) == (decision.policy, decision.rule):
            mark, decided = "  ← decides", True
        else:
            mark = _shadow_mark(rule, shadow) or mark
        say(f"  {i}. {_rule_line(rule)}: {_match_words(alone.policy, alone.reason)}{mark}")
    if not decided and not decision.rule:
        say("  no rule matched: denied by default" if not decision.allowed else f"  {decision.reason}")
    out.is_allowed = decision.allowed
    say(f"{'ALLOW' if decision.allowed else 'DENY'} ({decided_by(decision)})")
    return out


def _decide(policy: ConnectionPolicy, query: str | None, is_function_call: bool) -> Decision:
    return policy.decide_function_call(FUNCTION_CALL_OID) if is_function_call else policy.decide_query(query or "")


def _alone(rule: CompiledRule) -> RuleBook:
    """A book of this rule only, as ENFORCE: whether it matches, whatever its Policy's enforcement."""
    return RuleBook((dataclasses.replace(rule, is_audit=False),))


def _rule_line(rule: CompiledRule) -> str:
    audit = ", AUDIT: never blocks" if rule.is_audit else ""
    return f"{rule.policy}/{rule.rule} ({rule.effect}, priority {rule.priority}{audit})"


def _shadow_mark(rule: CompiledRule, shadow: WouldDeny | None) -> str:
    """`  ← would deny (AUDIT)` on the AUDIT rule that would have denied what the ENFORCE rules allowed."""
    if shadow is not None and rule.is_audit and (rule.policy, rule.rule) == (shadow.policy, shadow.rule):
        return "  ← would deny (AUDIT)"
    return ""


def _match_words(policy: str, reason: str) -> str:
    # A one-rule book answers with that rule when it matched, by default otherwise, or names the failure.
    if "failed to evaluate" in reason:
        return reason.split(": ", 1)[-1]
    return "matches" if policy else "does not match"

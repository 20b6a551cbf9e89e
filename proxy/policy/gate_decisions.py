"""What the request gate decides with, and how a denial reads: the decider Protocol, fail-closed stand-ins, the
gate's own refusals, and the message and HINT a denied client sees."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from proxy.policy.railgate import RULE_PREFIX as RAIL_RULE_PREFIX

DENIAL_HINT = "pgwarden checks every query against the service's policies; ask an administrator for access"


def explain_hint(user: str, service: str, aal: str = "AAL1") -> str:
    """The HINT of a policy denial: the command that shows which rule decided. The statement is not echoed
    (it may be long or hold a literal the client would not want in an error log)."""
    level = "" if aal == "AAL1" else f" --aal {aal}"
    return (f"see which policy rule decided: pgwarden explain --user {user} --service {service}{level} "
            "--query '<your statement>'")


class DecisionLike(Protocol):
    """proxy.policy.engine.Decision, as the gate reads it."""

    @property
    def allowed(self) -> bool: ...
    @property
    def policy(self) -> str: ...
    @property
    def rule(self) -> str: ...
    @property
    def reason(self) -> str: ...


class RequestDecider(Protocol):
    """What the gate asks to decide a request: engine.ConnectionPolicy, or DenyAll; `generation` changes on reload."""

    @property
    def generation(self) -> int: ...

    def decide_query(self, sql: str) -> DecisionLike: ...
    def decide_parse(self, name: str, sql: str) -> DecisionLike: ...
    def decide_function_call(self, oid: int) -> DecisionLike: ...


@dataclass(frozen=True, slots=True)
class FailedDecision:
    """Fail closed: a policy that raised while deciding denies the request."""

    allowed: bool
    policy: str
    rule: str
    reason: str


@dataclass(frozen=True, slots=True)
class GateDenial:
    """A request the gate refuses itself, before any policy: text it cannot read as the server would, or a
    name it cannot vouch for. Logged DENIED with this reason; the client sees `... denied: <reason>`."""

    reason: str
    allowed: bool = False
    policy: str = ""
    rule: str = ""


class DenyAll:
    """Stands in for a session's policy when the new snapshot cannot build one (the session is ending)."""

    def __init__(self, reason: str, generation: int) -> None:
        self.generation = generation
        self._decision = FailedDecision(False, "", "", reason)

    def decide_query(self, sql: str) -> DecisionLike:
        return self._decision

    def decide_parse(self, name: str, sql: str) -> DecisionLike:
        return self._decision

    def decide_function_call(self, oid: int) -> DecisionLike:
        return self._decision


def denial_message(what: str, decision: DecisionLike) -> str:
    if decision.rule.startswith(RAIL_RULE_PREFIX):
        return decision.reason  # a guard rail's refusal names the statement and the rail itself
    if isinstance(decision, GateDenial):
        return f"{what} denied: {decision.reason}"
    if decision.policy:
        return f'{what} denied by policy "{decision.policy}", rule "{decision.rule}"'
    return f"{what} denied: no policy rule allows it"

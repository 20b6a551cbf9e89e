"""Re-decide an access log's requests under another revision's policies: what a policy change would change.

Each QUERY, PARSE and FUNCTION_CALL record is decided again the way `pgwarden access` and `explain` decide
offline (LiveSnapshot.route, then the connection's ConnectionPolicy), with the session facts the record holds
(user, service, AAL and login method, the connect request of its SESSION_START) at the instant it was logged.
Records that cannot be re-decided faithfully are counted as skipped, with the reason.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from identity.store.base import AssuranceLevel, AuthMethod, IdentitySession
from proxy.errors import PgwardenError
from proxy.policy import timefns
from proxy.policy.engine import DEFAULT_DENY, ConnectionPolicy
from proxy.policy.railgate import RULE_PREFIX
from proxy.routing import ConnectRequest, LiveSnapshot
from proxy.snapshot import Snapshot
from reconciler.access import decided_by
from reconciler.verdicts import ALLOW, DENY

REPLAYED_KINDS = {"QUERY": "query", "PARSE": "parse", "FUNCTION_CALL": "functionCall"}
DEFAULT_EXAMPLES = 3
# Why a record was not re-decided, as the report says it.
NO_TEXT = "no query text (logged with --log-queries none or normalized)"
GATE = "decided by the gate itself, not a policy (text it could not read as the server would, or a stale name)"
RECHECK = "BIND/EXECUTE re-checks after a reload (their statement's PARSE or QUERY is replayed)"
UNREADABLE = "not an access-log record (unreadable JSON or another shape)"


@dataclass(frozen=True, slots=True, kw_only=True)
class Example:
    at: str
    kind: str
    text: str  # the statement (or `FunctionCall OID n`), as logged
    before: str  # `ALLOW (policy/rule)`
    after: str


@dataclass(slots=True)
class PairReport:
    """One user × service: how many requests were replayed and which changed."""

    user: str
    service: str
    replayed: int = 0
    to_deny: int = 0
    to_allow: int = 0
    to_deny_examples: list[Example] = field(default_factory=list)
    to_allow_examples: list[Example] = field(default_factory=list)


@dataclass(slots=True)
class Replay:
    pairs: dict[tuple[str, str], PairReport] = field(default_factory=dict)
    records: int = 0  # lines read
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    assumed_aal1: int = 0  # replayed without session facts in the log (older pgwarden): as an AAL1 token

    @property
    def replayed(self) -> int:
        return sum(p.replayed for p in self.pairs.values())

    @property
    def to_deny(self) -> int:
        return sum(p.to_deny for p in self.pairs.values())

    @property
    def to_allow(self) -> int:
        return sum(p.to_allow for p in self.pairs.values())

    @property
    def is_changed(self) -> bool:
        return bool(self.to_deny or self.to_allow)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def records(lines: Iterable[str]) -> Iterator[dict[str, Any] | None]:
    """Each non-empty line as a JSON object (None where it is not one)."""
    for line in lines:
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError:
            yield None
            continue
        yield value if isinstance(value, dict) else None


class _Decider:
    """Routes and SessionPolicies of one snapshot, reused across records of the same session facts."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.live = LiveSnapshot(snapshot, 0)
        self._policies: dict[tuple[Any, ...], ConnectionPolicy | None] = {}

    def decide(self, common: dict[str, Any], request: ConnectRequest, at: datetime.datetime, kind: str,
               postgres: dict[str, Any]) -> tuple[str, str]:
        """(ALLOW|DENY, by) for one request, under the clock at `at`."""
        user, service = str(common.get("user", "")), str(common.get("service", ""))
        aal = AssuranceLevel[common["aal"]] if common.get("aal") in AssuranceLevel.__members__ else AssuranceLevel.AAL1
        method = AuthMethod(common["authMethod"]) if common.get("authMethod") in set(AuthMethod) else AuthMethod.TOKEN
        idp = str(common.get("identityProvider") or "pgwarden")
        session = IdentitySession(id=f"replay-{common.get('connectionID', '')}", user=user, idp=idp, method=method,
                                  aal=aal, created_at=at, expires_at=at + datetime.timedelta(days=1), last_seen_at=at)
        with timefns.fixed_clock(at):
            try:
                route = self.live.route(user, service, request, identity_session=session)
            except PgwardenError as exc:
                return DENY, f"cannot connect: {exc.message}"
            key = (user, service, route.config.name, aal, method, idp)
            if key not in self._policies:
                self._policies[key] = self.live.connection_policy(self.live.user(user), route.service, session,
                                                               config=route.config)
            policy = self._policies[key]
            if policy is None:
                return ALLOW, f"not checked per statement (config {route.config.name}: authorization mode NONE)"
            detail = postgres.get(REPLAYED_KINDS[kind]) or {}
            if kind == "FUNCTION_CALL":
                decision = policy.decide_function_call(int(detail.get("oid", 0)))
            elif kind == "PARSE":
                decision = policy.decide_parse(str(detail.get("name") or ""), str(detail["query"]))
            else:
                decision = policy.decide_query(str(detail["query"]))
        return (ALLOW if decision.allowed else DENY), decided_by(decision)


def logged_outcome(postgres: dict[str, Any]) -> tuple[str, str] | None:
    """What the proxy did: (ALLOW|DENY, by); None when the gate decided itself (replay cannot redo that)."""
    decision = postgres.get("decision")
    if not isinstance(decision, dict):
        return ALLOW, "not checked per statement"
    policy, rule, reason = (str(decision.get(k) or "") for k in ("policy", "rule", "reason"))
    is_allowed = decision.get("status") == "ALLOWED"
    if not is_allowed and not policy and not rule.startswith(RULE_PREFIX) and reason != DEFAULT_DENY.reason:
        return None
    if policy or rule:
        by = f"{policy}/{rule}" if policy else rule
    else:
        by = "no rule matched: denied by default" if not is_allowed else reason or "allowed"
    would = decision.get("wouldDeny")
    if isinstance(would, dict):
        by += f"; would deny (AUDIT): {would.get('policy')}/{would.get('rule')}"
    return (ALLOW if is_allowed else DENY), by


def replay(lines: Iterable[str], snapshot: Snapshot, *, examples: int = DEFAULT_EXAMPLES) -> Replay:
    """Re-decide every replayable record of an access log under `snapshot` (keyless is enough)."""
    out = Replay()
    decider = _Decider(snapshot)
    connects: dict[str, ConnectRequest] = {}  # connectionID -> the client's startup request
    for record in records(lines):
        out.records += 1
        try:
            entry, created = record["entry"], record["metadata"]["createdAt"]  # type: ignore[index]
            common, postgres = entry["common"], entry["info"]["postgres"]
            kind = postgres["type"]
        except (KeyError, TypeError):
            out.skip(UNREADABLE)
            continue
        if kind == "SESSION_START" and isinstance(postgres.get("start"), dict):
            start = postgres["start"]
            connects[str(common.get("connectionID"))] = ConnectRequest(
                user=str(start.get("requestedUser") or common.get("user", "")),
                database=str(start.get("requestedDatabase") or ""),
                application_name=str(start.get("applicationName") or ""))
            continue
        if kind in ("BIND", "EXECUTE"):
            out.skip(RECHECK)
            continue
        if kind not in REPLAYED_KINDS:
            continue  # SESSION_END and other events: not requests
        detail = postgres.get(REPLAYED_KINDS[kind])
        has_text = isinstance(detail, dict) and isinstance(detail.get("query"), str)
        if kind != "FUNCTION_CALL" and (not has_text or common.get("queryText")):
            out.skip(NO_TEXT)
            continue
        before = logged_outcome(postgres)
        if before is None:
            out.skip(GATE)
            continue
        try:
            at = datetime.datetime.fromisoformat(str(created))
        except ValueError:
            out.skip(UNREADABLE)
            continue
        if "aal" not in common:
            out.assumed_aal1 += 1
        request = connects.get(str(common.get("connectionID")),
                               ConnectRequest(user=str(common.get("user", "")), database=""))
        after = decider.decide(common, request, at, kind, postgres)
        pair = out.pairs.setdefault((str(common.get("user")), str(common.get("service"))),
                                    PairReport(str(common.get("user")), str(common.get("service"))))
        pair.replayed += 1
        if before[0] == after[0]:
            continue
        text = f"FunctionCall OID {detail.get('oid')}" if kind == "FUNCTION_CALL" else str(detail["query"])
        example = Example(at=str(created), kind=kind, text=text, before=f"{before[0]} ({before[1]})",
                          after=f"{after[0]} ({after[1]})")
        if after[0] == DENY:
            pair.to_deny += 1
            if len(pair.to_deny_examples) < examples:
                pair.to_deny_examples.append(example)
        else:
            pair.to_allow += 1
            if len(pair.to_allow_examples) < examples:
                pair.to_allow_examples.append(example)
    return out

"""The effective-access matrix of a revision: for each User × Service, connect, config and statement classes.

Offline and keyless: Secrets are replaced by a placeholder before the build, so no value exists in here.
Every answer comes from the proxy's own machinery (LiveSnapshot.route, ConnectionPolicy.decide_*), evaluated
under variants of what a rule may read besides the repository: the session (AAL1 token, AAL2 passkey or TOTP), the
clock (each hour of one week in the rules' time zone) and the statement text (a few statements per class).
A cell whose outcome differs between variants is CONDITIONAL, and `access_words` says on which input.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from identity.store.base import AssuranceLevel, AuthMethod, IdentitySession
from proxy import grants
from proxy.errors import PgwardenError
from proxy.policy import timefns
from proxy.policy.cel import ConditionError, to_cel
from proxy.policy.compile import Node, compile_node
from proxy.policy.engine import ConnectionPolicy, Decision
from proxy.routing import ConnectRequest, LiveSnapshot, Route
from proxy.snapshot import Condition, Service, Snapshot, User
from proxy.snapshot_wire import from_wire
from reconciler import build, load
from reconciler.load import Document
from reconciler.verdicts import ALLOW, DENY, REFUSED, Outcome, Verdict, summarize

# One statement class: its name and the statements that stand for it. The first is the representative;
# the others are text variants whose outcomes, when they differ from it, make the class conditional.
STATEMENT_CLASSES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("read", ("SELECT * FROM access_probe", "SELECT * FROM other_schema.access_probe")),
    ("write", ("INSERT INTO access_probe VALUES (1)", "UPDATE access_probe SET x = 2",
               "DELETE FROM access_probe", "MERGE INTO access_probe t USING (SELECT 1 AS x) s ON t.x = s.x "
               "WHEN MATCHED THEN DELETE")),
    ("ddl", ("CREATE TABLE access_probe_new (x int)", "ALTER TABLE access_probe ADD COLUMN y int")),
    ("drop", ("DROP TABLE access_probe", "TRUNCATE access_probe")),
    ("copy-from", ("COPY access_probe FROM STDIN",)),
    ("copy-to", ("COPY access_probe TO STDOUT",)),
    ("function-call", ("",)),  # a FunctionCall message: decided by OID, no text
)
FUNCTION_CALL_OID = 1299  # pg_catalog.now(): any OID stands for all, the engine decides a FunctionCall alike
CLASS_NAMES = tuple(name for name, _ in STATEMENT_CLASSES)
# The sessions every answer is decided under: an AAL1 token, an AAL2 passkey login, and an AAL2 login by a
# second factor (TOTP), so that a rule reading the method is told apart from one reading the level.
SESSIONS = (("AAL1", AuthMethod.TOKEN, AssuranceLevel.AAL1), ("AAL2", AuthMethod.PASSKEY, AssuranceLevel.AAL2),
            ("AAL2-totp", AuthMethod.TOTP, AssuranceLevel.AAL2))
# Every Secret's value during review: long enough for the checks a Credential's client secret must pass.
REVIEW_PLACEHOLDER = "(not read: offline review holds no secret values)"


@dataclass(frozen=True, slots=True, kw_only=True)
class Cell:
    user: str
    service: str
    connect: Verdict
    statements: dict[str, Verdict] = field(default_factory=dict)
    # The windowed grants this cell may rest on, with their state at the matrix's instant: a changed window
    # is an access change even when today's answer is the same.
    grants: tuple[GrantNote, ...] = ()


@dataclass(frozen=True, slots=True)
class GrantNote:
    """A windowed grant as review shows it: `group "oncall" of user "bob"`, `until …`, `active`."""

    label: str
    window: str
    state: str

    def words(self) -> str:
        return f"{self.label} {self.window}: {self.state}"


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessMatrix:
    zone: str  # the time zone the week was sampled in
    samples: tuple[datetime.datetime, ...]  # the clock instants; hour h of a timed cell's outcomes is samples[h]
    cells: tuple[Cell, ...]

    def cell(self, user: str, service: str) -> Cell | None:
        return next((c for c in self.cells if c.user == user and c.service == service), None)


# --- building a snapshot without keys --------------------------------------------------------------


def keyless_snapshot(documents: Sequence[Document], *, revision: str = "review", source: str = "") -> Snapshot:
    """The Snapshot of reviewed documents with every Secret's value a placeholder (encrypted or not)."""
    stand_ins = []
    for doc in documents:
        if doc.kind == "Secret":
            body: dict[str, Any] = {k: v for k, v in doc.body.items() if k != "sops"}
            body["data"] = {"value": REVIEW_PLACEHOLDER}
            doc = load.with_body(doc, body)
        stand_ins.append(doc)
    return build.build_snapshot(stand_ins, revision=revision, source=source)


def keyless_from_wire(wire: dict[str, Any]) -> Snapshot:
    """A running proxy's snapshot as its admin API shows it (Secrets as fingerprints), values as placeholders.

    Credentials (workload client secrets, shown as fingerprints too) are left out: no access decision reads them.
    """
    secrets = {name: {"value": REVIEW_PLACEHOLDER} for name in wire.get("secrets", {})}
    return from_wire({**wire, "secrets": secrets, "credentials": {}})


# --- the variants --------------------------------------------------------------------------------


def identity_session(user: str, label: str, at: datetime.datetime) -> IdentitySession:
    """The identity Session a token of this kind would carry (`pgwarden token issue`, or a passkey login)."""
    _, method, aal = next(s for s in SESSIONS if s[0] == label)
    return IdentitySession(id=f"access-{label.lower()}", user=user, idp="pgwarden", method=method, aal=aal,
                           created_at=at, expires_at=at + datetime.timedelta(days=3650), last_seen_at=at)


def rules_zone(snapshot: Snapshot) -> str:
    """The time zone the Policies name (in attrs or as a literal), else UTC: the week is sampled in it."""
    found: list[str] = []
    for policy in snapshot.policies.values():
        _zone_names(policy.attrs, found)
        for rule in policy.rules:
            for text in rule.condition.expressions():
                for part in text.split('"')[1::2]:
                    _zone_names(part, found)
    return found[0] if found else "UTC"


def _zone_names(value: Any, found: list[str]) -> None:
    if isinstance(value, dict):
        for item in value.values():
            _zone_names(item, found)
    elif isinstance(value, list | tuple):
        for item in value:
            _zone_names(item, found)
    elif isinstance(value, str) and "/" in value and value not in found:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            return
        found.append(value)


def week_samples(zone: str, reference: datetime.date) -> list[datetime.datetime]:
    """Half past each local hour, Monday 00:30 to Sunday 23:30, of the week holding `reference`, in `zone`."""
    tz = ZoneInfo(zone)
    monday = reference - datetime.timedelta(days=reference.weekday())
    return [datetime.datetime.combine(monday + datetime.timedelta(days=d), datetime.time(h, 30), tz)
            for d in range(7) for h in range(24)]


def hour_classes(live: LiveSnapshot, user: User, service: Service, session: IdentitySession,
                 samples: Sequence[datetime.datetime]) -> list[int] | None:
    """For each sample, the first sample at which every clock-reading condition came out the same; None when
    no condition of this cell reads the clock.

    A condition leaf that reads the clock and, besides, only session-constant values (the usual change window)
    has one value per instant for the whole cell, so equal leaf values mean equal decisions: the cell is then
    decided at one instant per class. A leaf that also reads the request is sampled at every instant.
    """
    book = live.policies.book(user, service)
    trees = [(rule.condition, rule.attrs) for rule in book.rules]
    trees += [(routing_node(rule.condition), None) for rule in service.rules]
    leaves = [(leaf, attrs) for tree, attrs in trees for leaf in _leaves(tree) if leaf.reads.is_time]
    if not leaves:
        return None
    if any(leaf.reads.fields or any(not p or p[0] == "request" for p in leaf.reads.paths) for leaf, _ in leaves):
        return list(range(len(samples)))
    ctx = to_cel(live.context(user, service, ConnectRequest(user=user.name, database=""), session))
    first: dict[tuple[Any, ...], int] = {}
    classes = []
    for i, at in enumerate(samples):
        with timefns.fixed_clock(at):
            values = tuple(_leaf_value(leaf, {"ctx": ctx, "attrs": attrs}) for leaf, attrs in leaves)
        classes.append(first.setdefault(values, i))
    return classes


@functools.lru_cache(maxsize=4096)
def routing_node(condition: Condition) -> Node:
    """A routing rule's condition compiled as policy conditions are, for what it reads (cached: CEL compiles slowly)."""
    return compile_node(condition)


def reads_session(live: LiveSnapshot, user: User, service: Service) -> bool:
    """Whether a routing rule or an attached policy rule reads ctx.session (or ctx whole)."""
    paths = set(live.policies.book(user, service).reads.paths)
    for rule in service.rules:
        paths |= routing_node(rule.condition).reads.paths
    return any(not p or p[0] == "session" for p in paths)


def _leaves(node: Node) -> list[Node]:
    if not node.children:
        return [node] if node.expression is not None else []
    return [leaf for child in node.children for leaf in _leaves(child)]


def _leaf_value(leaf: Node, activation: dict[str, Any]) -> Any:
    assert leaf.expression is not None
    try:
        return bool(leaf.expression.evaluate(activation))
    except ConditionError as exc:
        return ("error", exc.reason)


# --- evaluation ----------------------------------------------------------------------------------


def connect_outcome(route: Route | PgwardenError) -> Outcome:
    if isinstance(route, PgwardenError):
        return Outcome(REFUSED, route.message)
    return Outcome(ALLOW, route.reason, route.config.name, route.upstream_user, route.upstream_database)


def decide_route(live: LiveSnapshot, user: str, service: str, session: IdentitySession) -> Route | PgwardenError:
    """LiveSnapshot.route as a client connecting with dbname=SERVICE and a token would meet it."""
    try:
        return live.route(user, service, ConnectRequest(user=user, database=""), identity_session=session)
    except PgwardenError as exc:
        return exc


def decide_statement(policy: ConnectionPolicy | None, sql: str, is_function_call: bool) -> Outcome:
    """The gate's decision for one statement (or FunctionCall) in a session of this policy."""
    if policy is None:
        return Outcome(ALLOW, "not checked per statement (authorization mode NONE)")
    decision = policy.decide_function_call(FUNCTION_CALL_OID) if is_function_call else policy.decide_query(sql)
    return Outcome(ALLOW if decision.allowed else DENY, decided_by(decision))


def decided_by(decision: Decision) -> str:
    """`policy/rule`, or the default in words; then the AUDIT rule that would deny it, if one would."""
    if decision.policy or decision.rule:
        words = f"{decision.policy}/{decision.rule}" if decision.policy else decision.rule
    else:
        words = "no rule matched: denied by default" if not decision.allowed else decision.reason
    if decision.would_deny is not None:
        words += f"; would deny (AUDIT): {decision.would_deny.policy}/{decision.would_deny.rule}"
    return words


def evaluate_cell(live: LiveSnapshot, user: User, service: Service, samples: Sequence[datetime.datetime],
                  zone: str) -> Cell:
    """The cell for one User × Service, under every session, clock and text variant."""
    connects: dict[tuple[str, int, int], Outcome] = {}
    statements: dict[str, dict[tuple[str, int, int], Outcome]] = {name: {} for name in CLASS_NAMES}
    hours = 1
    is_session_read = reads_session(live, user, service)
    for label, _, _ in SESSIONS:
        if not is_session_read and label != SESSIONS[0][0]:
            # No rule reads ctx.session: every session decides alike (the proxy's answer does not depend on it).
            for outcomes in (connects, *statements.values()):
                outcomes.update({(label, t, v): o for (_, t, v), o in list(outcomes.items())})
            continue
        session = identity_session(user.name, label, samples[0])
        classes = hour_classes(live, user, service, session, samples) or [0]
        hours = len(classes)
        policies: dict[str, ConnectionPolicy | None] = {}
        for t, representative in enumerate(classes):
            if representative != t:  # the same clock-reading outcomes as an hour already decided
                connects[(label, t, 0)] = connects[(label, representative, 0)]
                for name, variants in STATEMENT_CLASSES:
                    for v in range(len(variants)):
                        statements[name][(label, t, v)] = statements[name][(label, representative, v)]
                continue
            with timefns.fixed_clock(samples[t]):
                route = decide_route(live, user.name, service.name, session)
                connects[(label, t, 0)] = connect_outcome(route)
                for name, variants in STATEMENT_CLASSES:
                    for v, sql in enumerate(variants):
                        if isinstance(route, PgwardenError):
                            statements[name][(label, t, v)] = Outcome(REFUSED, "cannot connect")
                            continue
                        if route.config.name not in policies:
                            policies[route.config.name] = live.connection_policy(user, service, session,
                                                                              config=route.config)
                        policy = policies[route.config.name]
                        statements[name][(label, t, v)] = decide_statement(policy, sql, name == "function-call")
    return Cell(user=user.name, service=service.name, connect=summarize(connects, zone, hours, ("",)),
                statements={name: summarize(statements[name], zone, hours, variants)
                            for name, variants in STATEMENT_CLASSES})


def access_matrix(snapshot: Snapshot, *, users: Iterable[str] | None = None, services: Iterable[str] | None = None,
                  pairs: Collection[tuple[str, str]] | None = None,
                  reference: datetime.date | None = None, at: datetime.datetime | None = None) -> AccessMatrix:
    """The matrix of a keyless snapshot: every User × Service, or only some users, services or (user, service)
    pairs. `reference` picks the week the clock is sampled in (default: this week); grant windows are judged
    at `at` (default: now), as a proxy compiling the snapshot then would."""
    live = LiveSnapshot(snapshot, 0, at=at)
    zone = rules_zone(snapshot)
    samples = week_samples(zone, reference or datetime.datetime.now(datetime.UTC).date())
    wanted_users = sorted(snapshot.users.keys() & set(users) if users is not None else snapshot.users)
    wanted_services = sorted(snapshot.services.keys() & set(services) if services is not None else snapshot.services)
    if pairs is not None:
        chosen = sorted(p for p in pairs if p[0] in snapshot.users and p[1] in snapshot.services)
    else:
        chosen = [(u, s) for u in wanted_users for s in wanted_services]
    cells = [dataclasses.replace(evaluate_cell(live, live.view.users[u], live.view.services[s], samples, zone),
                                 grants=grant_words(live, u, s)) for u, s in chosen]
    return AccessMatrix(zone=zone, samples=tuple(samples), cells=tuple(cells))


def grant_words(live: LiveSnapshot, user: str, service: str) -> tuple[GrantNote, ...]:
    """The windowed grants of this pair (grants.relevant), with their state at `live.at`."""
    found = grants.relevant(live.grants, live.snapshot, user, service)
    return tuple(GrantNote(g.label(), g.window_words(), g.state_at(live.at)) for g in found)

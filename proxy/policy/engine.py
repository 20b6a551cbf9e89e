"""The decision engine: which attached Policy rule decides a connection or a request, fast.

Rules from the Service's, the user's Groups' and the User's `authorization` are ordered once per
(user, service) and snapshot (`PolicySet`). A `ConnectionPolicy`, one per client connection, evaluates the parts
of each condition that read only data constant for the connection (ctx.user, ctx.groups, ctx.service, and
ctx.session, the identity session) once, and caches the outcome of the rest keyed by exactly the request
attributes the rules read (plus the second when a rule calls `now()`). The cache is shared by the connections of
one user on one service whose constant parts came out the same, so a repeated query shape costs a classification
lookup and a dict lookup. Which session: ctx.session is the identity session (identity/sessions.py);
"session-constant" below means constant for the client connection (proxy/session.py's ClientSession).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from celpy import celtypes

from proxy.policy import timefns
from proxy.policy.cel import ConditionError, to_cel
from proxy.policy.cel_cost import decision_budget
from proxy.policy.classify import Classification, classify
from proxy.policy.compile import ALL, CompiledRule, Node, Reads, compile_policy, ordered
from proxy.policy.railgate import RULE_PREFIX, RailDecision, RailGate
from proxy.snapshot import (
    AuthorizationMode,
    Group,
    Policy,
    PolicyEffect,
    PolicyEnforcement,
    Service,
    ServiceConfig,
    Snapshot,
    User,
)

MAX_CACHED_DECISIONS = 4096  # per (user, service) rule book; oldest shapes are dropped first


@dataclass(frozen=True, slots=True)
class WouldDeny:
    """The AUDIT rule that would have denied an allowed request, had its Policy been ENFORCE."""

    policy: str
    rule: str


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one decision and the policy rule that made it."""

    allowed: bool
    policy: str  # deciding policy name ("" for default deny / no policy)
    rule: str  # deciding rule name ("" for default deny / no policy)
    reason: str  # one human line
    would_deny: WouldDeny | None = None  # allowed, but an AUDIT Policy would deny it (cached with the decision)


NO_POLICY = Decision(True, "", "", "no policy applies")
DEFAULT_DENY = Decision(False, "", "", "no rule matched: denied by default")


def _decided(rule: CompiledRule) -> Decision:
    allowed = rule.effect == PolicyEffect.ALLOW
    verb = "allowed" if allowed else "denied"
    return Decision(allowed, rule.policy, rule.rule, f'{verb} by policy "{rule.policy}" rule "{rule.rule}"')


def _failed(rule: CompiledRule, exc: ConditionError) -> Decision:
    # Fail closed. The reason names no operand values: those may hold query text or attrs.
    return Decision(False, rule.policy, rule.rule,
                    f'denied: policy "{rule.policy}" rule "{rule.rule}" failed to evaluate ({exc.reason})')


def first_match(rules: tuple[CompiledRule, ...], ctx: Any, constants: Mapping[int, Any] | None,
                default: Decision = DEFAULT_DENY) -> Decision:
    """The rules in order, first match decides; AUDIT rules never decide.

    The ENFORCE answer is the one the rules give with every AUDIT rule left out, so an AUDIT Policy cannot change
    it, in either direction. The AUDIT answer is the one they would give were the AUDIT Policies ENFORCE: when an
    AUDIT rule matches (or fails to evaluate) before the deciding rule, that is it; when it denies and the ENFORCE
    answer allows, the Decision carries `would_deny`. Later AUDIT rules are then skipped: they could not decide.
    """
    shadow: Decision | None = None
    for rule in rules:
        if rule.is_audit and shadow is not None:
            continue
        try:
            matched = _evaluate(rule.condition, {"ctx": ctx, "attrs": rule.attrs}, constants)
        except ConditionError as exc:
            if rule.is_audit:
                shadow = _failed(rule, exc)
                continue
            return _audited(_failed(rule, exc), shadow)
        if matched:
            if rule.is_audit:
                shadow = _decided(rule)
                continue
            return _audited(_decided(rule), shadow)
    return _audited(default, shadow)


def _audited(decision: Decision, shadow: Decision | None) -> Decision:
    if shadow is None or shadow.allowed or not decision.allowed:
        return decision
    return Decision(True, decision.policy, decision.rule, decision.reason, WouldDeny(shadow.policy, shadow.rule))


class _Failed:
    """A session-constant node whose evaluation failed: raises again wherever it is reached."""

    __slots__ = ("error",)

    def __init__(self, error: ConditionError) -> None:
        self.error = error


# --- request keys ---------------------------------------------------------------------------------

_CLASSIFIED: dict[str, Callable[[Classification], Any]] = {
    "kinds": lambda c: c.kinds, "tables": lambda c: c.tables, "functions": lambda c: c.functions,
    "readOnly": lambda c: c.is_read_only, "fingerprint": lambda c: c.fingerprint,
}
_COPY: dict[str, Callable[[Classification], Any]] = {
    "direction": lambda c: c.copy_direction, "table": lambda c: c.copy_table,
}
KeyPart = Callable[[Classification, str, str], Any]


def _classified_part(getter: Callable[[Classification], Any]) -> KeyPart:
    return lambda c, _sql, _name: getter(c)


def _name_part(_c: Classification, _sql: str, name: str) -> str:
    return name


def _key_parts(fields: frozenset[tuple[str, str]], own: str) -> tuple[KeyPart, ...] | None:
    """Getters (classification, sql, name) for what the rules read of a Query ("query") or Parse ("parse")
    request; None when the text itself must be the key."""
    parts: dict[str, KeyPart] = {}
    for kind, field in fields:
        if (kind, field) == ALL or (kind in (own, "statement") and field in ("*", "query")):
            return None
        if kind in (own, "statement") and field in _CLASSIFIED:
            parts[field] = _classified_part(_CLASSIFIED[field])
        elif kind == own == "parse" and field == "name":
            parts["name"] = _name_part
        elif kind in (own, "statement") and field != "has":
            return None  # a field this key does not know how to derive: the text decides (never too coarse)
        elif kind == "copy":
            for name, getter in _COPY.items():
                if field in ("*", name):
                    parts[f"copy.{name}"] = _classified_part(getter)
    return tuple(parts[k] for k in sorted(parts))


class RuleBook:
    """The ordered rules for one (user, service) under one snapshot, and their shared decision cache."""

    def __init__(self, rules: tuple[CompiledRule, ...]) -> None:
        self.rules = rules
        reads = Reads(frozenset(), False)
        for rule in rules:
            reads = reads | rule.condition.reads
        self.reads = reads
        self.query_key = _keyer("Q", _key_parts(reads.fields, "query"))
        self.parse_key = _keyer("P", _key_parts(reads.fields, "parse"))
        self.reads_oid = any(k in ("functionCall", "*") for k, _ in reads.fields)
        self.cache: dict[tuple[Any, ...], Decision] = {}
        self._shapes: dict[tuple[Any, ...], int] = {}
        self._next_shape = 0

    def shape_id(self, shape: tuple[Any, ...]) -> int:
        """A number per distinct set of session-constant outcomes: cheap to hash in every key.

        Numbers are never reused, so forgetting shapes (rules reading ctx.session.id make one per session)
        can only cost cache hits, never mix two sessions' decisions.
        """
        found = self._shapes.get(shape)
        if found is None:
            if len(self._shapes) >= MAX_CACHED_DECISIONS:
                self._shapes.clear()
            found = self._shapes[shape] = self._next_shape
            self._next_shape += 1
        return found


def _keyer(tag: str, parts: tuple[KeyPart, ...] | None) -> Callable[[Classification, str, str], tuple[Any, ...]]:
    """The request key for a statement: the text itself, or the classified values the rules read."""
    if parts is None:
        return lambda _c, sql, name: (tag, sql, name)
    if any(p is _name_part for p in parts):
        return lambda c, sql, name: (tag, *(p(c, sql, name) for p in parts))
    # Derived from the classification alone: remember it per Classification object (one per query shape).
    memo: dict[int, tuple[Classification, tuple[Any, ...]]] = {}

    def key(c: Classification, sql: str, name: str) -> tuple[Any, ...]:
        found = memo.get(id(c))
        if found is not None and found[0] is c:
            return found[1]
        value = (tag, *(p(c, sql, name) for p in parts))
        if len(memo) >= MAX_CACHED_DECISIONS:
            memo.clear()
        memo[id(c)] = (c, value)
        return value

    return key


class PolicySet:
    """All Policies of one snapshot, compiled; rule books built on first use per (user, service)."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self._named: dict[str, list[CompiledRule]] = {
            name: compile_policy(policy) for name, policy in snapshot.policies.items()
        }
        # Inline policies compile now too, so a bad one rejects the snapshot instead of failing a session.
        owners: list[Service | Group | User] = [*snapshot.services.values(), *snapshot.groups.values(),
                                                *snapshot.users.values()]
        for owner in owners:
            for inline in owner.authorization.inline_policies:
                compile_policy(inline)
        self._books: dict[tuple[str, str], RuleBook] = {}
        self._rail_gates: dict[tuple[str, str], RailGate] = {}

    def attached(self, user: User, service: Service) -> list[Policy]:
        """Policies that apply to this user on this service: the Service's, each Group's, the User's."""
        owners = [service.authorization]
        owners += [self.snapshot.groups[g].authorization for g in user.groups if g in self.snapshot.groups]
        owners.append(user.authorization)
        found: dict[str, Policy] = {}
        for authorization in owners:
            for name in authorization.policies:
                if name in self.snapshot.policies:
                    found.setdefault(name, self.snapshot.policies[name])
            for inline in authorization.inline_policies:
                found.setdefault(inline.name, inline)
        return list(found.values())

    def book(self, user: User, service: Service) -> RuleBook:
        key = (user.name, service.name)
        book = self._books.get(key)
        if book is None:
            rules: list[CompiledRule] = []
            for policy in self.attached(user, service):
                rules.extend(compile_policy(policy, start=len(rules)))
            book = RuleBook(ordered(rules))
            self._books[key] = book
        return book

    def has_policies(self, user: User, service: Service) -> bool:
        return bool(self.attached(user, service))

    def enforces(self, user: User, service: Service) -> bool:
        """Whether an ENFORCE Policy is attached: with AUDIT ones only, a connection is decided as with none."""
        return any(p.enforcement != PolicyEnforcement.AUDIT for p in self.attached(user, service))

    @decision_budget
    def decide(self, book: RuleBook, ctx: Mapping[str, Any], default: Decision = DEFAULT_DENY) -> Decision:
        """Evaluate every rule in order against a full plain-Python ctx (connect decisions; not cached)."""
        return first_match(book.rules, to_cel(ctx), None, default)

    def connection_policy(
        self, user: User, service: Service, base_ctx: Mapping[str, Any], generation: int,
        *, config: ServiceConfig | None = None,
    ) -> ConnectionPolicy | None:
        """A ConnectionPolicy, or None when the config (or, without one, every config) leaves mode NONE."""
        configs = [config] if config is not None else list(service.configs.values())
        if not any(c.postgres.authorization_mode == AuthorizationMode.ALL for c in configs):
            return None
        rails = None
        if config is not None and config.postgres.guard_rails.locks_settings:
            rails = self._rail_gates.get((service.name, config.name))
            if rails is None:
                rails = self._rail_gates[(service.name, config.name)] = RailGate(config.postgres.guard_rails,
                                                                                  config.name)
        return ConnectionPolicy(self.book(user, service), base_ctx, generation, rails=rails)


class ConnectionPolicy:
    """The policies in force on one client connection (a proxy.session.ClientSession), its constants folded:
    build at connect, call per message. Not a session of its own: one per connection, rebuilt on reload."""

    @decision_budget  # folding the session constants is a decision too
    def __init__(self, book: RuleBook, base_ctx: Mapping[str, Any], generation: int,
                 *, rails: RailGate | None = None) -> None:
        self.generation = generation
        self.classified: Classification | None = None  # of the last Query/Parse decided (the gate reads names)
        self._book = book
        self._rails = rails  # the config's guard rails, checked before any rule
        # Session-constant ctx parts as CEL values once; each request adds its own `request`.
        # A request's ctx carries that request only (never `connect`), so a rule like
        # `has(ctx.request.postgres.connect)` allows connecting and nothing else.
        self._base = {celtypes.StringType(k): to_cel(v) for k, v in base_ctx.items() if k != "request"}
        self._is_timed = book.reads.is_time
        self._constants: dict[int, Any] = {}
        outcomes: list[Any] = []
        unfolded: set[tuple[str, ...]] = set()
        activation_ctx = celtypes.MapType({**self._base, celtypes.StringType("request"): to_cel({"postgres": {}})})
        for rule in book.rules:
            self._fold(rule.condition, {"ctx": activation_ctx, "attrs": rule.attrs}, outcomes, unfolded)
        # An expression evaluated per request (it reads the request or the clock) may read session values too
        # (`!statement.readOnly && ctx.session...aal != "AAL2"`): those values are inputs of every cached
        # decision, so they join the folded outcomes in the key. Sessions equal in both share decisions.
        outcomes.extend((path, _session_value(base_ctx, path)) for path in sorted(unfolded))
        self._shape = book.shape_id(tuple(outcomes))

    def _fold(self, node: Node, activation: Mapping[str, Any], outcomes: list[Any],
              unfolded: set[tuple[str, ...]]) -> None:
        if node.reads.is_session_constant and node.kind != "matchAny":
            try:
                value: Any = _evaluate(node, activation, None)
            except ConditionError as exc:
                value = _Failed(exc)
            self._constants[id(node)] = value
            outcomes.append(value if isinstance(value, bool) else ("error", value.error.reason))
            return
        if not node.children:
            unfolded.update(node.reads.paths)  # a leaf evaluated per request: what session values it reads
        for child in node.children:
            self._fold(child, activation, outcomes, unfolded)

    # --- the interface the relay calls ------------------------------------------------------------
    def decide_query(self, sql: str) -> Decision:
        """A simple-protocol Query (one or more statements)."""
        c = self.classified = classify(sql)
        if self._rails is not None and (refused := self._rails.check(sql, c)) is not None:
            return _rail_refusal(refused)
        return self._decide(self._book.query_key(c, sql, ""), lambda: self._statement_request("query", c, sql, ""))

    def decide_parse(self, name: str, sql: str) -> Decision:
        """An extended-protocol Parse of `sql` as prepared statement `name` ("" for the unnamed one)."""
        c = self.classified = classify(sql)
        if self._rails is not None and (refused := self._rails.check(sql, c)) is not None:
            return _rail_refusal(refused)
        return self._decide(self._book.parse_key(c, sql, name),
                            lambda: self._statement_request("parse", c, sql, name))

    def decide_function_call(self, oid: int) -> Decision:
        """A FunctionCall message (fast-path function call by OID)."""
        if self._rails is not None and (refused := self._rails.check_function_call(oid)) is not None:
            return _rail_refusal(refused)
        key = ("F", oid) if self._book.reads_oid else ("F",)
        # A complete, conservative statement too: `statement.readOnly == false` must see a fast-path call of
        # setval() or lo_import() (any function may write; the OID alone does not say which).
        return self._decide(key, lambda: {"functionCall": {"oid": oid}, "statement": {
            "query": "", "kinds": ["FUNCTION CALL"], "tables": [], "functions": [], "readOnly": False,
            "fingerprint": ""}})

    # --- evaluation -------------------------------------------------------------------------------
    def _decide(self, key: tuple[Any, ...], request: Callable[[], dict[str, Any]]) -> Decision:
        second = timefns.current_second() if self._is_timed else None
        full_key = (self._shape, second, key)
        cache = self._book.cache
        found = cache.get(full_key)
        if found is not None:
            return found
        if second is None:
            decision = self._evaluate(request())
        else:
            with timefns.pinned(second):
                decision = self._evaluate(request())
        if len(cache) >= MAX_CACHED_DECISIONS:
            del cache[next(iter(cache))]
        cache[full_key] = decision
        return decision

    @decision_budget
    def _evaluate(self, postgres: dict[str, Any]) -> Decision:
        ctx = celtypes.MapType({**self._base, celtypes.StringType("request"): to_cel({"postgres": postgres})})
        return first_match(self._book.rules, ctx, self._constants)

    @staticmethod
    def _statement_request(kind: str, c: Classification, sql: str, name: str) -> dict[str, Any]:
        statement = {"query": sql, "kinds": list(c.kinds), "tables": list(c.tables),
                     "functions": list(c.functions), "readOnly": c.is_read_only, "fingerprint": c.fingerprint}
        own = {"name": name, **statement} if kind == "parse" else dict(statement)
        out: dict[str, Any] = {kind: own, "statement": statement}
        if c.copy_direction:
            out["copy"] = {"direction": c.copy_direction, "table": c.copy_table}
        return out


def _rail_refusal(refused: RailDecision) -> Decision:
    rail, message = refused
    return Decision(False, "", RULE_PREFIX + rail, message)


def _session_value(base_ctx: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    """A hashable, type-exact image of the value at `path` in the session's ctx (the whole ctx for ())."""
    value: Any = {k: v for k, v in base_ctx.items() if k != "request"}
    for name in path:
        if not isinstance(value, Mapping):
            break  # CEL would fail or index into it: the value so far decides
        if name not in value:
            return ("missing",)
        value = value[name]
    return _frozen(value)


def _frozen(value: Any) -> Any:
    # Type-tagged: 1, 1.0 and True are equal in Python but not in CEL.
    if isinstance(value, Mapping):
        return ("map", tuple(sorted(((repr(k), _frozen(v)) for k, v in value.items()), key=lambda kv: kv[0])))
    if isinstance(value, list | tuple):
        return ("list", tuple(_frozen(v) for v in value))
    if value is None or isinstance(value, str | int | float | bool | bytes):
        return (type(value).__name__, value)
    return (type(value).__qualname__, repr(value))


def _evaluate(node: Node, activation: Mapping[str, Any], constants: Mapping[int, Any] | None) -> bool:
    """Octelium's condition semantics (as proxy.policy.cel.CompiledCondition), with folded constants."""
    if constants is not None:
        folded = constants.get(id(node))
        if folded is not None:
            if isinstance(folded, _Failed):
                raise folded.error
            return bool(folded)
    kind = node.kind
    if kind == "match":
        return node.expression.evaluate(activation)  # type: ignore[union-attr]
    if kind == "not":
        return not node.expression.evaluate(activation)  # type: ignore[union-attr]
    if kind == "matchAny":
        return True
    if not node.children:
        return False
    if kind == "all":
        return all(_evaluate(c, activation, constants) for c in node.children)
    if kind == "any":
        return any(_evaluate(c, activation, constants) for c in node.children)
    if kind == "none":
        return not any(_evaluate(c, activation, constants) for c in node.children)
    return False

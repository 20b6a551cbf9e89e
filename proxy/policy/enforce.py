"""The client→server gate of a session with per-query checks: decide each request, forward it or a stand-in.

How it works (mode ALL only; sessions without per-query checks never reach this module):
- Messages are framed by header. Runs of untouched messages go on as slices of the received chunk.
- Query, Parse, FunctionCall and Close are held until complete; after a policy reload Bind and Execute
  too, so a statement or portal decided under older policies is decided again before it runs.
- The gate decides the text PostgreSQL will parse. Lexing-neutral text (ASCII, no backslash) is decided at
  once. Other text only under the client_encoding and standard_conforming_strings the upstream has
  confirmed (proxy/pgwire/lexing.py): while requests sent before it are unanswered, it and every later
  client byte wait, in order. Where the settings cannot be known (after an Execute with no Sync yet) or
  libpg_query cannot read text as the server will (scs=off, SJIS and kin), the gate denies it itself.
- Prepared statements (protocol Parse, SQL PREPARE) and portals (SQL DECLARE, protocol Bind to a named
  portal; every Bind after a reload) are kept with their text and generation. Whatever runs one from before
  a reload (Bind, Execute, SQL EXECUTE/FETCH/MOVE) is decided again first, and a name the gate does not
  know is denied after a reload (SQL inside a function may have made it).
- An allowed request is forwarded unchanged. A denied one is replaced by a stand-in that makes the
  upstream raise the error itself (see `proxy.pgwire.denials`), so the client sees exactly the
  protocol state PostgreSQL would produce for a request that failed there.
- After a denied Parse or Bind the upstream skips every message until Sync (as PostgreSQL does after
  any extended-protocol error), so the gate drops them instead of deciding requests never run.
- CopyData needs no gate: only an allowed Query/Parse can start COPY FROM STDIN, and outside COPY
  the upstream ignores CopyData, CopyDone and CopyFail (protocol docs, "COPY Operations").

Where this differs from PostgreSQL, on purpose: a multi-statement Query is decided whole, so when it is
denied none of it runs, and the client gets no results of the statements before the denied one
(PostgreSQL sends those, then rolls the implicit transaction back all the same). The unnamed portal bound
before a reload is denied at Execute (its text is not kept; portals end with their transaction). A
session that sends a Query inside an unfinished extended-protocol batch that the upstream then skips can no
longer send text that is not lexing-neutral (the count of answers cannot be trusted again).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from proxy.pgwire import messages as m
from proxy.pgwire.denials import (
    MARKER_PREFIX,
    Expected,
    ResponseFilter,
    encode_denied_extended,
    encode_denied_query,
    raise_sql,
)
from proxy.pgwire.encodings import decode_text
from proxy.pgwire.framing import DEFAULT_MAX_MESSAGE_BYTES
from proxy.pgwire.lexing import LexingState
from proxy.pgwire.requests import (
    CONTINUED,
    RequestSplitter,
    parse_bind,
    parse_close,
    parse_execute,
    parse_function_call,
    parse_parse,
    parse_query,
)
from proxy.pgwire.walker import frame_length
from proxy.policy.railgate import RULE_PREFIX as RAIL_RULE_PREFIX

_HELD = frozenset({m.QUERY, m.PARSE, m.FUNCTION_CALL, m.CLOSE})
RAIL_HINT = "the service's configuration fixes this setting for the session (postgres.guardRails)"
# After a policy reload: Bind and Execute too, so a statement or portal from before it is decided again.
_HELD_AFTER_RELOAD = _HELD | {m.BIND, m.EXECUTE}
# Messages after which the upstream skips to the next Sync if they fail (Flush cannot fail; libpq's pipeline
# mode sends one after its Sync).
_EXTENDED = frozenset({m.PARSE, m.BIND, m.DESCRIBE, m.EXECUTE, m.CLOSE})
_RUNS = frozenset({m.BIND, m.EXECUTE})  # may run SQL (Bind: parameter input functions, constant folding)
# Statements that cannot change client_encoding or standard_conforming_strings (no function calls): pgjdbc
# sends BEGIN with no Sync before the first statement of a transaction.
_INERT_KINDS = frozenset({"BEGIN", "START TRANSACTION", "SAVEPOINT", "RELEASE", "SHOW"})
MAX_BACKLOG_BYTES = 1 << 20  # held client bytes above which the client is no longer read
MAX_PORTALS = 10_000  # portal names remembered; a forgotten one is unknown (denied after a reload)
_RECHECK_DEPTH = 4  # EXECUTE of a statement whose stored text EXECUTEs another...
DENIAL_HINT = "pgwarden checks every query against the service's policies; ask an administrator for access"


def explain_hint(user: str, service: str, aal: str = "AAL1") -> str:
    """The HINT of a policy denial: the command that shows which rule decided. The statement is not echoed
    (it may be long or hold a literal the client would not want in an error log)."""
    level = "" if aal == "AAL1" else f" --aal {aal}"
    return (f"see which policy rule decided: pgwarden explain --user {user} --service {service}{level} "
            "--query '<your statement>'")
AFTER_EXECUTE = ("query text with non-ASCII characters or backslashes cannot be checked after an Execute "
                 "in the same pipeline: pgwarden cannot know the client_encoding and "
                 "standard_conforming_strings the server will read it with; send Sync before it")
UNSURE = ("query text with non-ASCII characters or backslashes cannot be checked in this session: it sent "
          "a Query or FunctionCall inside an unfinished extended-protocol batch, so pgwarden cannot tell "
          "which settings the server reads text with; reconnect")
HOLD = None  # what a request handler returns when the request must wait for the upstream's answers
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


# (kind, request fields, decision or None when checks are off, seconds the decision took)
OnDecision = Callable[[str, dict[str, Any], DecisionLike | None, float], None]
# A stored statement or portal: (SQL text, policy generation it was decided in, whether the text came as a
# Query, whether the text is what runs). A protocol Parse's text is what each Execute runs; the text holding
# a SQL PREPARE or DECLARE only contains it (it is decided whole, the safe side). The text is None for a
# portal bound to a statement the gate did not know.
_Entry = tuple[str | None, int, bool, bool]


def denial_message(what: str, decision: DecisionLike) -> str:
    if decision.rule.startswith(RAIL_RULE_PREFIX):
        return decision.reason  # a guard rail's refusal names the statement and the rail itself
    if isinstance(decision, GateDenial):
        return f"{what} denied: {decision.reason}"
    if decision.policy:
        return f'{what} denied by policy "{decision.policy}", rule "{decision.rule}"'
    return f"{what} denied: no policy rule allows it"


class RequestGate:
    """Decides every request of one session. Mutable: it tracks prepared statements, portals, Sync state
    and the upstream's confirmed lexing settings (proxy/pgwire/lexing.py).

    Text that is not lexing-neutral is decided only under confirmed settings: while requests sent before
    it are unanswered the gate holds it and every later client byte, in order (`on_ready_for_query` goes
    on), and the session stops reading the client while `is_backlog_full`.
    """

    def __init__(
        self,
        *,
        policy: Callable[[], RequestDecider | None],
        codec: Callable[[], str],
        responses: ResponseFilter,
        on_decision: OnDecision,
        on_ready_requested: Callable[[], None] | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        parameters: dict[str, str] | None = None,
        denial_hint: str = DENIAL_HINT,
    ) -> None:
        self._policy = policy
        self._denial_hint = denial_hint  # the HINT of a policy's denial (explain_hint names the user and service)
        self._codec = codec
        self._responses = responses
        self._on_decision = on_decision
        self._on_ready_requested = on_ready_requested  # a Sync, Query or FunctionCall went upstream
        self._splitter = RequestSplitter(_HELD, max_message_bytes=max_message_bytes)
        self._max_message_bytes = max_message_bytes
        self._statements: dict[bytes, _Entry] = {}  # prepared statements: protocol Parse and SQL PREPARE
        self._portals: dict[bytes, _Entry] = {}  # SQL cursors, named protocol portals; all after a reload
        self._generation = -1
        self._first_generation = -1  # a name unknown after the generation changed is denied
        self._is_skipping = False  # after a denied Parse/Bind: the upstream skips until Sync, we drop
        self._is_dropping_message = False  # the message in progress is being dropped
        self.ready_requested = 0  # messages forwarded that the upstream answers with ReadyForQuery
        self._denials = 0
        # Lexing state: what the upstream reported last, confirmed once ready_seen catches up.
        self._reported: dict[str, str] = dict(parameters or {})
        self._lexing = LexingState.from_parameters(self._reported)
        self._is_reported_new = False  # a ParameterStatus came since the last confirmation
        self._ready_seen = 0
        self._in_batch = False  # extended-protocol messages went upstream since the last Sync
        self._ran_in_batch = False  # ... and one of them may have run SQL (settings may have changed)
        self._inert_statements: set[bytes] = set()  # prepared statements of _INERT_KINDS only
        self._inert_portals: set[bytes] = set()  # bound to one of those in this batch
        self._uncertain = 0  # Query/FunctionCall inside a batch: skipped (no ReadyForQuery) after an error
        self._backlog: bytearray | None = None  # held client bytes, from a held request on

    @property
    def is_at_boundary(self) -> bool:
        return self._backlog is None and self._splitter.is_at_boundary

    @property
    def is_backlog_full(self) -> bool:
        return self._backlog is not None and len(self._backlog) > MAX_BACKLOG_BYTES

    @property
    def is_holding(self) -> bool:
        return self._backlog is not None

    # --- upstream side -------------------------------------------------------------------
    def on_parameter_status(self, body: bytes) -> None:
        """A ParameterStatus from the upstream (it comes before the ReadyForQuery that confirms it)."""
        name, _, value = body.partition(b"\x00")
        key = name.decode("ascii", "replace")
        if key in ("client_encoding", "standard_conforming_strings"):
            self._reported[key] = value.rstrip(b"\x00").decode("ascii", "replace")
            self._is_reported_new = True

    def on_ready_for_query(self) -> list[bytes | memoryview]:
        """A ReadyForQuery from the upstream; returns held client bytes that may now go upstream."""
        self._ready_seen += 1
        if self._ready_seen < self.ready_requested:
            return []
        if self._uncertain:
            self._uncertain = 0  # everything sent was answered: none was skipped
        if self._is_reported_new:
            self._is_reported_new = False
            self._lexing = LexingState.from_parameters(self._reported)
        if self._backlog is None:
            return []
        data = bytes(self._backlog)
        self._backlog = None
        return self.feed(data)

    # --- client side ---------------------------------------------------------------------
    def feed(self, data: bytes) -> list[bytes | memoryview]:
        """The bytes to send upstream for this chunk from the client. Raises ProtocolViolation."""
        if self._backlog is not None:
            self._backlog += data
            return []
        policy = self._policy()
        if policy is not None and policy.generation != self._generation:
            if self._first_generation < 0:
                self._first_generation = policy.generation
            self._generation = policy.generation
            self._update_hold()
        if data[:1] == b"Q" and not self._is_skipping and self._splitter.is_at_boundary:
            # Fast path, the usual simple-protocol chunk: exactly one whole Query. One decision, and the
            # chunk itself goes upstream (or its stand-in), without splitting or slicing.
            length = len(data) - 1  # the header's length field, checked by the one frame walker's rules
            if length >= 5 and frame_length(data, 0, self._max_message_bytes, "client") == length:
                sent = self._query(data, parse_query(data[5:]), policy)
                if sent is HOLD:
                    self._backlog = bytearray(data)
                    return []
                return [sent]
        buf, pieces = self._splitter.split(data)
        out: list[bytes | memoryview] = []
        view = memoryview(buf)
        run_start = run_end = -1
        for type_byte, start, end, held in pieces:
            if held is None:
                if type_byte == CONTINUED:
                    if self._is_dropping_message:
                        continue
                elif self._is_skipping and type_byte not in (m.SYNC, m.TERMINATE):
                    self._is_dropping_message = True
                    continue
                else:
                    self._is_dropping_message = False
                    if type_byte == m.SYNC:
                        self._is_skipping = False
                        if self._in_batch:
                            self._in_batch = self._ran_in_batch = False
                            if self._inert_portals:
                                self._inert_portals.clear()
                        self._ready_requested()
                    elif type_byte == m.BIND and end > start + 5 and buf[start + 5]:
                        self._note_named_portal(buf, start, end)  # so a reload decides it again, not denies
                    if type_byte in _EXTENDED and not self._ran_in_batch:  # (it implies _in_batch)
                        self._in_batch = True
                        if type_byte in _RUNS:
                            self._ran_in_batch = (not (self._inert_statements or self._inert_portals)
                                                  or self._may_change_settings(type_byte, buf, start, end))
                if start == run_end:
                    run_end = end
                else:
                    if run_end > run_start:
                        out.append(view[run_start:run_end])
                    run_start, run_end = start, end
                continue
            self._is_dropping_message = False
            if self._is_skipping:
                continue  # the upstream would skip it too: nothing to decide
            if run_end > run_start:
                out.append(view[run_start:run_end])
            run_start = run_end = -1
            sent = self._on_held(type_byte, held, policy)
            if sent is HOLD:
                # This request and every later byte wait, in order, for the upstream's answers.
                self._backlog = bytearray(held)
                self._backlog += view[end:]
                self._splitter.reset()
                return out
            out.append(sent)
        if run_end > run_start:
            out.append(view[run_start:run_end])
        return out

    # --- held requests -------------------------------------------------------------------
    def _on_held(self, type_byte: int, raw: bytes, policy: RequestDecider | None) -> bytes | None:
        body = raw[5:]
        if type_byte == m.QUERY:
            return self._query(raw, parse_query(body), policy)
        if type_byte == m.FUNCTION_CALL:
            return self._function_call(raw, parse_function_call(body), policy)
        self._in_batch = True  # Parse, Bind, Execute, Close
        if type_byte == m.PARSE:
            return self._parse(raw, body, policy)
        if type_byte == m.BIND or type_byte == m.EXECUTE:
            if not self._ran_in_batch:
                self._ran_in_batch = self._may_change_settings(type_byte, raw, 0, len(raw))
            return (self._bind if type_byte == m.BIND else self._execute)(raw, body, policy)
        close = parse_close(body)  # CLOSE
        if close.is_statement:
            self._statements.pop(close.name, None)
            self._inert_statements.discard(close.name)
        else:
            self._portals.pop(close.name, None)
        return raw

    def _may_change_settings(self, type_byte: int, buf: bytes, start: int, end: int) -> bool:
        """Whether this Bind or Execute may run SQL that changes settings. While a statement is inert they
        are held, so `buf[start:end]` is the whole message."""
        if not (self._inert_statements if type_byte == m.BIND else self._inert_portals):
            return True  # the usual case: nothing inert to look for
        at = buf.find(b"\x00", start + 5, end)
        if at < 0:
            return True
        if type_byte == m.EXECUTE:
            return buf[start + 5 : at] not in self._inert_portals
        stop = buf.find(b"\x00", at + 1, end)
        if stop < 0 or buf[at + 1 : stop] not in self._inert_statements:
            return True
        self._inert_portals.add(buf[start + 5 : at])
        return False

    def _text(self, raw: bytes) -> str | GateDenial | None:
        """The text PostgreSQL will lex, a refusal, or HOLD until the settings it is lexed with are confirmed."""
        if raw.isascii() and b"\\" not in raw:
            return raw.decode("ascii")  # lexing-neutral: the same tokens under any settings
        if self._ran_in_batch:
            return GateDenial(AFTER_EXECUTE)  # its settings come only after a Sync that comes after it
        if self._ready_seen < self.ready_requested:
            return GateDenial(UNSURE) if self._uncertain else HOLD
        refusal = self._lexing.refusal(raw)
        if refusal is not None:
            return GateDenial(refusal)
        text = self._lexing.decode(raw)
        if text is None:
            # Not decodable exactly: the statement is UNKNOWN (not read-only). classify() never parses
            # text with a NUL, so the policy sees the replaced text with one appended.
            return decode_text(raw, self._codec()) + "\x00"
        return text

    def _query(self, raw: bytes, text: bytes, policy: RequestDecider | None) -> bytes | None:
        if text.isascii() and b"\\" not in text:
            shown = text.decode("ascii")  # lexing-neutral: decided at once
            sql: str | GateDenial | None = shown
        else:
            sql = self._text(text)
            if sql is HOLD:
                return HOLD
            shown = sql.rstrip("\x00") if type(sql) is str else ""
        self._statements.pop(b"", None)  # a simple Query drops the unnamed statement (protocol docs)
        if self._inert_statements:
            self._inert_statements.discard(b"")
        if type(sql) is str:
            decision = self._decide("QUERY", {"query": shown}, policy, lambda p: p.decide_query(sql))
            if decision is not None and decision.allowed:
                classified = getattr(policy, "classified", None)
                if classified is not None and classified.names is not None:
                    decision = self._names(policy, sql, True, 0) or decision
        else:
            assert isinstance(sql, GateDenial)
            decision = self._decide("QUERY", {"query": decode_text(text, self._codec())}, None, None, sql)
        if decision is not None and not decision.allowed:
            raw = self._stand_in_query("query", decision)
        if self._in_batch:
            self._uncertain_request()
        self._ready_requested()
        return raw

    def _parse(self, raw: bytes, body: bytes, policy: RequestDecider | None) -> bytes | None:
        request = parse_parse(body)
        text = request.query
        if text.isascii() and b"\\" not in text:
            shown = text.decode("ascii")  # lexing-neutral: decided at once
            sql: str | GateDenial | None = shown
        else:
            sql = self._text(text)
            if sql is HOLD:
                return HOLD
            shown = sql.rstrip("\x00") if type(sql) is str else ""
        name = decode_text(request.name, self._codec())
        if type(sql) is str:
            fields = {"query": shown, "name": name}
            decision = self._decide("PARSE", fields, policy, lambda p: p.decide_parse(name, sql))
            is_inert = False
            if decision is None or decision.allowed:
                classified = getattr(policy, "classified", None)
                if classified is not None:
                    kinds = classified.kinds
                    is_inert = (bool(kinds) and kinds[0] in _INERT_KINDS and _INERT_KINDS.issuperset(kinds)
                                and not classified.functions)
                    if classified.names is not None:
                        decision = self._names(policy, sql, False, 0) or decision
            if decision is None or decision.allowed:
                self._statements[request.name] = (sql, self._generation, False, True)
                if is_inert:
                    self._inert_statements.add(request.name)
                    if len(self._inert_statements) == 1:
                        self._update_hold()
                elif self._inert_statements:
                    self._inert_statements.discard(request.name)
                return raw
        else:
            assert isinstance(sql, GateDenial)
            self._decide("PARSE", {"query": decode_text(text, self._codec()), "name": name}, None, None, sql)
            decision = sql  # the gate's own denial, reported like a policy's
        # The statement does not exist upstream; a later Bind of it fails there, as after a failed Parse.
        self._statements.pop(request.name, None)
        self._statements.pop(b"", None)  # the stand-in took the unnamed statement
        self._inert_statements.difference_update((request.name, b""))
        return self._stand_in_extended("statement", decision)

    def _bind(self, raw: bytes, body: bytes, policy: RequestDecider | None) -> bytes:
        """Held after a reload (or while a statement is inert): a statement from before it is decided again,
        an unknown one denied."""
        request = parse_bind(body)
        if policy is None:
            return raw
        known = self._statements.get(request.statement)
        name = decode_text(request.statement, self._codec())
        fields = {"query": "" if known is None or known[0] is None else known[0], "name": name,
                  "portal": decode_text(request.portal, self._codec())}
        decision = self._recheck("BIND", self._statements, request.statement, fields, policy, 0)
        if decision is not None:
            # Still stale, or unknown: the statement may exist upstream, and a later Bind decides again.
            return self._stand_in_extended("statement", decision)
        entry = self._statements.get(request.statement)
        self._remember_portal(request.portal, (None, self._generation, False, False) if entry is None
                              else (entry[0], self._generation, entry[2], entry[3]))
        return raw

    def _execute(self, raw: bytes, body: bytes, policy: RequestDecider | None) -> bytes:
        """Held after a reload (or while a statement is inert): a portal bound before the reload (or unknown)
        is decided again or denied."""
        if policy is None:
            return raw
        portal = parse_execute(body)
        known = self._portals.get(portal)
        fields = {"query": "" if known is None or known[0] is None else known[0],
                  "name": decode_text(portal, self._codec())}
        decision = self._recheck("EXECUTE", self._portals, portal, fields, policy, 0)
        return raw if decision is None else self._stand_in_extended("portal", decision)

    def _function_call(self, raw: bytes, oid: int, policy: RequestDecider | None) -> bytes:
        decision = self._decide("FUNCTION_CALL", {"oid": oid}, policy, lambda p: p.decide_function_call(oid))
        if decision is not None and not decision.allowed:
            # A FunctionCall that fails is answered ErrorResponse + ReadyForQuery, like a Query.
            raw = self._stand_in_query("function call", decision)
        if self._in_batch:
            self._uncertain_request()
        self._ready_requested()
        return raw

    # --- names: prepared statements and portals ------------------------------------------
    def _names(self, policy: RequestDecider | None, sql: str, via_query: bool, depth: int) -> DecisionLike | None:
        """After an allowed decision of `sql`: decide again what it EXECUTEs or FETCHes from before a reload
        (a denial, or None), then note what it prepares, declares and drops."""
        classified = getattr(policy, "classified", None)
        names = getattr(classified, "names", None)
        if names is None:
            return None  # the common case: no PREPARE, EXECUTE, cursor or DISCARD
        codec = self._codec()
        for table, used, created, kind in ((self._statements, names.executes, names.prepares, "EXECUTE"),
                                           (self._portals, names.fetches, names.declares, "EXECUTE")):
            for name in used:
                if name in created:
                    continue  # made by this same text, decided just now
                key = name.encode(codec, "replace")
                known = table.get(key)
                fields = {"query": "" if known is None or known[0] is None else known[0], "name": name}
                decision = self._recheck(kind, table, key, fields, policy, depth)
                if decision is not None:
                    return decision
        if names.drops_all_statements:
            self._statements.clear()
            self._inert_statements.clear()
        if names.drops_all_portals:
            self._portals.clear()
        for name in names.deallocates:
            self._statements.pop(name.encode(codec, "replace"), None)
            self._inert_statements.discard(name.encode(codec, "replace"))
        for name in names.closes:
            self._portals.pop(name.encode(codec, "replace"), None)
        for name in names.prepares:
            self._statements[name.encode(codec, "replace")] = (sql, self._generation, via_query, False)
            self._inert_statements.discard(name.encode(codec, "replace"))
        for name in names.declares:
            self._remember_portal(name.encode(codec, "replace"), (sql, self._generation, via_query, False))
        return None

    def _recheck(self, kind: str, table: dict[bytes, _Entry], key: bytes, fields: dict[str, Any],
                 policy: RequestDecider | None, depth: int) -> DecisionLike | None:
        """A statement or portal about to run: None when it may, else the denial. One decided under an
        older generation is decided again; one the gate does not know is denied once a reload was seen."""
        known = table.get(key)
        if policy is None or (known is not None and known[1] >= self._generation):
            return None
        sql = None if known is None else known[0]
        if known is None or sql is None:
            if self._generation == self._first_generation:
                return None  # no reload yet: whatever made it was decided under these policies
            name = fields["name"]
            denial = GateDenial(
                f"prepared statement \"{name}\" was not made through pgwarden since the policies changed: "
                "prepare it again" if table is self._statements else
                f"portal \"{name}\" was bound or declared before the policies changed (or by SQL pgwarden did "
                "not see): bind or declare it again")
            self._decide(kind, fields, None, None, denial)
            return denial
        _, _, via_query, runs = known
        if depth >= _RECHECK_DEPTH:
            denial = GateDenial("prepared statements that execute each other are nested too deeply to check")
            self._decide(kind, fields, None, None, denial)
            return denial
        name = str(fields["name"])
        decision = self._decide(kind, fields, policy,
                                lambda p: p.decide_query(sql) if via_query else p.decide_parse(name, sql))
        if runs and decision is not None and decision.allowed:
            # It runs again: what it EXECUTEs or FETCHes, and what it makes and drops, count again too.
            decision = self._names(policy, sql, via_query, depth + 1) or decision
        if decision is None or decision.allowed:
            table[key] = (sql, self._generation, via_query, runs)
            return None
        return decision

    def _note_named_portal(self, buf: bytes, start: int, end: int) -> None:
        """A pass-through Bind to a named portal (pgjdbc's fetchSize, cursors over the protocol): keep what
        it runs. A Bind cut across chunks is not kept; after a reload its portal is unknown and denied."""
        at = buf.find(b"\x00", start + 5, end)
        stop = buf.find(b"\x00", at + 1, end) if at >= 0 else -1
        if stop < 0:
            return
        entry = self._statements.get(buf[at + 1 : stop])
        self._remember_portal(buf[start + 5 : at], (None, self._generation, False, False) if entry is None
                              else (entry[0], entry[1], entry[2], entry[3]))

    def _update_hold(self) -> None:
        """Bind and Execute are held (whole) after a reload, and while a statement is inert: then whether
        one runs an inert statement decides whether text after it in the batch can still be checked."""
        is_reloaded = self._generation != self._first_generation
        self._splitter.hold = _HELD_AFTER_RELOAD if is_reloaded or self._inert_statements else _HELD

    def _remember_portal(self, key: bytes, entry: _Entry) -> None:
        portals = self._portals
        portals.pop(key, None)
        if len(portals) >= MAX_PORTALS:
            del portals[next(iter(portals))]  # forgotten: unknown, so denied after a reload (fail closed)
        portals[key] = entry

    # --- helpers -------------------------------------------------------------------------
    def _decide(
        self, kind: str, fields: dict[str, Any], policy: RequestDecider | None,
        ask: Callable[[RequestDecider], DecisionLike] | None, denial: GateDenial | None = None,
    ) -> DecisionLike | None:
        """Ask the policy (None when checks are off for this session now) and report the decision.
        With `denial` the gate has decided itself; it is reported the same way."""
        decision: DecisionLike | None = denial
        started = time.perf_counter()
        if policy is not None and ask is not None:
            try:
                decision = ask(policy)
            except Exception as exc:  # noqa: BLE001 - a policy bug must deny, not end the session
                decision = FailedDecision(False, "", "", f"policy evaluation failed: {type(exc).__name__}")
        self._on_decision(kind, fields, decision, time.perf_counter() - started)
        return decision

    def _sql_for(self, what: str, decision: DecisionLike) -> tuple[str, str]:
        self._denials += 1
        marker = f"{MARKER_PREFIX}{self._denials}"
        # The engine's usual reason repeats the message; any other (a failed rule, default deny) explains it.
        usual = f'denied by policy "{decision.policy}" rule "{decision.rule}"'
        message = denial_message(what, decision)
        is_plain = decision.reason in (usual, message) or isinstance(decision, GateDenial)
        detail = "" if is_plain else decision.reason
        hint = RAIL_HINT if decision.rule.startswith(RAIL_RULE_PREFIX) else self._denial_hint
        sql = raise_sql(message, marker=marker, detail=detail, hint=hint)
        return marker, sql

    def _stand_in_query(self, what: str, decision: DecisionLike) -> bytes:
        marker, sql = self._sql_for(what, decision)
        # Its error comes before the ReadyForQuery the stand-in itself asks for.
        self._responses.expect(Expected(marker, False, self.ready_requested))
        return encode_denied_query(sql, self._codec())

    def _stand_in_extended(self, what: str, decision: DecisionLike) -> bytes:
        marker, sql = self._sql_for(what, decision)
        self._responses.expect(Expected(marker, True, self.ready_requested))
        self._is_skipping = True
        return encode_denied_extended(sql, self._codec())

    def _ready_requested(self) -> None:
        self.ready_requested += 1
        if self._on_ready_requested is not None:
            self._on_ready_requested()

    def _uncertain_request(self) -> None:
        """A Query or FunctionCall inside an extended-protocol batch: it runs SQL, and after an earlier error
        in the batch the upstream skips it without a ReadyForQuery, so the count of answers is unsure."""
        self._uncertain += 1
        self._ran_in_batch = True


# --- response summaries ------------------------------------------------------------------------------

_ROW_COUNTING = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "COPY", "FETCH", "MOVE"})
Decided = tuple[str, dict[str, Any], DecisionLike]
# (kind, request fields, decision, response summary or None when the session ended first)
WriteDecision = Callable[[str, dict[str, Any], DecisionLike, dict[str, Any] | None], None]


class ResponseSummaries:
    """Holds each decision until the upstream has answered its request, then logs both together.

    Requests are grouped by what the upstream answers with one ReadyForQuery (everything up to a Sync,
    one Query, one FunctionCall); the summary gives that cycle's last command tag, rows, first SQLSTATE
    and duration. Mutable: one per session, fed from both directions of the relay.
    """

    __slots__ = ("_write", "_open", "_open_started", "_sent", "_tag", "_rows", "_sqlstate")

    def __init__(self, write: WriteDecision) -> None:
        self._write = write
        self._open: list[Decided] = []  # decided since the last Sync/Query/FunctionCall went upstream
        self._open_started = 0.0
        self._sent: deque[tuple[list[Decided], float]] = deque()  # cycles awaiting their ReadyForQuery
        self._tag = ""
        self._rows = 0
        self._sqlstate = ""

    def decided(self, kind: str, request: dict[str, Any], decision: DecisionLike) -> None:
        if not self._open:
            self._open_started = time.monotonic()
        self._open.append((kind, request, decision))

    def ready_requested(self) -> None:
        started = self._open_started if self._open else time.monotonic()
        self._sent.append((self._open, started))
        self._open = []

    def on_replies(self, found: list[tuple[int, bytes]]) -> None:
        """CommandComplete, ErrorResponse and ReadyForQuery bodies from the upstream, in order."""
        for type_byte, body in found:
            if type_byte == m.COMMAND_COMPLETE:
                self._tag = body.rstrip(b"\x00").decode("ascii", "replace")
                words = self._tag.split()
                if words and words[0] in _ROW_COUNTING and words[-1].isdigit():
                    self._rows += int(words[-1])
            elif type_byte == m.ERROR_RESPONSE:
                if not self._sqlstate:
                    self._sqlstate = m.parse_error_fields(body).code
            elif type_byte == m.READY_FOR_QUERY:
                self._on_ready()

    def _on_ready(self) -> None:
        if self._sent:
            entries, started = self._sent.popleft()
            if entries:
                summary: dict[str, Any] = {"commandTag": self._tag, "rows": self._rows,
                                           "durationMs": round((time.monotonic() - started) * 1000, 3)}
                if self._sqlstate:
                    summary["sqlstate"] = self._sqlstate
                for kind, request, decision in entries:
                    self._write(kind, request, decision, summary)
        self._tag, self._rows, self._sqlstate = "", 0, ""

    def flush(self) -> None:
        """Log what is still unanswered (the session is ending), without a summary."""
        for entries, _ in self._sent:
            for kind, request, decision in entries:
                self._write(kind, request, decision, None)
        for kind, request, decision in self._open:
            self._write(kind, request, decision, None)
        self._sent.clear()
        self._open = []

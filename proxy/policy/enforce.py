"""The client→server gate of a session with per-query checks: decide each request, forward it or a stand-in.

How it works (mode ALL only; sessions without per-query checks never reach this module):
- Messages are framed by header. Runs of untouched messages go on as slices of the received chunk.
- Query, Parse, FunctionCall and Close are held until complete; Bind too while a prepared statement
  was decided under an older policy generation (so a Bind after a reload re-decides it).
- An allowed request is forwarded unchanged. A denied one is replaced by a stand-in that makes the
  upstream raise the error itself (see `proxy.pgwire.denials`), so the client sees exactly the
  protocol state PostgreSQL would produce for a request that failed there.
- After a denied Parse or Bind the upstream skips every message until Sync (as PostgreSQL does after
  any extended-protocol error), so the gate drops them instead of deciding requests never run.
- CopyData needs no gate: only an allowed Query/Parse can start COPY FROM STDIN, and outside COPY
  the upstream ignores CopyData, CopyDone and CopyFail (protocol docs, "COPY Operations").

Where this differs from PostgreSQL, on purpose: a multi-statement Query is decided whole, so when it is
denied none of it runs, and the client gets no results of the statements before the denied one
(PostgreSQL sends those, then rolls the implicit transaction back all the same). A portal bound
before a reload runs without a new decision (portals end with their transaction).
"""

from __future__ import annotations

import struct
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
from proxy.pgwire.requests import (
    CONTINUED,
    RequestSplitter,
    parse_bind,
    parse_close,
    parse_function_call,
    parse_parse,
    parse_query,
)
from proxy.policy.railgate import RULE_PREFIX as RAIL_RULE_PREFIX

_HELD = frozenset({m.QUERY, m.PARSE, m.FUNCTION_CALL, m.CLOSE})
_I32 = struct.Struct("!i")
_HELD_WITH_BIND = _HELD | {m.BIND}
RAIL_HINT = "the service's configuration fixes this setting for the session (postgres.guardRails)"
DENIAL_HINT = "pgwarden checks every query against the service's policies; ask an administrator for access"


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


class SessionPolicy(Protocol):
    """What the gate asks (proxy/policy/engine.py implements it); `generation` changes on reload."""

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


def denial_message(what: str, decision: DecisionLike) -> str:
    if decision.rule.startswith(RAIL_RULE_PREFIX):
        return decision.reason  # a guard rail's refusal names the statement and the rail itself
    if decision.policy:
        return f'{what} denied by policy "{decision.policy}", rule "{decision.rule}"'
    return f"{what} denied: no policy rule allows it"


class RequestGate:
    """Decides every request of one session. Mutable: it tracks prepared statements and Sync state."""

    def __init__(
        self,
        *,
        policy: Callable[[], SessionPolicy | None],
        codec: Callable[[], str],
        responses: ResponseFilter,
        on_decision: OnDecision,
        on_ready_requested: Callable[[], None] | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self._policy = policy
        self._codec = codec
        self._responses = responses
        self._on_decision = on_decision
        self._on_ready_requested = on_ready_requested  # a Sync, Query or FunctionCall went upstream
        self._splitter = RequestSplitter(_HELD, max_message_bytes=max_message_bytes)
        self._max_message_bytes = max_message_bytes
        self._statements: dict[bytes, tuple[str, int]] = {}  # name -> (SQL, policy generation it was decided in)
        self._generation = -1
        self._is_skipping = False  # after a denied Parse/Bind: the upstream skips until Sync, we drop
        self._is_dropping_message = False  # the message in progress is being dropped
        self.ready_requested = 0  # messages forwarded that the upstream answers with ReadyForQuery
        self._denials = 0

    @property
    def is_at_boundary(self) -> bool:
        return self._splitter.is_at_boundary

    def feed(self, data: bytes) -> list[bytes | memoryview]:
        """The bytes to send upstream for this chunk from the client. Raises ProtocolViolation."""
        policy = self._policy()
        if policy is not None and policy.generation != self._generation:
            self._generation = policy.generation
            self._update_bind_hold()
        if data[:1] == b"Q" and not self._is_skipping and self._splitter.is_at_boundary:
            # Fast path, the usual simple-protocol chunk: exactly one whole Query. One decision, and the
            # chunk itself goes upstream (or its stand-in), without splitting or slicing.
            length = len(data) - 1
            if length >= 5 and _I32.unpack_from(data, 1)[0] == length and length - 4 <= self._max_message_bytes:
                return [self._query(data, decode_text(parse_query(data[5:]), self._codec()), policy)]
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
                        self._ready_requested()
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
            out.append(self._on_held(type_byte, held, policy))
        if run_end > run_start:
            out.append(view[run_start:run_end])
        return out

    # --- held requests -------------------------------------------------------------------
    def _on_held(self, type_byte: int, raw: bytes, policy: SessionPolicy | None) -> bytes:
        body = raw[5:]
        if type_byte == m.QUERY:
            return self._query(raw, decode_text(parse_query(body), self._codec()), policy)
        if type_byte == m.PARSE:
            return self._parse(raw, body, policy)
        if type_byte == m.BIND:
            return self._bind(raw, body, policy)
        if type_byte == m.FUNCTION_CALL:
            return self._function_call(raw, parse_function_call(body), policy)
        close = parse_close(body)  # CLOSE
        if close.is_statement:
            self._statements.pop(close.name, None)
        return raw

    def _query(self, raw: bytes, sql: str, policy: SessionPolicy | None) -> bytes:
        self._statements.pop(b"", None)  # a simple Query drops the unnamed statement (protocol docs)
        decision = self._decide("QUERY", {"query": sql}, policy, lambda p: p.decide_query(sql))
        if decision is not None and not decision.allowed:
            raw = self._stand_in_query("query", decision)
        self._ready_requested()
        return raw

    def _parse(self, raw: bytes, body: bytes, policy: SessionPolicy | None) -> bytes:
        request = parse_parse(body)
        codec = self._codec()
        name, sql = decode_text(request.name, codec), decode_text(request.query, codec)
        decision = self._decide("PARSE", {"query": sql, "name": name}, policy, lambda p: p.decide_parse(name, sql))
        if decision is None or decision.allowed:
            self._statements[request.name] = (sql, self._generation)
            return raw
        # The statement does not exist upstream; a later Bind of it fails there, as after a failed Parse.
        self._statements.pop(request.name, None)
        self._statements.pop(b"", None)  # the stand-in took the unnamed statement
        return self._stand_in_extended("statement", decision)

    def _bind(self, raw: bytes, body: bytes, policy: SessionPolicy | None) -> bytes:
        request = parse_bind(body)
        known = self._statements.get(request.statement)
        if known is None or known[1] >= self._generation or policy is None:
            return raw
        sql = known[0]
        codec = self._codec()
        name, portal = decode_text(request.statement, codec), decode_text(request.portal, codec)
        fields = {"query": sql, "name": name, "portal": portal}
        decision = self._decide("BIND", fields, policy, lambda p: p.decide_parse(name, sql))
        if decision is None or decision.allowed:
            self._statements[request.statement] = (sql, self._generation)
            self._update_bind_hold()
            return raw
        # Still stale: the statement exists upstream, and a later Bind decides again.
        return self._stand_in_extended("statement", decision)

    def _function_call(self, raw: bytes, oid: int, policy: SessionPolicy | None) -> bytes:
        decision = self._decide("FUNCTION_CALL", {"oid": oid}, policy, lambda p: p.decide_function_call(oid))
        if decision is not None and not decision.allowed:
            # A FunctionCall that fails is answered ErrorResponse + ReadyForQuery, like a Query.
            raw = self._stand_in_query("function call", decision)
        self._ready_requested()
        return raw

    # --- helpers -------------------------------------------------------------------------
    def _decide(
        self, kind: str, fields: dict[str, Any], policy: SessionPolicy | None,
        ask: Callable[[SessionPolicy], DecisionLike],
    ) -> DecisionLike | None:
        """Ask the policy (None when checks are off for this session now) and report the decision."""
        decision: DecisionLike | None = None
        started = time.perf_counter()
        if policy is not None:
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
        detail = "" if decision.reason in (usual, message) else decision.reason
        hint = RAIL_HINT if decision.rule.startswith(RAIL_RULE_PREFIX) else DENIAL_HINT
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

    def _update_bind_hold(self) -> None:
        generation = self._generation
        is_stale = any(g < generation for _, g in self._statements.values())
        self._splitter.hold = _HELD_WITH_BIND if is_stale else _HELD


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

"""The client-to-upstream half of a session's relay, chosen once at connect: a plain or a gated relay.

`PlainRelay` forwards each chunk untouched and hands Query/Parse to the access log. `GatedRelay` (authorization
mode ALL) sends every request through `proxy.policy.enforce.RequestGate` before it goes upstream, and with the
readOnly rail keeps one request cycle in flight at a time. Either one is the client side's `PgConnection.relay`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Protocol

from proxy.audit.accesslog import SessionLog
from proxy.errors import AccessDenied, PgwardenError
from proxy.guardrails import TRANSACTION_END_KINDS, CycleSplitter, TransactionEndWatch, rail_denied
from proxy.pgwire import messages as m
from proxy.pgwire.encodings import decode_text
from proxy.pgwire.errors import ProtocolViolation
from proxy.pgwire.framing import FrameScanner
from proxy.policy.classify import classify
from proxy.policy.enforce import RequestGate

# Query and Parse for the access log; Sync, Query and FunctionCall are each answered by one ReadyForQuery, so
# counting them tells a draining session whether a request is still in flight (proxy/drain.py).
_CLIENT_INSPECT = frozenset({m.QUERY, m.PARSE, m.SYNC, m.FUNCTION_CALL})
_CYCLE_ENDS = frozenset({m.QUERY, m.SYNC, m.FUNCTION_CALL})
HELD_BYTES_MAX = 1 << 20  # readOnly rail: client bytes held behind a cycle in flight before reading pauses


class Upstream(Protocol):
    """The upstream side of the session, as the gated relay sees it."""

    transport: asyncio.Transport | None
    is_closed: bool

    @property
    def is_write_paused(self) -> bool: ...


class RelayedSession(Protocol):
    """What a relay asks of its session (proxy/session.py's ClientSession)."""

    transport: asyncio.Transport | None
    is_closed: bool
    pending_termination: PgwardenError | None
    cycles_sent: int  # Sync, Query and FunctionCall messages the plain relay forwarded

    @property
    def codec(self) -> str: ...

    @property
    def config_name(self) -> str: ...

    @property
    def log(self) -> SessionLog | None: ...

    def log_statement(self, type_byte: int, body: bytes) -> None: ...

    def terminate(self, reason: PgwardenError) -> None: ...

    def end_now(self, exc: PgwardenError) -> None: ...


class PlainRelay:
    """No per-query checks: every chunk goes upstream untouched; Query and Parse are logged."""

    __slots__ = ("_log", "_scanner", "_session", "_upstream")

    def __init__(self, session: RelayedSession, upstream: asyncio.Transport) -> None:
        self._session = session
        self._upstream = upstream
        self._log = session.log  # set before the relay starts, never changed after
        self._scanner = FrameScanner(_CLIENT_INSPECT, whose="client")

    def on_relay_data(self, data: bytes) -> None:
        """The hot path: frame, forward, log."""
        try:
            found = self._scanner.scan(data)
        except ProtocolViolation as exc:
            self._session.end_now(exc)
            return
        self._upstream.write(data)
        if found:
            session = self._session
            for type_byte, body in found:
                if type_byte in _CYCLE_ENDS:
                    session.cycles_sent += 1
                    if type_byte != m.QUERY:
                        continue
                if self._log is not None:
                    session.log_statement(type_byte, body)


class GatedRelay:
    """Per-query checks (authorization mode ALL): every request is decided before it goes upstream."""

    def __init__(self, session: RelayedSession, upstream: Upstream, gate: RequestGate, *, is_read_only: bool) -> None:
        self.gate = gate
        self._session = session
        self._upstream = upstream
        self._is_paused_by_gate = False  # the gate holds too many client bytes: the client is not read
        # readOnly rail: one request cycle upstream at a time, and nothing may follow a COMMIT before Sync
        self._cycles = CycleSplitter() if is_read_only else None
        self._ends = TransactionEndWatch(self._ends_transaction) if is_read_only else None
        self._held = bytearray()  # client bytes behind the cycle in flight
        self._stream_pos = 0  # client bytes walked for cycle ends so far
        self._held_start = 0  # where `_held` begins in the client stream
        self._held_ends: deque[int] = deque()  # stream offsets of the cycle ends inside `_held`, in order
        self._answered = 0  # ReadyForQuery messages from the upstream, to compare with the gate's cycles sent
        self._is_copying_in = False  # the upstream waits for CopyData: nothing may be held
        self._is_held_full = False  # reading paused until the held bytes drain

    @property
    def holds_cycles(self) -> bool:
        """The readOnly rail is on: the session reports ReadyForQuery and CopyIn replies (`on_cycle_reply`)."""
        return self._cycles is not None

    @property
    def is_held_by_gate(self) -> bool:
        """The gate holds more client bytes than it keeps: the client is not read until they go on."""
        return self._is_paused_by_gate

    def on_relay_data(self, data: bytes) -> None:
        if self._session.pending_termination is not None:
            return  # ending (a guard rail was broken, or access revoked): nothing more goes upstream
        if self._cycles is not None:
            pos = self._stream_pos  # where `data` begins in the client stream
            self._stream_pos = pos + len(data)
            try:
                ends = [pos + end for end in self._cycles.cycle_ends(data)]
            except ProtocolViolation as exc:
                self._session.end_now(exc)
                return
            if not self._held and self.gate.ready_requested <= self._answered:  # the usual: one whole cycle
                if not ends or ends[0] == self._stream_pos:
                    self._held_start = self._stream_pos
                    self._forward(data)
                    return
                cut = ends.pop(0) - pos
                self._held_start = pos + cut
                self._forward(data[:cut])
                data = data[cut:]
            self._held_ends.extend(ends)
            self._held += data
            self._release_held()
            return
        self._forward(data)

    def _forward(self, data: bytes) -> None:
        session = self._session
        try:
            what = self._ends.violation(data) if self._ends is not None else None
        except ProtocolViolation as exc:
            session.end_now(exc)
            return
        if what is not None:
            session.terminate(AccessDenied(
                f"session ended: {rail_denied(what, 'readOnly', session.config_name)}",
                detail="it could run in a new transaction that an earlier statement may have made read-write",
                hint="end each extended-protocol batch with Sync before anything else (drivers do)"))
            return
        try:
            out = self.gate.feed(data)
        except ProtocolViolation as exc:
            session.end_now(exc)
            return
        upstream = self._upstream
        assert upstream.transport is not None
        if out:
            upstream.transport.writelines(out)
        if self.gate.is_backlog_full and session.transport is not None:
            session.transport.pause_reading()  # held until the upstream answers; resumed in on_gate_ready
            self._is_paused_by_gate = True

    def on_replies(self, found: list[tuple[int, bytes]]) -> None:
        """Inspected server messages: confirmed lexing settings go to the gate; held requests go on."""
        gate = self.gate
        for type_byte, body in found:
            if type_byte == m.PARAMETER_STATUS:
                gate.on_parameter_status(body)
            elif type_byte == m.READY_FOR_QUERY:
                self._on_gate_ready()

    def _on_gate_ready(self) -> None:
        """The upstream answered a request: held client bytes may go on now."""
        session = self._session
        try:
            out = self.gate.on_ready_for_query()
        except ProtocolViolation as exc:
            session.end_now(exc)
            return
        upstream = self._upstream
        if out and upstream.transport is not None and not upstream.is_closed:
            upstream.transport.writelines(out)
        if self._is_paused_by_gate and not self.gate.is_backlog_full:
            self._is_paused_by_gate = False
            if session.transport is not None and not session.is_closed and not upstream.is_write_paused:
                session.transport.resume_reading()

    def on_cycle_reply(self, type_byte: int) -> None:
        """readOnly rail: a ReadyForQuery ends the cycle in flight; CopyIn/CopyBoth lets CopyData through."""
        if type_byte == m.READY_FOR_QUERY:
            self._answered += 1
            self._is_copying_in = False
        else:  # CopyInResponse / CopyBothResponse: the server waits for the client's CopyData
            self._is_copying_in = True
        if self._held:
            self._release_held()

    def _release_held(self) -> None:
        """readOnly rail: forward held client bytes up to the next cycle end while no cycle is in flight."""
        assert self._cycles is not None
        session = self._session
        held = self._held
        while held and session.pending_termination is None and (
                self.gate.ready_requested <= self._answered or self._is_copying_in):
            # the next cycle end, or all that is held (a cycle still arriving: it goes on as it comes)
            end = self._held_ends.popleft() - self._held_start if self._held_ends else len(held)
            chunk = bytes(held[:end])
            del held[:end]
            self._held_start += end
            self._forward(chunk)
        if session.transport is None or session.is_closed:
            return
        if len(held) > HELD_BYTES_MAX and not self._is_held_full:
            self._is_held_full = True
            session.transport.pause_reading()  # a client that pipelines far ahead waits for the server
        elif len(held) <= HELD_BYTES_MAX and self._is_held_full:
            self._is_held_full = False
            session.transport.resume_reading()

    def _ends_transaction(self, query: bytes) -> bool:
        return not TRANSACTION_END_KINDS.isdisjoint(classify(decode_text(query, self._session.codec)).kinds)

"""Stand-ins for denied requests, and the filter that hides their extra replies from the client. No I/O.

A denied request is not answered by us: the upstream is asked to raise the error itself, in order,
so pipelining, "skip until Sync" and transaction status stay exactly PostgreSQL's own:

- a denied Query or FunctionCall becomes a Query running `DO ... RAISE EXCEPTION` (SQLSTATE 42501).
  PostgreSQL answers ErrorResponse + ReadyForQuery, as for a failing Query or FunctionCall ('E' inside
  a transaction block, which is now aborted; a later COMMIT reports ROLLBACK).
- a denied Parse (or Bind re-decided after a reload) becomes Parse(unnamed, DO ...) + Bind + Execute.
  The upstream answers ParseComplete, BindComplete, ErrorResponse, then skips every message until
  Sync, as after a failed Parse. `ResponseFilter` drops that ParseComplete and BindComplete.

Each stand-in carries a marker in the error's SCHEMA field ('s'); the filter matches replies by that
marker (never by position alone, which a client's own failing Parse/Bind/Execute would also fit), and
strips the marker and the PL/pgSQL CONTEXT from the error the client sees.
"""

from __future__ import annotations

import secrets
from collections import deque
from dataclasses import dataclass

from proxy.pgwire import messages as m
from proxy.pgwire.message_types import BackendType
from proxy.pgwire.walker import DEFAULT_MAX_MESSAGE_BYTES, FrameWalker

PARSE_COMPLETE = BackendType.PARSE_COMPLETE.value
BIND_COMPLETE = BackendType.BIND_COMPLETE.value
MARKER_PREFIX = "pgwarden.denial."
_REPLY_TYPES = frozenset({PARSE_COMPLETE, BIND_COMPLETE, m.ERROR_RESPONSE})  # inspected while a stand-in awaits
_KEPT_FIELDS = frozenset(b"SVCMDH")  # severity, code, message, detail, hint; not CONTEXT/file/line/marker


def _dollar_quote(text: str, base: str) -> str:
    """`$tag$text$tag$` with a tag that does not occur in the text (so no escaping is needed)."""
    tag = f"${base}$"
    while tag in text or text.endswith(tag[:-1]):
        tag = f"${base}_{secrets.token_hex(3)}$"
    return f"{tag}{text}{tag}"


def raise_sql(message: str, *, marker: str, detail: str = "", hint: str = "") -> str:
    """A DO block that raises SQLSTATE 42501 with this message, and `marker` as its SCHEMA field."""
    fields = [f"MESSAGE = {_dollar_quote(message, 'm')}"]
    if detail:
        fields.append(f"DETAIL = {_dollar_quote(detail, 'd')}")
    if hint:
        fields.append(f"HINT = {_dollar_quote(hint, 'h')}")
    fields.append(f"SCHEMA = {_dollar_quote(marker, 's')}")
    body = f"BEGIN RAISE EXCEPTION USING ERRCODE = '42501', {', '.join(fields)}; END"
    return f"DO {_dollar_quote(body, 'pgw')}"


def _encode_sql(sql: str, codec: str) -> bytes:
    return sql.replace("\x00", "").encode(codec, "replace") + b"\x00"


def encode_denied_query(sql: str, codec: str) -> bytes:
    """The Query sent upstream instead of a denied Query or FunctionCall."""
    return m.encode_message(m.QUERY, _encode_sql(sql, codec))


def encode_denied_extended(sql: str, codec: str) -> bytes:
    """Parse(unnamed) + Bind(unnamed) + Execute(unnamed): sent instead of a denied Parse or Bind.

    GOTCHA: the stand-in replaces the upstream's unnamed statement. PostgreSQL keeps it when a named
    Parse fails; a client that binds the unnamed statement of an earlier Sync after a denial gets our
    error instead. Drivers Parse the unnamed statement right before they Bind it, so none do.
    """
    return (
        m.encode_message(m.PARSE, b"\x00" + _encode_sql(sql, codec) + b"\x00\x00")
        + m.encode_message(m.BIND, b"\x00\x00\x00\x00\x00\x00\x00\x00")
        + m.encode_message(m.EXECUTE, b"\x00\x00\x00\x00\x00")
    )


def error_marker(body: bytes) -> str | None:
    """The SCHEMA field of an ErrorResponse body if it is one of our markers."""
    at = body.find(b"\x00s" + MARKER_PREFIX.encode())
    if at < 0:
        return None
    end = body.find(b"\x00", at + 2)
    return body[at + 2 : end].decode("ascii", "replace") if end > 0 else None


def strip_error(body: bytes) -> bytes:
    """The ErrorResponse body with only severity, code, message, detail and hint."""
    kept = [f for f in body.split(b"\x00") if f and f[0] in _KEPT_FIELDS]
    return b"\x00".join(kept) + b"\x00\x00"


@dataclass(frozen=True, slots=True)
class Expected:
    """The reply to one stand-in: its marker, whether ParseComplete+BindComplete precede the error,
    and how many ReadyForQuery the upstream had been asked for before it (its reply comes before the next)."""

    marker: str
    has_parse_bind: bool
    ready_before: int


class ResponseFilter:
    """The server→client framer used when per-query checks are on.

    `scan(chunk)` returns `(out, found)`: `out` is None when the chunk goes to the client untouched,
    else the list of pieces to write instead; `found` holds (type, body) of the inspected types, as
    `FrameScanner.scan` does. While no stand-in awaits its reply, nothing is held back but split headers
    and small inspected messages. The frame walker (`walker.py`) finds the messages.
    """

    __slots__ = ("_inspect", "_inspect_replies", "_walker", "_held", "_expected", "ready_seen")

    def __init__(self, inspect: frozenset[int], *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 whose: str = "upstream") -> None:
        self._inspect = inspect
        self._inspect_replies = inspect | _REPLY_TYPES  # walked whole while a stand-in awaits its reply
        self._walker = FrameWalker(inspect, max_message_bytes=max_message_bytes, whose=whose)
        self._held: list[bytes] = []  # ParseComplete[, BindComplete] that may be a stand-in's
        self._expected: deque[Expected] = deque()
        self.ready_seen = 0  # ReadyForQuery messages seen

    @property
    def is_at_boundary(self) -> bool:
        return self._walker.is_at_boundary and not self._held

    @property
    def is_waiting(self) -> bool:
        return bool(self._expected)

    def expect(self, expected: Expected) -> None:
        self._expected.append(expected)

    def scan(self, data: bytes) -> tuple[list[bytes | memoryview] | None, list[tuple[int, bytes]]]:
        walker = self._walker
        if self._expected or self._held or walker.is_holding_message:
            return self._scan_waiting(data)
        # Nothing awaited: only look. Inspected messages stay in the stream; a split header or an
        # inspected message that does not end in this chunk is held back until it does.
        walker.hold = self._inspect
        found = walker.scan(data)
        for type_byte, _ in found:
            if type_byte == m.READY_FOR_QUERY:
                self.ready_seen += 1
        buf = walker.last_buf
        stop = walker.last_stop
        if buf is data and stop == len(buf):
            return None, found  # the whole chunk goes on untouched
        return ([memoryview(buf)[:stop]] if stop else []), found

    def _scan_waiting(self, data: bytes) -> tuple[list[bytes | memoryview] | None, list[tuple[int, bytes]]]:
        """A stand-in awaits its reply (or a held message goes on from the last chunk): look at every
        message; hold, drop or rewrite the replies."""
        walker = self._walker
        walker.hold = self._inspect_replies
        buf, pieces, stop = walker.walk(data, True)
        found: list[tuple[int, bytes]] = []
        out: list[bytes | memoryview] = []
        view = memoryview(buf)
        run = 0  # start of the pass-through bytes not yet in `out`
        inspect = self._inspect
        for type_byte, start, end, raw in pieces:
            if raw is None:
                if self._held and type_byte >= 0:  # a message that is no stand-in's reply: release
                    if start > run:
                        out.append(view[run:start])
                    self._release(out)
                    run = start
                continue
            in_chunk = end - start == len(raw)
            if in_chunk and not self._expected and not self._held and type_byte in inspect:
                # Nothing awaited any more: just look, and leave the message in the run.
                self.ready_seen += type_byte == m.READY_FOR_QUERY
                found.append((type_byte, raw[5:]))
                continue
            if in_chunk and start > run:
                out.append(view[run:start])
            self._on_message(type_byte, raw, out, found)
            run = end
        if buf is data and run == 0 and stop == len(buf) and not out:
            return None, found
        if stop > run:
            out.append(view[run:stop])
        return out, found

    def _on_message(self, type_byte: int, raw: bytes, out: list[bytes | memoryview],
                    found: list[tuple[int, bytes]]) -> None:
        """A complete inspected message: hold, drop, rewrite or forward it."""
        if type_byte == PARSE_COMPLETE and self._expected:
            self._release(out)
            self._held.append(raw)
            return
        if type_byte == BIND_COMPLETE and len(self._held) == 1:
            self._held.append(raw)
            return
        if type_byte == m.ERROR_RESPONSE and self._expected:
            marker = error_marker(raw[5:])
            match = self._take_expected(marker) if marker is not None else None
            if match is not None:
                # Resynchronise: a Query the upstream skipped (after an error, until Sync) sent no ReadyForQuery.
                self.ready_seen = max(self.ready_seen, match.ready_before)
                if match.has_parse_bind and len(self._held) == 2:
                    self._held.clear()  # the stand-in's own ParseComplete and BindComplete
                self._release(out)
                body = strip_error(raw[5:])
                out.append(m.encode_message(m.ERROR_RESPONSE, body))
                if type_byte in self._inspect:
                    found.append((type_byte, body))
                return
        self._release(out)
        if type_byte == m.READY_FOR_QUERY:
            self.ready_seen += 1
            # A stand-in whose ReadyForQuery has come got its reply or was skipped (an earlier error).
            while self._expected and self._expected[0].ready_before < self.ready_seen:
                self._expected.popleft()
        if type_byte in self._inspect:
            found.append((type_byte, raw[5:]))
        out.append(raw)

    def _take_expected(self, marker: str) -> Expected | None:
        for i, expected in enumerate(self._expected):
            if expected.marker == marker:
                for _ in range(i + 1):  # replies come in order: earlier stand-ins were skipped
                    self._expected.popleft()
                return expected
        return None

    def _release(self, out: list[bytes | memoryview]) -> None:
        if self._held:
            out.extend(self._held)
            self._held.clear()

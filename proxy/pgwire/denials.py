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
import struct
from collections import deque
from dataclasses import dataclass

from proxy.pgwire import messages as m
from proxy.pgwire.errors import ProtocolViolation
from proxy.pgwire.framing import DEFAULT_MAX_MESSAGE_BYTES

_HEADER = struct.Struct("!Bi")
PARSE_COMPLETE = ord("1")
BIND_COMPLETE = ord("2")
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
    and small inspected messages.
    """

    __slots__ = ("_inspect", "_max", "_whose", "_skip", "_partial", "_held", "_expected", "ready_seen")

    def __init__(self, inspect: frozenset[int], *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 whose: str = "upstream") -> None:
        self._inspect = inspect
        self._max = max_message_bytes
        self._whose = whose
        self._skip = 0  # bytes still to come of a message already forwarded in part
        self._partial = bytearray()  # an incomplete header or inspected message, not yet forwarded
        self._held: list[bytes] = []  # ParseComplete[, BindComplete] that may be a stand-in's
        self._expected: deque[Expected] = deque()
        self.ready_seen = 0  # ReadyForQuery messages seen

    @property
    def is_at_boundary(self) -> bool:
        return not self._skip and not self._partial and not self._held

    @property
    def is_waiting(self) -> bool:
        return bool(self._expected)

    def expect(self, expected: Expected) -> None:
        self._expected.append(expected)

    def scan(self, data: bytes) -> tuple[list[bytes | memoryview] | None, list[tuple[int, bytes]]]:
        found: list[tuple[int, bytes]] = []
        out: list[bytes | memoryview] = []
        view = memoryview(data)
        n = len(data)
        pos = 0
        run = 0  # start of the pass-through bytes not yet in `out`
        if self._skip:
            pos = min(self._skip, n)  # the rest of a message already begun: part of the first run
            self._skip -= pos
        elif self._partial:
            pos = run = self._continue_partial(view, out, found)
            if self._partial:
                return out, found
        unpack = _HEADER.unpack_from
        inspect = self._inspect
        replies = _REPLY_TYPES if self._expected else frozenset()
        limit = self._max + 4
        while pos < n:
            if n - pos < 5:
                self._partial = bytearray(view[pos:])
                break
            type_byte, length = unpack(data, pos)
            if length < 4 or length > limit:
                self._check_length(type_byte, length)
            end = pos + 1 + length
            if type_byte in inspect or (type_byte in replies and self._expected):
                if end <= n and not self._expected and not self._held:
                    # Nothing awaited: just look, and leave the message in the run.
                    self.ready_seen += type_byte == m.READY_FOR_QUERY
                    found.append((type_byte, data[pos + 5 : end]))
                    pos = end
                    continue
                if pos > run:
                    out.append(view[run:pos])
                run = pos
                if end > n:
                    self._partial = bytearray(view[pos:])
                    break
                self._on_message(type_byte, data[pos:end], out, found)
                run = end
            elif self._held:
                if pos > run:
                    out.append(view[run:pos])
                self._release(out)
                run = pos
            if end > n:
                self._skip = end - n
                pos = n
                break
            pos = end
        stop = min(pos, n)
        if run == 0 and stop == n and not out:
            return None, found  # the whole chunk goes on untouched
        if stop > run:
            out.append(view[run:stop])
        return out, found

    def _continue_partial(self, view: memoryview, out: list[bytes | memoryview],
                          found: list[tuple[int, bytes]]) -> int:
        """Complete a header or inspected message begun in an earlier chunk; returns bytes consumed."""
        partial = self._partial
        n = len(view)
        pos = 0
        if len(partial) < 5:
            pos = min(5 - len(partial), n)
            partial += view[:pos]
            if len(partial) < 5:
                return pos
        type_byte: int
        length: int
        type_byte, length = _HEADER.unpack_from(partial, 0)
        self._check_length(type_byte, length)
        take = min(length + 1 - len(partial), n - pos)
        if self._is_inspected(type_byte):
            partial += view[pos : pos + take]
            if len(partial) == length + 1:
                self._partial = bytearray()
                self._on_message(type_byte, bytes(partial), out, found)
            return pos + take
        # A pass-through message whose header was split: its header now, its body as it comes.
        self._release(out)
        out.append(bytes(partial))
        self._partial = bytearray()
        if take:
            out.append(view[pos : pos + take])
        self._skip = length + 1 - len(partial) - take
        return pos + take

    def _is_inspected(self, type_byte: int) -> bool:
        if type_byte in self._inspect:
            return True
        return bool(self._expected) and type_byte in _REPLY_TYPES

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

    def _check_length(self, type_byte: int, length: int) -> None:
        if length < 4 or length - 4 > self._max:
            raise ProtocolViolation(f"invalid length {length} in message type {chr(type_byte)!r}", whose=self._whose)

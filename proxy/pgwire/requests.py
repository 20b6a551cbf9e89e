"""Client requests a per-query policy decides: split them out of the relayed stream and decode them. No I/O.

`RequestSplitter` walks message headers like `framing.FrameScanner`, but hands back positions, so
a caller can forward runs of untouched messages as slices and replace a held message with others.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from proxy.pgwire.errors import ProtocolViolation
from proxy.pgwire.framing import DEFAULT_MAX_MESSAGE_BYTES

_HEADER = struct.Struct("!Bi")
_I32 = struct.Struct("!i")
CONTINUED = -1  # piece type: more bytes of the pass-through message the previous chunk began


@dataclass(frozen=True, slots=True)
class Parse:
    """Parse: statement name (b"" is the unnamed statement) and query text, both raw bytes."""

    name: bytes
    query: bytes


@dataclass(frozen=True, slots=True)
class Bind:
    portal: bytes
    statement: bytes


@dataclass(frozen=True, slots=True)
class Close:
    is_statement: bool  # 'S' closes a prepared statement, 'P' a portal
    name: bytes


def _cstring(body: bytes, offset: int, what: str) -> tuple[bytes, int]:
    end = body.find(b"\x00", offset)
    if end < 0:
        raise ProtocolViolation(f"{what} is not NUL-terminated")
    return body[offset:end], end + 1


def parse_query(body: bytes) -> bytes:
    """The SQL text of a Query body, without its NUL."""
    return _cstring(body, 0, "Query string")[0]


def parse_parse(body: bytes) -> Parse:
    name, pos = _cstring(body, 0, "Parse statement name")
    query, _ = _cstring(body, pos, "Parse query string")
    return Parse(name, query)


def parse_bind(body: bytes) -> Bind:
    portal, pos = _cstring(body, 0, "Bind portal name")
    statement, _ = _cstring(body, pos, "Bind statement name")
    return Bind(portal, statement)


def parse_close(body: bytes) -> Close:
    if not body or body[0] not in b"SP":
        raise ProtocolViolation("Close must name a statement ('S') or a portal ('P')")
    return Close(body[0] == ord("S"), _cstring(body, 1, "Close name")[0])


def parse_execute(body: bytes) -> bytes:
    """The portal name an Execute runs (b"" is the unnamed portal)."""
    return _cstring(body, 0, "Execute portal name")[0]


def parse_function_call(body: bytes) -> int:
    """The function OID a FunctionCall invokes."""
    if len(body) < 4:
        raise ProtocolViolation("FunctionCall is too short")
    return int(_I32.unpack_from(body, 0)[0]) & 0xFFFFFFFF


class RequestSplitter:
    """Split a client stream into pass-through pieces and held messages.

    `split(chunk)` returns `(buf, pieces)`. A piece is `(type, start, end, held)`. For a pass-through
    piece `held` is None and `buf[start:end]` are its bytes; a message that spans chunks goes on in
    the next chunk as a piece of type `CONTINUED`. For a held message `held` is the whole message
    (header and body) as bytes, and `end` is where the chunk goes on after it. Held types are
    buffered until complete, bounded by `max_message_bytes`.
    """

    __slots__ = ("hold", "_max", "_skip", "_partial")

    def __init__(self, hold: frozenset[int], *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.hold = hold  # callers may swap this set between chunks
        self._max = max_message_bytes
        self._skip = 0  # bytes still to come of a pass-through message already begun
        self._partial = bytearray()  # an incomplete header or held message, not yet handed out

    @property
    def is_at_boundary(self) -> bool:
        return not self._skip and not self._partial

    def reset(self) -> None:
        """Forget the rest of the last chunk (the caller keeps those bytes and splits them again later)."""
        self._skip = 0
        self._partial = bytearray()

    def split(self, data: bytes) -> tuple[bytes, list[tuple[int, int, int, bytes | None]]]:
        pieces: list[tuple[int, int, int, bytes | None]] = []
        pos = 0
        if self._skip:
            take = min(self._skip, len(data))
            self._skip -= take
            pieces.append((CONTINUED, 0, take, None))
            pos = take
        elif self._partial:
            if len(self._partial) < 5:  # a split header: a few bytes, join them to the chunk
                data = bytes(self._partial) + data
                self._partial = bytearray()
            else:
                pos = self._continue_held(data, pieces)
                if self._partial:
                    return data, pieces
        n = len(data)
        unpack = _HEADER.unpack_from
        hold = self.hold
        limit = self._max + 4
        while pos < n:
            if n - pos < 5:
                self._partial = bytearray(data[pos:])
                break
            type_byte, length = unpack(data, pos)
            if length < 4 or length > limit:
                self._check_length(type_byte, length)
            end = pos + 1 + length
            if type_byte in hold:
                if end > n:
                    self._partial = bytearray(data[pos:])
                    break
                pieces.append((type_byte, pos, end, data[pos:end]))
            elif end <= n:
                pieces.append((type_byte, pos, end, None))
            else:
                pieces.append((type_byte, pos, n, None))
                self._skip = end - n
                break
            pos = end
        return data, pieces

    def _continue_held(self, data: bytes, pieces: list[tuple[int, int, int, bytes | None]]) -> int:
        """Add to a held message begun in an earlier chunk; returns the bytes consumed."""
        partial = self._partial
        length: int = _I32.unpack_from(partial, 1)[0]
        take = min(length + 1 - len(partial), len(data))
        partial += data[:take]
        if len(partial) == length + 1:
            pieces.append((partial[0], 0, take, bytes(partial)))  # end: where the chunk goes on
            self._partial = bytearray()
        return take

    def _check_length(self, type_byte: int, length: int) -> None:
        if length < 4:
            raise ProtocolViolation(f"invalid length {length} in message type {chr(type_byte)!r}")
        if length - 4 > self._max:
            raise ProtocolViolation(
                f"message type {chr(type_byte)!r} of {length - 4} bytes exceeds the limit of {self._max} bytes"
            )


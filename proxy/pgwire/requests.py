"""Client requests a per-query policy decides: split them out of the relayed stream and decode them. No I/O.

`RequestSplitter` is the frame walker (`walker.py`) seen from the gate: it hands back positions, so a
caller can forward runs of untouched messages as slices and replace a held message with others.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from proxy.pgwire.errors import ProtocolViolation
from proxy.pgwire.walker import CONTINUED, FrameWalker

__all__ = ["CONTINUED", "Bind", "Close", "Parse", "RequestSplitter", "parse_bind", "parse_close", "parse_execute",
           "parse_function_call", "parse_parse", "parse_query"]

_I32 = struct.Struct("!i")


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


class RequestSplitter(FrameWalker):
    """Split a client stream into pass-through pieces and held messages.

    `split(chunk)` returns `(buf, pieces)`. A piece is `(type, start, end, held)`. For a pass-through
    piece `held` is None and `buf[start:end]` are its bytes; a message that spans chunks goes on in
    the next chunk as a piece of type `CONTINUED`. For a held message `held` is the whole message
    (header and body) as bytes, and `end` is where the chunk goes on after it. Held types (`hold`,
    which callers may swap between chunks) are buffered until complete, bounded by `max_message_bytes`.
    """

"""Split a PostgreSQL byte stream into frames. Bounded; no sockets.

Two readers, for two phases of a connection, both on the one header walker in `walker.py`:
- `MessageReader` buffers and decodes whole messages during startup and authentication, where
  every message matters and there are few of them (h11 style: `feed()`, then `next_*()`).
- `FrameScanner` runs on the relay path. It walks message headers only, skipping bodies it does
  not inspect without copying them, and hands back whole bodies only for the types it was asked
  to inspect (`scan(chunk)`). Callers forward the original chunk untouched.
"""

from __future__ import annotations

import struct

from proxy.pgwire.errors import MessageTooLarge, ProtocolViolation
from proxy.pgwire.messages import StartupPacket, parse_startup_packet
from proxy.pgwire.walker import DEFAULT_MAX_MESSAGE_BYTES, FrameWalker, frame_length

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "MAX_STARTUP_PACKET_BYTES", "FrameScanner", "MessageReader", "MessageTooLarge"]

MAX_STARTUP_PACKET_BYTES = 10_000  # PostgreSQL's own MAX_STARTUP_PACKET_LENGTH
_I32 = struct.Struct("!i")

# The relay's view of the walker: `scan(chunk)` returns (type, body) of the inspected messages, and
# `is_at_boundary` says when a message of our own may be injected.
FrameScanner = FrameWalker


class MessageReader:
    """Buffered reader of whole messages: the startup packet, then typed messages.

    With `bounded=True` (a client that has not authenticated) at most one message of the limit is ever
    buffered: a chunk that would go over is dropped and the next read raises MessageTooLarge, so a
    16 MiB "password" costs the proxy nothing but the time to refuse it.
    """

    __slots__ = ("_buf", "_max", "_whose", "_max_buffered", "_overflowed")

    def __init__(self, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, whose: str = "client",
                 bounded: bool = False) -> None:
        self._buf = bytearray()
        self._max = max_message_bytes
        self._whose = whose
        self._max_buffered: int | None = None
        self._overflowed = False
        if bounded:
            self._max_buffered = 5 + max(max_message_bytes, MAX_STARTUP_PACKET_BYTES)

    def relax(self, max_message_bytes: int) -> None:
        """The peer authenticated: the post-login limit applies and the buffer is no longer bounded."""
        self._check_overflow()  # bytes were dropped: what is buffered must never reach the relay
        self._max = max_message_bytes
        self._max_buffered = None

    def feed(self, data: bytes) -> None:
        if self._max_buffered is not None and len(self._buf) + len(data) > self._max_buffered:
            # Keep what fits (a header says how large the message claims to be); drop the rest, and the
            # next read refuses the connection.
            self._overflowed = True
            data = data[: max(0, self._max_buffered - len(self._buf))]
        self._buf += data

    def _check_overflow(self) -> None:
        if self._overflowed:
            raise MessageTooLarge(f"more than {self._max_buffered} bytes sent before authentication",
                                  whose=self._whose)

    def next_startup(self) -> StartupPacket | None:
        """The untyped first packet, or None if more data is needed."""
        if len(self._buf) < 4:
            self._check_overflow()
            return None
        length = _I32.unpack_from(self._buf, 0)[0]
        if length < 8 or length > MAX_STARTUP_PACKET_BYTES:
            raise ProtocolViolation(f"invalid startup packet length {length}", whose=self._whose)
        if len(self._buf) < length:
            self._check_overflow()
            return None
        body = bytes(self._buf[4:length])
        del self._buf[:length]
        return parse_startup_packet(body)

    def next_message(self) -> tuple[int, bytes] | None:
        """(type byte, body) of the next typed message, or None if more data is needed."""
        length = frame_length(self._buf, 0, self._max, self._whose)
        if length < 0:
            self._check_overflow()
            return None
        type_byte = self._buf[0]
        if len(self._buf) < length + 1:
            self._check_overflow()
            return None
        body = bytes(self._buf[5 : length + 1])
        del self._buf[: length + 1]
        return type_byte, body

    def next_byte(self) -> int | None:
        """One raw byte (the server's answer to SSLRequest), or None if none is buffered."""
        if not self._buf:
            return None
        value = self._buf[0]
        del self._buf[:1]
        return value

    def take_rest(self) -> bytes:
        """Everything buffered and not yet consumed (handed to the relay when it starts)."""
        rest = bytes(self._buf)
        self._buf.clear()
        return rest

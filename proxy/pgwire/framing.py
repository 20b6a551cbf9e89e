"""Split a PostgreSQL byte stream into frames. Bounded; no sockets.

Two readers, for two phases of a connection:
- `MessageReader` buffers and decodes whole messages during startup and authentication, where
  every message matters and there are few of them (h11 style: `feed()`, then `next_*()`).
- `FrameScanner` runs on the relay path. It walks message headers only, skipping bodies it does
  not inspect without copying them, and hands back whole bodies only for the types it was asked
  to inspect. Callers forward the original chunk untouched.
"""

from __future__ import annotations

import struct

from proxy.pgwire.errors import ProtocolViolation
from proxy.pgwire.messages import StartupPacket, parse_startup_packet

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
MAX_STARTUP_PACKET_BYTES = 10_000  # PostgreSQL's own MAX_STARTUP_PACKET_LENGTH
_HEADER = struct.Struct("!Bi")
_I32 = struct.Struct("!i")


class MessageTooLarge(ProtocolViolation):
    """A message over the reader's limit, or more unread bytes than one such message (no more is buffered)."""


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
        if len(self._buf) < 5:
            self._check_overflow()
            return None
        type_byte, length = _HEADER.unpack_from(self._buf, 0)
        if length < 4:
            raise ProtocolViolation(f"invalid message length {length}", whose=self._whose)
        if length - 4 > self._max:
            raise MessageTooLarge(
                f"message of {length - 4} bytes exceeds the limit of {self._max} bytes", whose=self._whose
            )
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


class FrameScanner:
    """Walk message boundaries in a relayed stream; collect bodies of inspected types only.

    `scan(chunk)` returns the (type, body) of every inspected message that completed inside the
    chunk. `is_at_boundary` is true when the stream so far ends exactly between messages, which
    is when a message of our own may be injected.
    """

    __slots__ = ("_inspect", "_max", "_whose", "_skip", "_head", "_collect_type", "_collect", "_want")

    def __init__(
        self,
        inspect: frozenset[int],
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        whose: str = "client",
    ) -> None:
        self._inspect = inspect
        self._max = max_message_bytes
        self._whose = whose
        self._skip = 0  # body bytes of the current uninspected message still to pass over
        self._head = b""  # a header split across chunks (fewer than 5 bytes)
        self._collect_type = -1  # type of an inspected message whose body is still arriving
        self._collect = bytearray()
        self._want = 0  # body bytes still missing from _collect

    @property
    def is_at_boundary(self) -> bool:
        return not self._skip and not self._head and self._collect_type < 0

    def scan(self, data: bytes) -> list[tuple[int, bytes]]:
        found: list[tuple[int, bytes]] = []
        n = len(data)
        pos = 0
        if self._skip:
            if self._skip >= n:
                self._skip -= n
                return found
            pos = self._skip
            self._skip = 0
        elif self._collect_type >= 0:
            take = min(self._want, n)
            self._collect += data[:take]
            self._want -= take
            pos = take
            if self._want:
                return found
            found.append((self._collect_type, bytes(self._collect)))
            self._collect_type = -1
            self._collect = bytearray()
        elif self._head:
            data = self._head + data
            n = len(data)
            self._head = b""
        unpack = _HEADER.unpack_from
        inspect = self._inspect
        while pos < n:
            if n - pos < 5:
                self._head = bytes(data[pos:])
                break
            type_byte, length = unpack(data, pos)
            if length < 4 or length - 4 > self._max:
                self._raise_bad_length(type_byte, length)
            end = pos + 1 + length
            if type_byte in inspect:
                if end <= n:
                    found.append((type_byte, data[pos + 5 : end]))
                else:
                    self._collect_type = type_byte
                    self._collect = bytearray(data[pos + 5 :])
                    self._want = end - n
                    break
            elif end > n:
                self._skip = end - n
                break
            pos = end
        return found

    def _raise_bad_length(self, type_byte: int, length: int) -> None:
        if length < 4:
            raise ProtocolViolation(f"invalid length {length} in message type {chr(type_byte)!r}", whose=self._whose)
        raise ProtocolViolation(
            f"message type {chr(type_byte)!r} of {length - 4} bytes exceeds the limit of {self._max} bytes",
            whose=self._whose,
        )

"""A Protocol that reads whole messages while logging in, then relays raw bytes to a peer.

Both sides of a session use it: during startup a coroutine awaits `read(...)`; once the relay
starts, `data_received` forwards each chunk to the peer transport as it arrives (no queue), and
flow control pauses the peer when a side stops reading.

It is a BufferedProtocol on purpose. With a plain Protocol, uvloop's (and asyncio's) TLS layer calls
`SSLObject.read(256 KiB)` for every record: glibc serves that from a fresh mmap, shrinks it with
mremap and unmaps it, three syscalls and a page fault per read. In a TLS echo test that more than
doubled the CPU per round trip (glibc's adaptive mmap threshold hides it only some of the time;
docs/performance.md, 2026-11-29). With `get_buffer` the TLS layer decrypts into one reused buffer
instead, and we copy out just the bytes that arrived.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar, cast

from proxy.pgwire.framing import DEFAULT_MAX_MESSAGE_BYTES, MessageReader

T = TypeVar("T")
READ_BUFFER_BYTES = 256 * 1024  # as much as uvloop reads at once; one TLS read may hand over this much
# PostgreSQL never sends a TLS record with more than 8 KiB of payload (its send buffer is 8192 bytes), and libpq
# depends on it: a bigger record can leave plaintext inside OpenSSL while the socket is no longer readable, and
# psycopg's Copy.read() then waits for ever. uvloop's TLS layer makes one record per buffer written (up to
# 16 KiB), so writes to a TLS client are cut into pieces of this size.
TLS_RECORD_PAYLOAD = 8192
_per_thread = threading.local()


def _read_buffer() -> memoryview:
    """The event loop thread's read buffer, shared by all its connections: a read is copied out of it
    (`buffer_updated`) before the loop reads anything else, so one buffer per thread is enough."""
    view: memoryview | None = getattr(_per_thread, "read_buffer", None)
    if view is None:
        view = _per_thread.read_buffer = memoryview(bytearray(READ_BUFFER_BYTES))
    return view


class Relay(Protocol):
    """Where a connection's relayed chunks go; chosen once, when the relay starts."""

    def on_relay_data(self, data: bytes) -> None: ...


class PgConnection(asyncio.BufferedProtocol):
    """One socket. Relayed chunks go to `self.relay.on_relay_data`: the connection itself unless `start_relay`
    is given another relay (proxy/relay.py), so the choice is made once and each chunk is one method call."""

    def __init__(self, *, whose: str, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 bounded: bool = False) -> None:
        self._read_view = _read_buffer()  # protocols are built on the loop's thread, which does the reads
        self.transport: asyncio.Transport | None = None
        # bounded: never buffer more than one message of the limit (a client that has not authenticated yet)
        self.reader = MessageReader(max_message_bytes=max_message_bytes, whose=whose, bounded=bounded)
        self.peer: PgConnection | None = None  # set when relaying
        self.is_relaying = False
        self.relay: Relay = self  # where relayed chunks go; chosen in start_relay
        self.is_closed = False
        self.bytes_received = 0
        self._waiter: asyncio.Future[None] | None = None
        self._lost_exc: BaseException | None = None
        self._write_paused = False
        self.max_write_bytes = 0  # > 0: cut writes into pieces of at most this many bytes (TLS records)

    # --- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._read_view

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self._read_view[:nbytes]))

    def data_received(self, data: bytes) -> None:
        self.bytes_received += len(data)
        if self.is_relaying:
            self.relay.on_relay_data(data)
            return
        self.reader.feed(data)
        self._wake()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.is_closed = True
        self._lost_exc = exc or ConnectionResetError("connection closed")
        self._wake()
        self.on_closed()

    @property
    def is_write_paused(self) -> bool:
        return self._write_paused

    def pause_writing(self) -> None:
        # Our socket is backed up: stop reading from the side that feeds it.
        self._write_paused = True
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self.peer is not None and self.peer.transport is not None and not self.peer.is_closed:
            self.peer.transport.resume_reading()

    # --- startup phase -------------------------------------------------------------------
    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def read(self, take: Callable[[], T | None]) -> T:
        """Await until `take()` (a MessageReader method) returns something."""
        while True:
            item = take()
            if item is not None:
                return item
            if self.is_closed:
                raise ConnectionResetError("connection closed") from self._lost_exc
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.is_closed:
            limit = self.max_write_bytes
            if limit and len(data) > limit:
                view = memoryview(data)
                self.transport.writelines([view[i:i + limit] for i in range(0, len(data), limit)])
            else:
                self.transport.write(data)

    def write_pieces(self, pieces: Sequence[bytes | memoryview]) -> None:
        """Write several buffers at once, each cut to `max_write_bytes` when that is set."""
        if self.transport is None or self.is_closed:
            return
        limit = self.max_write_bytes
        if limit and any(len(p) > limit for p in pieces):
            cut: list[bytes | memoryview] = []
            for piece in pieces:
                view = memoryview(piece)
                cut.extend(view[i:i + limit] for i in range(0, len(view), limit))
            pieces = cut
        self.transport.writelines(pieces)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None and not self.is_closed:
            self.transport.abort()

    # --- relay phase ---------------------------------------------------------------------
    def start_relay(self, peer: PgConnection, relay: Relay | None = None) -> None:
        """Forward every later chunk to `peer` through `relay` (default: this connection); buffered bytes go first."""
        self.peer = peer
        if relay is not None:
            self.relay = relay
        self.is_relaying = True
        rest = self.reader.take_rest()
        if rest:
            self.relay.on_relay_data(rest)

    def on_relay_data(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)

    def on_closed(self) -> None:
        """Called once when the socket is gone."""

"""A Protocol that reads whole messages while logging in, then relays raw bytes to a peer.

Both sides of a session use it: during startup a coroutine awaits `read(...)`; once the relay
starts, `data_received` forwards each chunk to the peer transport as it arrives (no queue, no
copy), and flow control pauses the peer when a side stops reading.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import TypeVar, cast

from proxy.pgwire.framing import DEFAULT_MAX_MESSAGE_BYTES, MessageReader

T = TypeVar("T")


class PgConnection(asyncio.Protocol):
    """One socket. Subclasses override `on_relay_data` for the hot path."""

    def __init__(self, *, whose: str, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader = MessageReader(max_message_bytes=max_message_bytes, whose=whose)
        self.peer: PgConnection | None = None  # set when relaying
        self.is_relaying = False
        self.is_closed = False
        self.bytes_received = 0
        self._waiter: asyncio.Future[None] | None = None
        self._lost_exc: BaseException | None = None
        self._write_paused = False

    # --- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.bytes_received += len(data)
        if self.is_relaying:
            self.on_relay_data(data)
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
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None and not self.is_closed:
            self.transport.abort()

    # --- relay phase ---------------------------------------------------------------------
    def start_relay(self, peer: PgConnection) -> None:
        """Forward every later chunk to `peer`; bytes already buffered go first."""
        self.peer = peer
        self.is_relaying = True
        rest = self.reader.take_rest()
        if rest:
            self.on_relay_data(rest)

    def on_relay_data(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)

    def on_closed(self) -> None:
        """Called once when the socket is gone."""

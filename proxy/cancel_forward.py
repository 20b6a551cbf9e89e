"""CancelRequests between replicas behind one balancer.

libpq sends a cancel on a new connection, which the balancer may hand to any replica. A replica that did not
issue the BackendKeyData forwards the (process id, secret key) pair to every other live replica's cancel inbox
(their addresses come from the replica directory in the state store); the one that issued it cancels on its
upstream, the others find no such key and drop it. A forward is signed with HMAC-SHA256 under a key derived
from the state key (which replicas share already), carries its time and is refused outside CANCEL_WINDOW_S or
when seen before, so nobody without the key can cancel through an inbox, and a captured forward cannot be
replayed against a later query.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import struct
import time
from collections.abc import Awaitable, Callable, Iterable

from proxy.upstream import CANCEL_DELIVERY_TIMEOUT_S

log = logging.getLogger("pgwarden.replicas")

CANCEL_WINDOW_S = 10.0
FORWARD_TIMEOUT_S = 2.0
_HEADER = struct.Struct("!4sBiiq")  # magic, version, process id, secret key, unix time in ms
_MAGIC, _VERSION = b"PGWC", 1
_MAC_BYTES = 32
FORWARD_BYTES = _HEADER.size + _MAC_BYTES


def forwarding_key(state_key: bytes) -> bytes:
    """The replicas' cancel-forwarding key, derived from the state key so that no new secret must be shared."""
    return hmac.new(state_key, b"pgwarden replica cancel forwarding v1", hashlib.sha256).digest()


def encode_forward(key: bytes, process_id: int, secret_key: int, *, now_s: float | None = None) -> bytes:
    header = _HEADER.pack(_MAGIC, _VERSION, process_id, secret_key, int((now_s or time.time()) * 1000))
    return header + hmac.new(key, header, hashlib.sha256).digest()


class ForwardVerifier:
    """Checks forwards: signature, freshness, and once only. Mutable: it remembers what it saw in the window."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._seen: dict[bytes, float] = {}  # MAC -> when it expires from the window

    def parse(self, data: bytes, *, now_s: float | None = None) -> tuple[int, int] | None:
        """The (process id, secret key) of a good forward, or None."""
        if len(data) != FORWARD_BYTES:
            return None
        header, mac = data[:_HEADER.size], data[_HEADER.size:]
        if not hmac.compare_digest(mac, hmac.new(self._key, header, hashlib.sha256).digest()):
            return None
        magic, version, process_id, secret_key, at_ms = _HEADER.unpack(header)
        now = now_s or time.time()
        if magic != _MAGIC or version != _VERSION or abs(now - at_ms / 1000) > CANCEL_WINDOW_S:
            return None
        for old in [m for m, until in self._seen.items() if until < now]:
            del self._seen[old]
        if mac in self._seen:
            return None
        self._seen[mac] = now + 2 * CANCEL_WINDOW_S
        return process_id, secret_key


class CancelInbox:
    """A TCP listener for forwarded cancels; a good one is handed to `on_cancel` (which must not forward again)."""

    def __init__(self, key: bytes, on_cancel: Callable[[int, int], Awaitable[object]]) -> None:
        self._verifier = ForwardVerifier(key)
        self._on_cancel = on_cancel
        self._server: asyncio.AbstractServer | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._serve, host, port)
        bound = self._server.sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            data = await asyncio.wait_for(reader.readexactly(FORWARD_BYTES), FORWARD_TIMEOUT_S)
            pair = self._verifier.parse(data)
            if pair is None:
                log.warning("cancel inbox: refused a forward from %s (bad signature, stale or replayed)",
                            writer.get_extra_info("peername"))
            else:
                await self._on_cancel(*pair)
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def forward_cancel(key: bytes, addresses: Iterable[str], process_id: int, secret_key: int) -> int:
    """Send a signed forward to each HOST:PORT; returns how many inboxes took it. Never raises."""
    message = encode_forward(key, process_id, secret_key)

    async def send(address: str) -> bool:
        host, _, port = address.rpartition(":")
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host.strip("[]"), int(port)),
                                                    FORWARD_TIMEOUT_S)
            try:
                writer.write(message)
                await asyncio.wait_for(writer.drain(), FORWARD_TIMEOUT_S)
                # An inbox closes once its upstream has the cancel (or it was not the owner); the client's cancel
                # connection stays open until then, as PostgreSQL's does.
                await asyncio.wait_for(reader.read(), CANCEL_DELIVERY_TIMEOUT_S)
            finally:
                writer.close()
            return True
        except (OSError, TimeoutError, ValueError) as exc:
            # str(TimeoutError()) is empty: say what happened instead.
            log.warning("could not forward a cancel request to replica inbox %s: %s", address, str(exc) or "timed out")
            return False

    results = await asyncio.gather(*(send(a) for a in addresses))
    return sum(results)

"""A fake PostgreSQL server that tries to get the upstream password: an asyncio server on 127.0.0.1 run on its
own loop in a thread, so blocking clients (psycopg through the proxy) and async ones (the health probe) can
both meet it. It writes raw protocol bytes by hand and records every byte it receives.

Behaviours (what it does after the StartupMessage; it always answers `N` to SSLRequest):
- "cleartext":       AuthenticationCleartextPassword
- "md5":             AuthenticationMD5Password with the salt `MD5_SALT`
- "trust":           AuthenticationOk straight away
- "scram-no-final":  SCRAM-SHA-256 up to SASLContinue, then AuthenticationOk without SASLFinal
- "scram-bad-final": SCRAM-SHA-256 with a SASLFinal whose server signature is made up, then AuthenticationOk
Whenever it sends AuthenticationOk it goes on as a server would (ReadyForQuery), to catch a client's queries.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager

MD5_SALT = b"\x01\x02\x03\x04"
_SSL_REQUEST = 80877103
BEHAVIOURS = ("cleartext", "md5", "trust", "scram-no-final", "scram-bad-final")


def _message(type_byte: bytes, body: bytes = b"") -> bytes:
    return type_byte + struct.pack("!i", len(body) + 4) + body


def _auth(code: int, extra: bytes = b"") -> bytes:
    return _message(b"R", struct.pack("!i", code) + extra)


def _ready() -> bytes:
    return (_message(b"S", b"server_version\x0015.0\x00") + _message(b"K", struct.pack("!ii", 4242, 7))
            + _message(b"Z", b"I"))


def md5_answers(password: str, user: str) -> list[bytes]:
    """Everything an MD5 exchange would give away: the stored hash and the salted answer."""
    inner = hashlib.md5(password.encode() + user.encode()).hexdigest()
    outer = hashlib.md5(inner.encode() + MD5_SALT).hexdigest()
    return [inner.encode(), outer.encode()]


class HostileUpstream:
    """One listening fake server; `received` holds every byte any client sent it."""

    def __init__(self, behaviour: str) -> None:
        assert behaviour in BEHAVIOURS, behaviour
        self.behaviour = behaviour
        self.received = bytearray()
        self.logins = 0  # connections that got as far as a StartupMessage
        self.port = 0
        self._lock = threading.Lock()

    def _record(self, data: bytes) -> None:
        with self._lock:
            self.received += data

    async def _read_message(self, reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
        head = await reader.readexactly(5)
        body = await reader.readexactly(struct.unpack("!i", head[1:])[0] - 4)
        self._record(head + body)
        return head[:1], body

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            length = struct.unpack("!i", await reader.readexactly(4))[0]
            body = await reader.readexactly(length - 4)
            self._record(struct.pack("!i", length) + body)
            if struct.unpack("!i", body[:4])[0] == _SSL_REQUEST:
                writer.write(b"N")  # "no TLS here": a libpq-style sslmode=prefer client goes on in the clear
                length = struct.unpack("!i", await reader.readexactly(4))[0]
                self._record(struct.pack("!i", length) + await reader.readexactly(length - 4))
            self.logins += 1
            await self._authenticate(reader, writer)
            while True:  # anything a client sends once "logged in" (its queries) is recorded too
                await self._read_message(reader)
                writer.write(_message(b"Z", b"I"))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _authenticate(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.behaviour == "cleartext":
            writer.write(_auth(3))
            await self._read_message(reader)
        elif self.behaviour == "md5":
            writer.write(_auth(5, MD5_SALT))
            await self._read_message(reader)
        elif self.behaviour.startswith("scram"):
            writer.write(_auth(10, b"SCRAM-SHA-256\x00\x00"))
            _, initial = await self._read_message(reader)
            client_nonce = initial.rsplit(b"r=", 1)[1].decode()
            salt = base64.b64encode(secrets.token_bytes(16)).decode()
            writer.write(_auth(11, f"r={client_nonce}fake,s={salt},i=4096".encode()))
            await self._read_message(reader)  # client-final-message with its proof
            if self.behaviour == "scram-bad-final":
                writer.write(_auth(12, b"v=" + base64.b64encode(secrets.token_bytes(32))))
        writer.write(_auth(0) + _ready())
        await writer.drain()


@contextmanager
def hostile_upstreams(*behaviours: str) -> Iterator[dict[str, HostileUpstream]]:
    """Start one fake server per behaviour on 127.0.0.1 (own loop, own thread); stop them all at the end."""
    fakes = {b: HostileUpstream(b) for b in behaviours}
    loop = asyncio.new_event_loop()
    started = threading.Event()
    servers: list[asyncio.Server] = []

    async def start() -> None:
        for fake in fakes.values():
            server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
            fake.port = server.sockets[0].getsockname()[1]
            servers.append(server)
        started.set()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        loop.run_forever()

    thread = threading.Thread(target=run, name="hostile-upstreams", daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield fakes
    finally:
        async def stop() -> None:
            for server in servers:
                server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()

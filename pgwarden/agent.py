"""The `pgwarden connect` agent: local ports that log in to the proxy with the saved Session's token.

Per local client: answer SSLRequest/GSSENCRequest with 'N' (the hop is loopback), read its StartupMessage,
open TLS to the proxy (verifying the cluster's CA), send a StartupMessage for the mapped service as the
session's user, answer the proxy's cleartext-password request with the current access token (the local
client never sees that request), then relay bytes both ways untouched. A background task refreshes the
token before it expires (POST /v1/auth/refresh) and saves it, so a connection an hour later still works.
Only the user who runs the agent is served: a loopback client whose socket another uid owns is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from pgwarden.credentials import (
    CredentialsError,
    ProxyEndpoint,
    check_not_expired,
    proxy_endpoint,
    refusal_reason,
    session_ended,
)
from pgwarden.peer_owner import OwnerUnknown, peer_uid
from pgwarden.sessioncredential import SESSION_ENDED, SessionCredential, SessionEnded
from proxy.pgwire import messages as m
from proxy.pgwire.errors import ProtocolViolation
from proxy.pgwire.framing import FrameScanner, MessageReader

log = logging.getLogger("pgwarden.agent")

CONNECT_TIMEOUT_S = 10.0
STARTUP_TIMEOUT_S = 60.0
CHUNK_BYTES = 64 * 1024
UPSTREAM_MAX_MESSAGE_BYTES = 1 << 30


class Refusal(Exception):
    """Why a local client cannot be connected; sent to it as one FATAL ErrorResponse."""

    def __init__(self, message: str, *, code: str = "08006", detail: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.message, self.code, self.detail, self.hint = message, code, detail, hint

    def encode(self) -> bytes:
        return m.encode_error_response(self.message, code=self.code, detail=self.detail, hint=self.hint)


@dataclass(frozen=True, slots=True)
class Mapping:
    service: str
    port: int


class Agent:
    """Listens on 127.0.0.1 (and ::1) per mapping; one Session's credential serves every connection."""

    def __init__(self, credentials_file: Path, mappings: list[Mapping], *, proxy_host: str | None = None,
                 proxy_port: int | None = None, ca_file: Path | None = None, socket_dir: Path | None = None) -> None:
        self.credentials_file = credentials_file
        self.mappings = mappings
        self.socket_dir = socket_dir  # also serve DIR/.s.PGSQL.PORT, where psql -h DIR looks
        self.credential = SessionCredential(credentials_file, say=self.say)
        self._overrides = (proxy_host, proxy_port, ca_file)
        self._http: aiohttp.ClientSession | None = None
        self._endpoint: ProxyEndpoint | None = None
        self._tls: ssl.SSLContext | None = None
        self._servers: list[asyncio.AbstractServer] = []
        self._refresher: asyncio.Task[None] | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self.uid = os.getuid()  # only this user's local clients are served (see _stranger)
        self._socket_files: list[Path] = []

    # --- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> list[tuple[Mapping, int]]:
        """Load the credential, learn the proxy, listen. Returns each mapping with its bound port."""
        credential = self.credential
        credential.load(force=True)
        check_not_expired(credential.saved)
        self._http = credential.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CONNECT_TIMEOUT_S))
        await self._check_session_alive()
        host, port, ca_file = self._overrides
        self._endpoint = await proxy_endpoint(credential.saved, self.credentials_file, self._http, host=host,
                                              port=port, ca_file=ca_file)
        self._tls = _client_context(self._endpoint)
        bound = []
        for mapping in self.mappings:
            bound.append((mapping, await self._listen(mapping)))
        self._refresher = asyncio.get_running_loop().create_task(credential.keep_fresh())
        return bound

    async def _check_session_alive(self) -> None:
        """Refuse to start on a revoked session: better one clear line now than a refusal at each psql.

        An unreachable cluster is no reason to stop: the agent keeps listening and retries, as it does later.
        """
        assert self._http is not None
        saved = self.credential.saved
        try:
            async with self._http.get(str(saved["cluster"]).rstrip("/") + "/v1/auth/whoami",
                                      headers={"Authorization": f"Bearer {saved['token']}"}) as response:
                if response.status != 401:
                    return
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return
        raise session_ended(saved, refusal_reason(str(body.get("error", "")) if isinstance(body, dict) else ""))

    async def _listen(self, mapping: Mapping) -> int:
        def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.get_running_loop().create_task(self._serve_client(mapping, reader, writer))
            self._clients.add(task)
            task.add_done_callback(self._clients.discard)

        server = await asyncio.start_server(handler, "127.0.0.1", mapping.port)
        self._servers.append(server)
        port = int(server.sockets[0].getsockname()[1])
        # `psql -h localhost` may try ::1 first; serve it too where the host has IPv6.
        with contextlib.suppress(OSError):
            self._servers.append(await asyncio.start_server(handler, "::1", port))
        if self.socket_dir is not None:
            self.socket_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            path = self.socket_path(port)
            self._servers.append(await asyncio.start_unix_server(handler, str(path)))
            path.chmod(0o600)  # the kernel's SO_PEERCRED check below stands even if the mode is widened
            self._socket_files.append(path)
        return port

    def socket_path(self, port: int) -> Path:
        assert self.socket_dir is not None
        return self.socket_dir / f".s.PGSQL.{port}"

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
        for server in self._servers:
            server.close()
        for path in self._socket_files:
            with contextlib.suppress(OSError):
                path.unlink()
        for task in list(self._clients):
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)
        if self._http is not None:
            await self._http.close()

    def say(self, text: str) -> None:
        print(f"pgwarden connect: {text}", file=sys.stderr, flush=True)

    # --- one local client ----------------------------------------------------------------------
    async def _serve_client(self, mapping: Mapping, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        upstream: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(STARTUP_TIMEOUT_S):
                stranger = self._stranger(writer)  # at once: the client's socket is listed while it is open
                local = MessageReader(whose="client")
                startup = await _read_startup(local, reader, writer)
                if startup is None:
                    return
                if stranger is not None:
                    raise stranger  # a cancel too: it would end the owner's query
                if isinstance(startup, m.CancelRequest):
                    await self._forward_cancel(startup)
                    return
                up_reader, upstream, first = await self._log_in(mapping, startup)
            writer.write(first + local.take_rest())
            await _relay(reader, writer, up_reader, upstream, on_fatal=self._on_relayed_fatal)
        except Refusal as exc:
            writer.write(exc.encode())
            if exc.code != "28000" or exc.message != SESSION_ENDED:
                self.say(f"{mapping.service}: {exc.message}" + (f" ({exc.detail})" if exc.detail else ""))
        except (ProtocolViolation, TimeoutError) as exc:
            self.say(f"{mapping.service}: local client refused: {exc}")
        except CredentialsError as exc:
            writer.write(Refusal(exc.message, code="28000", hint=exc.hint).encode())
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception as exc:  # noqa: BLE001 - one client's bug must not stop the agent
            log.exception("local client on %s failed", mapping.service)
            writer.write(Refusal(f"internal error in pgwarden connect: {type(exc).__name__}").encode())
        finally:
            for w in (writer, upstream):
                if w is not None:
                    with contextlib.suppress(Exception):
                        w.close()

    def _stranger(self, writer: asyncio.StreamWriter) -> Refusal | None:
        """A Refusal when the local client is another OS user's: the port would otherwise lend them our session.

        Only loopback TCP and our unix socket are served, so the owner of the client's socket is known: from
        /proc/net/tcp{,6}, or SO_PEERCRED. Where the OS cannot tell (no /proc), every local client is served.
        """
        sock = writer.get_extra_info("socket")
        try:
            uid = peer_uid(sock) if sock is not None else None
        except (OwnerUnknown, OSError) as exc:
            return Refusal("pgwarden connect serves only its own user, and cannot tell who this connection is from",
                           code="28000", detail=str(exc))
        if uid is None or uid == self.uid:
            return None
        return Refusal(f"pgwarden connect serves only the user who runs it (uid {self.uid}); this connection is "
                       f"from uid {uid}", code="28000",
                       hint="run your own pgwarden login and pgwarden connect")

    async def _open_proxy(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        endpoint = self._endpoint
        assert endpoint is not None and self._tls is not None
        where = f"{endpoint.host}:{endpoint.port}"
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
                writer.write(m.encode_ssl_request())
                answer = await reader.readexactly(1)
                if answer != b"S":
                    writer.close()
                    raise Refusal(f"the pgwarden proxy at {where} does not offer TLS")
                await writer.start_tls(self._tls, server_hostname=endpoint.host)
        except ssl.SSLCertVerificationError as exc:
            raise Refusal(f"the certificate of the pgwarden proxy at {where} is not trusted: {exc.verify_message}",
                          detail=f"CA from {endpoint.ca_source}", hint="log in again, or pass --ca FILE") from exc
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            raise Refusal(f"cannot reach the pgwarden proxy at {where}: {type(exc).__name__}",
                          hint="is `pgwarden up` running? pgwarden connect keeps listening; retry in a moment") \
                from exc
        return reader, writer

    async def _log_in(self, mapping: Mapping, startup: m.StartupMessage
                      ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
        """Log in to the proxy for the local client; returns the proxy stream and the bytes from AuthenticationOk on."""
        try:
            token = await self.credential.current_token()
        except SessionEnded as exc:
            raise Refusal(SESSION_ENDED, code="28000", detail=exc.reason) from exc
        reader, writer = await self._open_proxy()
        writer.write(m.encode_startup_message(self._startup_parameters(mapping, startup.parameters)))
        messages = MessageReader(max_message_bytes=UPSTREAM_MAX_MESSAGE_BYTES, whose="upstream")
        while True:
            item = messages.next_message()
            if item is None:
                data = await reader.read(CHUNK_BYTES)
                if not data:
                    writer.close()
                    raise Refusal("the pgwarden proxy closed the connection during login")
                messages.feed(data)
                continue
            type_byte, body = item
            if type_byte == m.AUTHENTICATION:
                code = int.from_bytes(body[:4], "big", signed=True)
                if code == m.AUTH_CLEARTEXT:
                    writer.write(m.encode_password_message(token.encode() + b"\x00"))  # never to the local client
                    continue
                if code == m.AUTH_OK:
                    return reader, writer, m.encode_message(type_byte, body) + messages.take_rest()
                writer.close()
                raise Refusal(f"the pgwarden proxy asked for authentication method {code}, which the agent lacks")
            if type_byte == m.ERROR_RESPONSE:
                writer.close()
                fields = m.parse_error_fields(body)
                if fields.code == "28000" and ("session" in fields.message or "expired" in fields.message):
                    self.credential.session_ended(fields.message)
                    raise Refusal(SESSION_ENDED, code="28000", detail=fields.message)
                raise Refusal(fields.message, code=fields.code, detail=fields.detail, hint=fields.hint)
            if type_byte not in (m.NOTICE_RESPONSE, m.NEGOTIATE_PROTOCOL_VERSION):
                writer.close()
                raise Refusal(f"unexpected message {chr(type_byte)!r} from the pgwarden proxy during login")

    def _startup_parameters(self, mapping: Mapping, client: dict[str, str]) -> dict[str, str]:
        """The client's parameters, with our user and `SERVICE[/DATABASE]` (libpq's default dbname is the user)."""
        params = {k: v for k, v in client.items() if k not in ("user", "database")}
        database = client.get("database", "")
        chosen = "" if database in ("", client.get("user", ""), mapping.service) else database
        return {"user": self.credential.user,
                "database": f"{mapping.service}/{chosen}" if chosen else mapping.service, **params}

    async def _forward_cancel(self, cancel: m.CancelRequest) -> None:
        with contextlib.suppress(Refusal, OSError, TimeoutError):
            reader, writer = await self._open_proxy()
            writer.write(m.encode_cancel_request(cancel.process_id, cancel.secret_key))
            # Wait for the proxy to close, as libpq does: closing first would abandon the cancel midway.
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await reader.read()
            writer.close()

    def _on_relayed_fatal(self, fields: m.ErrorFields) -> None:
        if fields.code == "28000" and "session" in fields.message:
            self.credential.session_ended(fields.message)


async def _read_startup(local: MessageReader, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> m.StartupMessage | m.CancelRequest | None:
    while True:
        packet = local.next_startup()
        if packet is None:
            data = await reader.read(CHUNK_BYTES)
            if not data:
                return None
            local.feed(data)
            continue
        if isinstance(packet, m.SSLRequest | m.GSSENCRequest):
            writer.write(b"N")  # loopback only: the hop to the proxy is the one that needs TLS
            continue
        return packet


async def _relay(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter, up_r: asyncio.StreamReader,
                 up_w: asyncio.StreamWriter, *, on_fatal: Any) -> None:
    """Copy both ways until either side closes; `drain()` is the flow control."""
    scanner = FrameScanner(frozenset({m.ERROR_RESPONSE}), max_message_bytes=UPSTREAM_MAX_MESSAGE_BYTES,
                           whose="upstream")

    async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, watch: bool) -> None:
        try:
            while data := await src.read(CHUNK_BYTES):
                if watch:
                    for _, body in scanner.scan(data):
                        fields = m.parse_error_fields(body)
                        if fields.severity == "FATAL":
                            on_fatal(fields)
                dst.write(data)
                await dst.drain()
        except (ConnectionError, ProtocolViolation):
            pass
        finally:
            dst.close()

    await asyncio.gather(pump(client_r, up_w, False), pump(up_r, client_w, True))


def _client_context(endpoint: ProxyEndpoint) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=endpoint.ca_pem) if endpoint.ca_pem else ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx

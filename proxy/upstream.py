"""Log in to the real PostgreSQL with the password held in a Secret, then hand the socket to a session.

Errors name the service and config and quote the upstream's own message; never the password.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from proxy.connection import PgConnection
from proxy.errors import PgwardenError, UpstreamUnavailable
from proxy.guardrails import startup_parameters
from proxy.pgwire import messages as m
from proxy.pgwire.auth import UpstreamAuthenticator, UpstreamAuthError, parse_authentication
from proxy.pgwire.errors import ProtocolViolation
from proxy.pgwire.framing import MessageReader
from proxy.routing import Route
from proxy.snapshot import Secret, SSLMode
from proxy.tls import tls_server_end_point, upstream_context

CONNECT_TIMEOUT_S = 10.0
# How long a process that handed a cancel to its owner (a sibling worker, another replica) waits to hear that the
# owner's send_cancel is done: send_cancel gives up after CONNECT_TIMEOUT_S, plus room for the hand-over itself.
CANCEL_DELIVERY_TIMEOUT_S = CONNECT_TIMEOUT_S + 2.0
TLS_SHUTDOWN_TIMEOUT_S = 2.0
# Startup parameters a client may not pass through: we choose user/database, replication would
# open a walsender, and _pq_ options need protocol negotiation we do not do.
_BLOCKED_PARAMETERS = frozenset({"user", "database", "replication"})
UPSTREAM_MAX_MESSAGE_BYTES = 1 << 30  # a DataRow may legitimately be up to 1 GiB


@dataclass(slots=True, kw_only=True)
class UpstreamLogin:
    """A logged-in upstream connection and what it told us during startup."""

    connection: PgConnection
    parameter_status: list[bytes] = field(default_factory=list)  # encoded ParameterStatus messages
    parameters: dict[str, str] = field(default_factory=dict)
    process_id: int = 0
    secret_key: int = 0
    is_tls: bool = False
    auth_mechanism: str = ""


def forwarded_parameters(client_parameters: Mapping[str, str]) -> dict[str, str]:
    return {
        k: v for k, v in client_parameters.items() if k not in _BLOCKED_PARAMETERS and not k.startswith("_pq_.")
    }


def _describe(route: Route) -> str:
    up = route.config.upstream
    return f'service "{route.service.name}" config "{route.config.name}" ({up.host}:{up.port})'


def ca_pem_for(route: Route, secrets: Mapping[str, Secret]) -> str | None:
    pg = route.config.postgres
    if pg.ca_secret:
        secret = secrets.get(pg.ca_secret)
        return secret.value.reveal() if secret else None
    if pg.ca_file:
        return Path(pg.ca_file).read_text()
    return None


async def open_upstream(
    route: Route,
    secrets: Mapping[str, Secret],
    client_parameters: Mapping[str, str],
    *,
    factory: Callable[[], PgConnection] | None = None,
    timeout_s: float = CONNECT_TIMEOUT_S,
) -> UpstreamLogin:
    """Connect, negotiate TLS per sslMode, authenticate, and read up to the first ReadyForQuery.

    Raises AccessDenied before connecting when the client's parameters would set a guard-railed setting.
    """
    where = _describe(route)
    # The rails' settings go last, over what the client forwarded (which may not name them at all).
    params = startup_parameters(forwarded_parameters(client_parameters), route.config.postgres.guard_rails,
                                config=route.config.name)
    try:
        async with asyncio.timeout(timeout_s):
            return await _login(route, secrets, params, factory or _default_factory)
    except TimeoutError as exc:
        raise UpstreamUnavailable(f"timed out connecting to the upstream of {where}") from exc
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        if isinstance(exc, ssl.SSLCertVerificationError):
            reason = f"certificate verification failed: {exc.verify_message}"
        raise UpstreamUnavailable(f"cannot reach the upstream of {where}: {reason}") from exc
    except UpstreamAuthError as exc:
        raise UpstreamUnavailable(f"cannot log in to the upstream of {where}: {exc.message}") from exc
    except ProtocolViolation as exc:
        raise UpstreamUnavailable(f"the upstream of {where} broke the protocol: {exc.message}") from exc


def _default_factory() -> PgConnection:
    return PgConnection(whose="upstream", max_message_bytes=UPSTREAM_MAX_MESSAGE_BYTES)


async def _login(
    route: Route,
    secrets: Mapping[str, Secret],
    parameters: Mapping[str, str],
    factory: Callable[[], PgConnection],
) -> UpstreamLogin:
    loop = asyncio.get_running_loop()
    pg = route.config.postgres
    up = route.config.upstream
    transport, conn = await loop.create_connection(factory, up.host, up.port)
    try:
        login = UpstreamLogin(connection=conn)
        channel_binding: bytes | None = None
        if pg.ssl_mode > SSLMode.DISABLE:
            conn.write(m.encode_ssl_request())
            answer = await conn.read(conn.reader.next_byte)
            if answer == ord("S"):
                ctx = upstream_context(pg.ssl_mode, ca_pem=ca_pem_for(route, secrets))
                new_transport = await loop.start_tls(transport, conn, ctx, server_hostname=up.host,
                                                     ssl_shutdown_timeout=TLS_SHUTDOWN_TIMEOUT_S)
                new_transport = cast(asyncio.Transport, new_transport)
                conn.transport = new_transport
                login.is_tls = True
                der = new_transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
                channel_binding = tls_server_end_point(der) if der else None
            elif answer == ord("N"):
                if pg.ssl_mode >= SSLMode.REQUIRE:
                    raise UpstreamUnavailable(
                        f"the upstream of {_describe(route)} does not support TLS but sslMode is {pg.ssl_mode.name}"
                    )
            else:
                raise ProtocolViolation(f"unexpected answer {answer!r} to SSLRequest", whose="upstream")
        params = dict(parameters)
        params["user"] = route.upstream_user
        params["database"] = route.upstream_database
        conn.write(m.encode_startup_message(params))
        password = _password(route, secrets)
        # MD5, cleartext and trust are answered only when the config names them and TLS verified the
        # server: otherwise whoever answers at this address would get the password or the session.
        auth = UpstreamAuthenticator(user=route.upstream_user, password=password,
                                     tls_server_end_point=channel_binding, mechanisms=pg.auth_mechanisms,
                                     server_verified=login.is_tls and pg.ssl_mode >= SSLMode.VERIFY_CA)
        await _authenticate(conn, auth, route)
        login.auth_mechanism = auth.mechanism
        await _read_until_ready(conn, login, route)
        return login
    except BaseException:
        transport.abort()
        raise


def _password(route: Route, secrets: Mapping[str, Secret]) -> str | None:
    name = route.config.postgres.password_secret
    if name is None:
        return None
    secret = secrets.get(name)
    if secret is None:
        raise UpstreamUnavailable(f'{_describe(route)} refers to secret "{name}" which is not loaded')
    return secret.value.reveal()


async def _authenticate(conn: PgConnection, auth: UpstreamAuthenticator, route: Route) -> None:
    reader: MessageReader = conn.reader
    while not auth.is_done:
        type_byte, body = await conn.read(reader.next_message)
        if type_byte == m.ERROR_RESPONSE:
            fields = m.parse_error_fields(body)
            raise UpstreamUnavailable(
                f"upstream of {_describe(route)} refused the login: {fields.message}",
                detail=f"upstream SQLSTATE {fields.code}",
            )
        if type_byte == m.NEGOTIATE_PROTOCOL_VERSION:
            continue  # we sent no _pq_ options; a minor-version downgrade changes nothing for us
        if type_byte != m.AUTHENTICATION:
            raise ProtocolViolation(f"unexpected message {chr(type_byte)!r} during login", whose="upstream")
        code, payload = parse_authentication(body)
        reply = auth.respond(code, payload)
        if reply is not None:
            conn.write(reply)


async def _read_until_ready(conn: PgConnection, login: UpstreamLogin, route: Route) -> None:
    reader = conn.reader
    while True:
        type_byte, body = await conn.read(reader.next_message)
        if type_byte == m.PARAMETER_STATUS:
            login.parameter_status.append(m.encode_message(type_byte, body))
            name, _, value = body.rstrip(b"\x00").partition(b"\x00")
            login.parameters[name.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        elif type_byte == m.BACKEND_KEY_DATA:
            if len(body) != 8:
                raise ProtocolViolation("BackendKeyData must be 8 bytes", whose="upstream")
            login.process_id = int.from_bytes(body[:4], "big", signed=True)
            login.secret_key = int.from_bytes(body[4:], "big", signed=True)
        elif type_byte == m.READY_FOR_QUERY:
            return
        elif type_byte == m.ERROR_RESPONSE:
            fields = m.parse_error_fields(body)
            raise UpstreamUnavailable(
                f"upstream of {_describe(route)} refused the session: {fields.message}",
                detail=f"upstream SQLSTATE {fields.code}",
            )
        elif type_byte == m.NOTICE_RESPONSE:
            continue
        else:
            raise ProtocolViolation(f"unexpected message {chr(type_byte)!r} after login", whose="upstream")


async def send_cancel(route_host: str, route_port: int, ssl_mode: SSLMode, process_id: int, secret_key: int) -> None:
    """Forward a CancelRequest to the upstream backend (its own pid and key, never ours)."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            transport, conn = await loop.create_connection(
                lambda: PgConnection(whose="upstream"), route_host, route_port
            )
            try:
                if ssl_mode >= SSLMode.REQUIRE:
                    conn.write(m.encode_ssl_request())
                    answer = await conn.read(conn.reader.next_byte)
                    if answer == ord("S"):
                        ctx = upstream_context(SSLMode.REQUIRE, ca_pem=None)
                        tls = await loop.start_tls(transport, conn, ctx, server_hostname=route_host,
                                                   ssl_shutdown_timeout=TLS_SHUTDOWN_TIMEOUT_S)
                        tls = cast(asyncio.Transport, tls)
                        conn.transport = tls
                conn.write(m.encode_cancel_request(process_id, secret_key))
                # The server closes without answering; wait for that so the request is not lost.
                try:
                    await conn.read(conn.reader.next_byte)
                except ConnectionResetError:
                    pass
            finally:
                conn.close()
    except (OSError, TimeoutError, ssl.SSLError, PgwardenError):
        return  # a cancel is best effort, as in PostgreSQL itself

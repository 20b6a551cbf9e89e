"""One client session: startup, TLS, token check, routing, upstream login, then a plain or a gated relay.

The relay forwards each chunk untouched. The client side goes through the relay chosen once at connect
(proxy/relay.py): plain, scanned for Query/Parse (access log), or gated by `proxy.policy.enforce.RequestGate`
(mode ALL). The server side is scanned for ReadyForQuery (transaction state, and a safe point to inject a FATAL).
A session is given its collaborators (`SessionCollaborators`), never the server. Errors we raise become one
ErrorResponse in `_refuse`, then the connection closes. Which session: in proxy/ a "session" is this, one client
connection; the login behind its token is the identity session (`self.identity.session`, identity/sessions.py).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
import time
from dataclasses import dataclass
from typing import Any, Protocol, cast

from identity.certs import verify_client_certificate
from identity.sessions import Identity, SessionAuthority
from proxy.audit.accesslog import AccessLog, SessionLog
from proxy.audit.normalize import QueryText
from proxy.connection import TLS_RECORD_PAYLOAD, PgConnection
from proxy.errors import AccessDenied, AuthenticationFailed, PgwardenError, UnknownService
from proxy.guardrails import Lock, keeps_rail, locked_settings, rail_denied
from proxy.metrics import ProxyMetrics
from proxy.pgwire import messages as m
from proxy.pgwire.encodings import decode_text, python_codec
from proxy.pgwire.errors import ProtocolViolation
from proxy.pgwire.framing import DEFAULT_MAX_MESSAGE_BYTES, MessageTooLarge
from proxy.policy.enforce import RequestGate
from proxy.policy.gate_decisions import DecisionLike, DenyAll, RequestDecider, explain_hint
from proxy.policy.response_summaries import ResponseSummaries
from proxy.preauth import PreAuthRegistry
from proxy.registry import ConnectionSlot, SessionInfo, SessionRegistry
from proxy.relay import GatedRelay, PlainRelay
from proxy.routing import ConnectRequest, LiveSnapshot, Route
from proxy.upstream import UpstreamLogin, open_upstream
from proxy.upstream_side import COPY_IN, UpstreamSide

log = logging.getLogger("pgwarden.session")

STARTUP_TIMEOUT_S = 60.0  # whole startup incl. upstream login; before the client authenticates, PreAuthLimits
TERMINATE_GRACE_S = 2.0
CLOSE_GRACE_S = 5.0
TLS_SHUTDOWN_TIMEOUT_S = 2.0  # asyncio's default of 30 s keeps dead sessions' sockets around


class LiveSource(Protocol):
    """Holds the live snapshot; a reload assigns a new one (read it once per message, no locks)."""

    @property
    def live(self) -> LiveSnapshot: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionCollaborators:
    """What a client session uses of the process serving it, and no more (the server builds one)."""

    registry: SessionRegistry  # live sessions, cancel keys, identity index, connection slots
    snapshots: LiveSource  # the live snapshot, read at connect and by the gate after a reload
    access_log: AccessLog
    metrics: ProxyMetrics
    identity: SessionAuthority  # verifies access tokens; its store verifies client certificates
    preauth: PreAuthRegistry  # the caps on clients that have not authenticated yet
    tls_context: Any
    default_service: str | None = None  # serves database names that name no service


class ClientSession(PgConnection):
    """The client socket, and the session it belongs to."""

    def __init__(self, parts: SessionCollaborators) -> None:
        # Until the client authenticates, the pre-auth caps apply (proxy/preauth.py); then the relay's own.
        super().__init__(whose="client", max_message_bytes=parts.preauth.limits.max_message_bytes, bounded=True)
        self.parts = parts
        self.id = secrets.token_hex(8)
        self.info: SessionInfo | None = None
        self.route: Route | None = None
        self.request: ConnectRequest | None = None
        self.upstream: UpstreamSide | None = None
        self.login: UpstreamLogin | None = None
        self.log: SessionLog | None = None
        self.process_id = 0
        self.secret_key = 0
        self.transaction_status = b"I"
        self.pending_termination: PgwardenError | None = None
        self.bytes_at_ready = 0  # bytes_received when the last ReadyForQuery went out: equal means idle
        self.cycles_sent = 0  # plain relay: Sync/Query/FunctionCall forwarded (the gate counts its own)
        self.cycles_answered = 0  # ReadyForQuery messages relayed
        self.ending_at_ready: PgwardenError | None = None  # draining (proxy/drain.py): end at a ReadyForQuery
        self.is_ending_in_transaction = False  # ... even one inside a transaction (the drain timeout passed)
        self.identity: Identity | None = None  # the token's claims and its identity Session
        self.is_tls = False
        self._codec = "utf-8"
        self._relay: PlainRelay | GatedRelay | None = None  # chosen once, when the relay starts
        self._gate: GatedRelay | None = None  # the same relay when it is gated (authorization mode ALL)
        self._cycle_watch: GatedRelay | None = None  # the same again when the readOnly rail holds cycles
        self._policy: RequestDecider | None = None
        self._policy_live: LiveSnapshot | None = None  # the snapshot `_policy` was built from
        self._summaries: ResponseSummaries | None = None  # decisions awaiting the upstream's answer
        self._started = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self._ended = False
        self._claimed: tuple[str, str] = ("", "")  # (user, service) once known, for refusal logs
        self._deadline: asyncio.Timeout | None = None
        self.is_authenticated = False
        self.connection_slot: ConnectionSlot | None = None  # counted by a maxConnectionsPerUser rail
        self._watched: dict[bytes, Lock] = {}  # ParameterStatus name -> the guard rail it must keep

    @property
    def codec(self) -> str:
        """The Python codec of the client_encoding the server reported last."""
        return self._codec

    @property
    def config_name(self) -> str:
        assert self.route is not None
        return self.route.config.name

    @property
    def client_address(self) -> str:
        """host:port of the client, for the access log and the session list."""
        if self.transport is None:
            return ""
        peer = self.transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            return f"{peer[0]}:{peer[1]}"
        return str(peer or "")

    # --- lifecycle -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.parts.registry.connections.add(self)
        peer = transport.get_extra_info("peername")
        self.parts.preauth.admit(self, str(peer[0]) if isinstance(peer, tuple) and peer else "")
        self._task = asyncio.get_running_loop().create_task(self._serve())

    def on_closed(self) -> None:
        self.parts.registry.connections.discard(self)
        self.parts.preauth.authenticated(self)
        if self.upstream is not None:
            self.upstream.close()
        if self._task is not None and not self._task.done() and not self.is_relaying:
            self._task.cancel()
        self._end()

    def shed(self) -> None:
        """Over the pre-auth caps (proxy/preauth.py): drop the socket, no ErrorResponse, no TLS close."""
        self.abort()
        if self._task is not None and not self._task.done():
            self._task.cancel()  # mid-handshake, an abort alone does not wake start_tls

    def _lost_in_handshake(self) -> None:
        """The TLS handshake failed: during it the TLS layer, not this protocol, owned the socket, so
        connection_lost never reaches us; forget the connection here."""
        if not self.is_closed:
            self.is_closed = True
            self.parts.registry.connections.discard(self)
            self.parts.preauth.authenticated(self)
            self._end()

    def _authenticated(self) -> None:
        """The client proved who it is: out of the pre-auth caps, back to the post-login message limit."""
        self.is_authenticated = True
        self.parts.preauth.authenticated(self)
        self.reader.relax(DEFAULT_MAX_MESSAGE_BYTES)
        if self._deadline is not None:  # the upstream login still has the rest of STARTUP_TIMEOUT_S
            loop = asyncio.get_running_loop()
            self._deadline.reschedule(loop.time() + max(0.0, STARTUP_TIMEOUT_S - (time.monotonic() - self._started)))

    def close(self) -> None:
        super().close()
        # A TLS close waits for the client's close_notify, which an idle client never sends:
        # drop the socket if the client stays silent.
        if self.transport is not None and not self.is_closed:
            asyncio.get_running_loop().call_later(CLOSE_GRACE_S, self.abort)

    def on_upstream_closed(self) -> None:
        if self.pending_termination is not None:
            self.finish_termination()
        else:
            self.close()

    def _end(self) -> None:
        if self._ended:
            return
        self._ended = True
        self.parts.registry.forget(self)
        if self._summaries is not None:
            self._summaries.flush()  # decisions whose answer never came are logged without one
        if self.log is not None and self.upstream is not None:
            self.log.event({
                "type": "SESSION_END",
                "end": {
                    "durationMs": round((time.monotonic() - self._started) * 1000, 1),
                    "bytesFromClient": self.bytes_received,
                    "bytesFromUpstream": self.upstream.bytes_received,
                    "reason": self.pending_termination.message if self.pending_termination else "closed",
                },
            })

    # --- startup -------------------------------------------------------------------------
    async def _serve(self) -> None:
        try:
            async with asyncio.timeout(self.parts.preauth.limits.timeout_s) as self._deadline:
                startup = await self._read_startup()
                if startup is None:
                    return
                await self._establish(startup)
        except MessageTooLarge as exc:
            if not self.is_authenticated:
                self.parts.metrics.preauth_oversize += 1
            self._refuse(exc)  # not logged per connection: counted (pgwarden_preauth_refused_total)
        except PgwardenError as exc:
            self._log_refusal(exc)
            self._refuse(exc)
        except TimeoutError:
            if not self.is_authenticated:
                self.parts.metrics.preauth_timeouts += 1
                self._refuse(AuthenticationFailed(
                    f"authentication did not complete within {self.parts.preauth.limits.timeout_s:g} s"))
            else:
                self._refuse(AuthenticationFailed("startup did not complete in time"))
        except (ConnectionError, asyncio.CancelledError):  # reset, or aborted (shed) during the TLS handshake
            self.close()
        except Exception as exc:  # noqa: BLE001 - a bug must not take the server down
            log.exception("session %s failed during startup", self.id)
            self._refuse(PgwardenError(f"internal error: {type(exc).__name__}"))

    async def _read_startup(self) -> m.StartupMessage | None:
        loop = asyncio.get_running_loop()
        while True:
            packet: m.StartupPacket = await self.read(self.reader.next_startup)
            if isinstance(packet, m.SSLRequest):
                if self.is_tls:
                    raise ProtocolViolation("SSLRequest received twice")
                self.write(b"S")
                assert self.transport is not None
                try:
                    tls = await loop.start_tls(self.transport, self, self.parts.tls_context, server_side=True,
                                               ssl_handshake_timeout=self.parts.preauth.limits.timeout_s,
                                               ssl_shutdown_timeout=TLS_SHUTDOWN_TIMEOUT_S)
                except ssl.SSLError as exc:
                    # e.g. a client certificate that is expired or not from the client CA: the client
                    # already got the TLS alert naming why; there is no channel left for an ErrorResponse.
                    reason = (f"client certificate refused: {exc.verify_message} (only `pgwarden cert` "
                              "certificates are accepted)" if isinstance(exc, ssl.SSLCertVerificationError)
                              else exc.reason or str(exc))
                    log.info("session %s: TLS handshake refused: %s", self.id, reason)
                    self.abort()
                    self._lost_in_handshake()
                    return None
                except BaseException:  # reset, shed (cancelled) or timed out mid-handshake
                    self.abort()
                    self._lost_in_handshake()
                    raise
                tls = cast(asyncio.Transport, tls)
                self.transport = tls
                self.is_tls = True
                self.max_write_bytes = TLS_RECORD_PAYLOAD  # records as PostgreSQL sends them
            elif isinstance(packet, m.GSSENCRequest):
                self.write(b"N")  # no GSSAPI encryption; the client goes on with SSL or plain
            elif isinstance(packet, m.CancelRequest):
                # Closed once the upstream has the cancel, as PostgreSQL does (see Registry.start_cancel); shielded,
                # so a client that hangs up first does not take the forward with it. Every forward has a timeout of
                # its own, and a cancel connection gets no ErrorResponse, so the startup deadline stands down.
                if self._deadline is not None:
                    self._deadline.reschedule(None)
                try:
                    await asyncio.shield(self.parts.registry.start_cancel(packet.process_id, packet.secret_key))
                finally:
                    self.close()
                return None
            else:
                return packet

    async def _certificate_identity(self) -> Identity | None:
        """The Session named by a client certificate the handshake verified (`pgwarden cert`), if one was sent."""
        if self.transport is None:
            return None
        sslobj = self.transport.get_extra_info("ssl_object")
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        if not der:
            return None
        return await verify_client_certificate(der, self.parts.identity.store)

    def sni_service(self) -> str | None:
        if not self.is_tls or self.transport is None:
            return None
        sslobj = self.transport.get_extra_info("ssl_object")
        name = getattr(sslobj, "pgwarden_sni", None)
        return name.split(".", 1)[0] if name else None

    def _select(self, live: LiveSnapshot, params: dict[str, str]) -> tuple[str, ConnectRequest]:
        """Service from the SNI host's first label, else from dbname `SERVICE` or `SERVICE/DATABASE`."""
        database = params.get("database", "")
        user = params.get("user", "")
        app = params.get("application_name", "")
        sni = self.sni_service()
        if sni and sni in live.snapshot.services:
            service, _, rest = database.partition("/")
            db = rest if service == sni else ("" if database == sni else database)
            return sni, ConnectRequest(user=user, database=db, application_name=app)
        service, _, db = database.partition("/")
        default = self.parts.default_service
        if default and service not in live.snapshot.services:
            # A single-service deployment: any database name goes to the default service.
            return default, ConnectRequest(user=user, database=database, application_name=app)
        if not service:
            raise UnknownService(
                "no service named: connect with dbname=SERVICE or dbname=SERVICE/DATABASE",
                hint=f"known services: {', '.join(sorted(live.snapshot.services)) or 'none'}",
            )
        return service, ConnectRequest(user=user, database=db, application_name=app)

    async def _establish(self, startup: m.StartupMessage) -> None:
        params = startup.parameters
        if "user" not in params:
            raise AuthenticationFailed("no PostgreSQL user name specified in startup packet")
        if not self.is_tls:
            raise AuthenticationFailed(
                "pgwarden accepts access tokens only over TLS",
                hint="connect with sslmode=require (or verify-full with the proxy's CA)",
            )
        self._claimed = ("", params.get("database", ""))
        identity = await self._certificate_identity()
        if identity is None:  # no client certificate: the access token is the password
            self.write(m.encode_authentication(m.AUTH_CLEARTEXT))
            type_byte, body = await self.read(self.reader.next_message)
            if type_byte != m.PASSWORD:
                raise ProtocolViolation(f"expected a password message, got {chr(type_byte)!r}")
            token = body.rstrip(b"\x00").decode("utf-8", "replace")
            identity = await self.parts.identity.verify(token)
        self._authenticated()
        self.identity = identity
        live = self.parts.snapshots.live
        service_name, request = self._select(live, params)
        self.request = request
        self._claimed = (identity.user, service_name)
        route = live.route(identity.user, service_name, request, identity_session=identity.session)
        self.route = route
        if route.decision.would_deny is not None:  # shadow mode: an AUDIT Policy would refuse this connection
            self.parts.metrics.would_have_denied(service_name, route.decision.would_deny.policy,
                                                 route.decision.would_deny.rule)
        self.parts.registry.take_connection_slot(self, identity.user, route)
        self._policy_live = live
        self._policy = self._session_policy(live)  # before login: a policy that cannot be built refuses
        self.upstream = UpstreamSide()
        upstream = self.upstream
        login = await open_upstream(route, live.snapshot.secrets, params, factory=lambda: upstream)
        self.login = login
        upstream.session = self
        # Settings the server reports (GUC_REPORT: default_transaction_read_only; search_path from PostgreSQL 18)
        # must keep their rail's value; a report of any other ends the session (see on_server_messages).
        rails = locked_settings(route.config.postgres.guard_rails)
        self._watched = {name.encode(): lock for name, lock in rails.items()}
        self.process_id, self.secret_key = self.parts.registry.register(self, identity.user, live.generation)
        self._codec = python_codec(login.parameters.get("client_encoding", params.get("client_encoding", "UTF8")))
        out = [m.encode_authentication(m.AUTH_OK), *login.parameter_status,
               m.encode_backend_key_data(self.process_id, self.secret_key), m.encode_ready_for_query(b"I")]
        self.write_pieces(out)
        self.log = self._session_log(identity.user, route)
        self.log.event({"type": "SESSION_START", "start": {
            "user": route.upstream_user, "database": route.upstream_database,
            "requestedUser": request.user, "requestedDatabase": request.database,
            "applicationName": request.application_name, "authMechanism": login.auth_mechanism,
            "upstreamTLS": login.is_tls, **_would_deny_field(route),
        }})
        assert upstream.transport is not None
        relay: PlainRelay | GatedRelay
        if self._policy is not None:
            self._summaries = ResponseSummaries(self._write_decision)
            gate = RequestGate(policy=self._current_policy, codec=lambda: self._codec,
                               responses=upstream.filter_denials(), on_decision=self._log_decision,
                               on_ready_requested=self._summaries.ready_requested, parameters=login.parameters,
                               denial_hint=explain_hint(identity.user, route.service.name, str(identity.session.aal)))
            relay = self._gate = GatedRelay(self, upstream, gate,
                                            is_read_only=route.config.postgres.guard_rails.read_only)
            if relay.holds_cycles:
                self._cycle_watch = relay
        else:
            relay = PlainRelay(self, upstream.transport)
        self._relay = relay
        upstream.start_relay(self)
        self.start_relay(upstream, relay)

    # --- relay ---------------------------------------------------------------------------
    @property
    def has_query_checks(self) -> bool:
        """Per-query checks are on; chosen at connect (a reload that turns mode ALL on needs a reconnect)."""
        return self._gate is not None

    @property
    def is_held_by_gate(self) -> bool:
        """The gate holds more client bytes than it keeps: the client is not read until they go on."""
        return self._gate is not None and self._gate.is_held_by_gate

    def _session_policy(self, live: LiveSnapshot) -> RequestDecider | None:
        """The per-query policy under `live`, or None when this session's config is not in mode ALL."""
        assert self.route is not None and self.identity is not None
        route = self.route
        service = live.service(route.service.name)
        config = service.configs.get(route.config.name, route.config)
        return live.connection_policy(live.user(self.identity.user), service, self.identity.session,
                                   config=config, request=self.request)

    def _current_policy(self) -> RequestDecider | None:
        live = self.parts.snapshots.live
        if live is not self._policy_live:  # a reload: decide from the next request on under the new policies
            self._policy_live = live
            try:
                self._policy = self._session_policy(live)
            except Exception as exc:  # noqa: BLE001 - fail closed; the reload's recheck ends the session
                reason = exc.message if isinstance(exc, PgwardenError) else type(exc).__name__
                log.warning("session %s: no policy under generation %d: %s", self.id, live.generation, reason)
                self._policy = DenyAll(f"access revoked by configuration change: {reason}", live.generation)
        return self._policy

    def _log_decision(self, kind: str, request: dict[str, Any], decision: DecisionLike | None,
                      seconds: float) -> None:
        if decision is None:  # checks turned off by a reload: log as a plain statement
            if self.log is not None and kind in ("QUERY", "PARSE"):
                self.log.statement(kind, str(request["query"]), None if kind == "QUERY" else str(request["name"]))
            return
        self.parts.metrics.query_decided(decision.allowed, seconds)
        would_deny = getattr(decision, "would_deny", None)  # engine Decisions have it; the gate's own do not
        if would_deny is not None and self.route is not None:
            self.parts.metrics.would_have_denied(self.route.service.name, would_deny.policy, would_deny.rule)
        if self._summaries is not None:
            self._summaries.decided(kind, request, decision)

    def _write_decision(self, kind: str, request: dict[str, Any], decision: DecisionLike,
                        response: dict[str, Any] | None) -> None:
        if self.log is not None:
            would_deny = getattr(decision, "would_deny", None)
            self.log.decision(kind, request, is_allowed=decision.allowed, policy=decision.policy,
                              rule=decision.rule, reason=decision.reason, response=response,
                              would_deny=None if would_deny is None else (would_deny.policy, would_deny.rule))

    def on_replies(self, found: list[tuple[int, bytes]]) -> None:
        """Inspected server messages with per-query checks on: session state, then response summaries,
        then the gate (confirmed lexing settings; held requests go on)."""
        self.on_server_messages(found)
        if self._summaries is not None:
            self._summaries.on_replies(found)
        if self._gate is not None:
            self._gate.on_replies(found)

    @property
    def has_requests_in_flight(self) -> bool:
        """Requests forwarded upstream that no ReadyForQuery has answered yet, or held by the gate: a client that
        pipelined them would lose their results if the session ended now (the drain waits for them)."""
        relay = self._gate
        if relay is None:
            return self.cycles_sent > self.cycles_answered
        return relay.gate.ready_requested > self.cycles_answered or relay.gate.is_holding

    def log_statement(self, type_byte: int, body: bytes) -> None:
        """A Query or Parse the plain relay saw, into the access log (decoded in the client's encoding)."""
        assert self.log is not None
        if type_byte == m.QUERY:
            self.log.statement("QUERY", decode_text(body, self._codec))
        else:
            name, rest = body.split(b"\x00", 1) if b"\x00" in body else (b"", body)
            query = rest.split(b"\x00", 1)[0]
            self.log.statement("PARSE", decode_text(query, self._codec), decode_text(name, self._codec))

    def on_server_messages(self, found: list[tuple[int, bytes]]) -> None:
        for type_byte, body in found:
            if type_byte == m.READY_FOR_QUERY:
                self.transaction_status = body[:1]
                self.bytes_at_ready = self.bytes_received
                self.cycles_answered += 1
                if self.ending_at_ready is not None and (body[:1] == b"I" or self.is_ending_in_transaction) \
                        and not self.has_requests_in_flight:
                    # Draining: the relay that called us ends the session once this chunk is out, at a boundary.
                    self.pending_termination = self.pending_termination or self.ending_at_ready
                if self._cycle_watch is not None:
                    self._cycle_watch.on_cycle_reply(type_byte)
            elif type_byte in COPY_IN and self._cycle_watch is not None:
                self._cycle_watch.on_cycle_reply(type_byte)
            elif body.startswith(b"client_encoding\x00"):
                self._codec = python_codec(body[16:].rstrip(b"\x00").decode("ascii", "replace"))
            elif self._watched and type_byte == m.PARAMETER_STATUS:
                self._check_rail(body)

    def _check_rail(self, body: bytes) -> None:
        """A ParameterStatus for a guard-railed setting: a value other than the rail's ends the session."""
        name, _, value = body.rstrip(b"\x00").partition(b"\x00")
        lock = self._watched.get(name)
        if lock is None or keeps_rail(lock, value.decode("utf-8", "replace")):
            return
        assert self.route is not None
        reason = AccessDenied(
            f"session ended: {rail_denied(f'changing {name.decode()}', lock.rail, self.route.config.name)}",
            detail="a statement (for example a function calling set_config) changed a setting a guard rail locks")
        log.warning("session %s: %s", self.id, reason.message)
        self.terminate(reason)

    # --- access log ----------------------------------------------------------------------
    def _session_log(self, user: str, route: Route) -> SessionLog:
        return self.parts.access_log.session(self.id, {
            "connectionID": self.id, "user": user, "service": route.service.name,
            "config": route.config.name, "status": "ALLOWED", "reason": route.reason,
            "upstreamUser": route.upstream_user, "upstreamDatabase": route.upstream_database,
            "generation": self.parts.snapshots.live.generation, "clientAddress": self.client_address,
            **self._session_facts(),
            # Only when the text is not as sent: `pgwarden replay` skips what it cannot re-decide.
            **({"queryText": str(self.parts.access_log.query_text)}
               if self.parts.access_log.query_text != QueryText.FULL else {}),
        })

    def _session_facts(self) -> dict[str, str]:
        """What policies read of the identity session besides the user: `pgwarden replay` decides with them."""
        if self.identity is None:
            return {}
        session = self.identity.session
        return {"aal": str(session.aal), "authMethod": str(session.method), "identityProvider": session.idp}

    def _log_denied(self, user: str, service: str, request: ConnectRequest, exc: PgwardenError) -> None:
        self.parts.metrics.session_refused(exc)
        self.parts.access_log.event(
            {"connectionID": self.id, "user": user, "service": service, "status": "DENIED",
             "reason": exc.message, "sqlstate": exc.sqlstate, "clientAddress": self.client_address},
            {"type": "SESSION_START", "start": {"requestedUser": request.user,
                                                "requestedDatabase": request.database,
                                                "applicationName": request.application_name}},
            entry_id=f"{self.id}-0",
        )

    # --- ending --------------------------------------------------------------------------
    def _log_refusal(self, exc: PgwardenError) -> None:
        if self.log is not None:
            return  # the session had started; SESSION_END tells the rest
        user, service = self._claimed
        request = self.request or ConnectRequest(user="", database="")
        self._log_denied(user, service, request, exc)

    def _refuse(self, exc: PgwardenError) -> None:
        """Send one FATAL ErrorResponse for an error before the relay started, then close."""
        if not self.is_closed:
            self.write(m.encode_error_response(exc.message, code=exc.sqlstate, detail=exc.detail, hint=exc.hint))
        if self.upstream is not None:
            self.upstream.abort()
        self.close()

    def terminate(self, reason: PgwardenError) -> None:
        """End a relaying session with a FATAL, at a message boundary of the server stream."""
        if self.pending_termination is not None or self.is_closed:
            return
        self.pending_termination = reason
        upstream = self.upstream
        if upstream is None or upstream.is_at_boundary:
            self.finish_termination()
        else:
            asyncio.get_running_loop().call_later(TERMINATE_GRACE_S, self.finish_termination)

    def finish_termination(self) -> None:
        reason = self.pending_termination
        if reason is None or self.is_closed:
            return
        upstream = self.upstream
        # Only at a message boundary: half a DataRow followed by our FATAL would be garbage.
        if upstream is None or upstream.is_at_boundary:
            self.write(m.encode_error_response(reason.message, code=reason.sqlstate, detail=reason.detail,
                                               hint=reason.hint))
        if self.upstream is not None:
            self.upstream.write(m.encode_terminate())
            self.upstream.close()
        self.close()
        self._end()  # the session is over now, even while the TLS close is still under way

    def end_now(self, exc: PgwardenError) -> None:
        self.pending_termination = exc
        self.finish_termination()


def _would_deny_field(route: Route) -> dict[str, Any]:
    """`wouldDeny` of a SESSION_START an AUDIT Policy would have refused, else nothing."""
    found = route.decision.would_deny
    return {} if found is None else {"wouldDeny": {"policy": found.policy, "rule": found.rule}}

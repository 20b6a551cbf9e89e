"""The listener and the registry of live sessions; `apply()` swaps the snapshot atomically.

New connections read `server.live` once; a swap is one reference assignment. After a swap, every
session whose access the new snapshot removes is ended with a FATAL that says why.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any

from proxy.audit.accesslog import AccessLog, SessionLog
from proxy.errors import AccessDenied, AuthenticationFailed, SnapshotInvalid
from proxy.guardrails import TooManyConnections
from proxy.identity.certs import ClientCertificateAuthority
from proxy.identity.revocation_watch import STATE_OUTAGE_GRACE_S, RevocationWatch
from proxy.identity.sessions import SessionAuthority
from proxy.identity.store import AuthMethod, IdentitySession, StateStoreError, utc_now
from proxy.metrics import ProxyMetrics
from proxy.pgwire.errors import PgwardenError
from proxy.preauth import PreAuthLimits, PreAuthRegistry
from proxy.routing import ConnectRequest, LiveSnapshot, Route
from proxy.session import ClientSession, SessionInfo
from proxy.snapshot import AuthorizationMode, Snapshot
from proxy.upstream import send_cancel

log = logging.getLogger("pgwarden.server")

REVOCATION_BATCH = 200
PURGE_EVERY_S = 3600.0  # housekeeping of the state store: expired sessions and device codes
PURGE_AFTER = timedelta(days=1)  # expired sessions stay listable (and auditable) this long
LISTEN_BACKLOG = 1024  # the kernel caps it at net.core.somaxconn
IDENTITY_RECHECK_S = 30.0  # sessions re-checked between yields to the loop, so the relay keeps moving


class ProxyServer:
    """Accepts PostgreSQL clients on one listener and serves them from the live snapshot."""

    def __init__(
        self,
        *,
        tls_context: Any,
        identity: SessionAuthority,
        access_log: AccessLog,
        fingerprint_key: bytes,
        snapshot: Snapshot | None = None,
        default_service: str | None = None,
        client_ca: ClientCertificateAuthority | None = None,
        preauth_limits: PreAuthLimits | None = None,
    ) -> None:
        self.tls_context = tls_context
        self.identity = identity
        self.client_ca = client_ca  # signs client certificates (POST /v1/auth/cert); None: mTLS identity is off
        self.access_log = access_log
        self.metrics = ProxyMetrics()  # plain counters; proxy/metrics.py renders them for GET /metrics
        self.fingerprint_key = fingerprint_key
        self.default_service = default_service  # serves database names that name no service
        self.live = LiveSnapshot(snapshot or Snapshot(), generation=1)
        self.applied_at = time.time()
        self.sessions: dict[str, ClientSession] = {}
        self._by_cancel_key: dict[tuple[int, int], ClientSession] = {}
        self._cancels: set[asyncio.Task[None]] = set()  # in flight; held so a closing client cannot drop them
        self._by_identity: dict[str, set[ClientSession]] = {}  # identity Session id -> its live DB sessions
        self.connections: set[ClientSession] = set()  # every open client socket, logged in or not
        self.preauth = PreAuthRegistry(preauth_limits or PreAuthLimits(), self.metrics)  # not logged in yet
        # (user, service, config) -> ids of its sessions, for guard rails' maxConnectionsPerUser
        self._rail_slots: dict[tuple[str, str, str], set[str]] = {}
        self._server: asyncio.AbstractServer | None = None
        self._revocation: asyncio.Task[None] | None = None
        self._identity_watch: asyncio.Task[None] | None = None
        self.state_outage_grace_s = STATE_OUTAGE_GRACE_S  # start_proxy sets --state-outage-grace

    # --- listening -----------------------------------------------------------------------
    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> tuple[str, int]:
        """Listen on host:port; `reuse_port` lets several worker processes share it (SO_REUSEPORT)."""
        loop = asyncio.get_running_loop()
        # A deep accept queue: with asyncio's default of 100, a burst of connects overflows it and a real client's
        # SYN is dropped and retried a second later; the pre-auth caps, not the kernel, decide who stays.
        self._server = await loop.create_server(lambda: ClientSession(self), host, port, reuse_address=True,
                                                reuse_port=reuse_port or None, backlog=LISTEN_BACKLOG)
        sockname = self._server.sockets[0].getsockname()
        self._identity_watch = loop.create_task(self.watch_identity_sessions())
        return sockname[0], sockname[1]

    async def close(self) -> None:
        if self._identity_watch is not None:
            self._identity_watch.cancel()
        if self._server is not None:
            self._server.close()
        for session in list(self.sessions.values()):
            session.terminate(AuthenticationFailed("the proxy is shutting down", hint="reconnect in a moment"))
        if self._server is not None:
            await self._server.wait_closed()
        await asyncio.sleep(0.05)  # let the FATALs go out before the sockets are dropped
        for connection in list(self.connections):
            if connection.upstream is not None:
                connection.upstream.abort()
            connection.abort()
        await asyncio.sleep(0)  # connection_lost callbacks run before the loop may close
        self.access_log.writer.flush()

    # --- snapshots -----------------------------------------------------------------------
    def apply(self, snapshot: Snapshot) -> int:
        """Compile and swap in `snapshot`; returns its generation. On error nothing changes."""
        try:
            live = LiveSnapshot(snapshot, generation=self.live.generation + 1)
        except Exception as exc:
            raise SnapshotInvalid(f"snapshot rejected, generation {self.live.generation} stays live: {exc}") from exc
        self.live = live
        self.applied_at = time.time()
        if self._revocation is not None and not self._revocation.done():
            self._revocation.cancel()
        self._revocation = asyncio.get_running_loop().create_task(self._revoke(live))
        return live.generation

    async def _revoke(self, live: LiveSnapshot) -> None:
        for i, session in enumerate(list(self.sessions.values())):
            if i and i % REVOCATION_BATCH == 0:
                await asyncio.sleep(0)
            if self.live is not live:
                return  # a newer snapshot took over; it will re-check everyone
            reason = self.recheck(session, live)
            if reason is not None:
                log.info("ending session %s: %s", session.id, reason.message)
                session.terminate(reason)
        await self._revoke_retired_credentials(live)

    async def _revoke_retired_credentials(self, live: LiveSnapshot) -> None:
        """Revoke the identity Sessions of Credentials this snapshot removed or disabled: their tokens stop working."""
        store = self.identity.store
        now = utc_now()
        try:
            retired = [s.id for s in await store.list_sessions(now=now) if _retired_credential(s, live) is not None]
            for sid in retired:
                if self.live is not live:
                    return  # the newer snapshot's pass decides
                await store.revoke_session(sid, now)
        except Exception as exc:  # noqa: BLE001 - a store outage must not break the reload; the next one retries
            log.warning("could not revoke sessions of retired client credentials: %s", type(exc).__name__)
            return
        await self.revoke_identity_sessions(retired, reason="its client credential was removed or disabled")

    def recheck(self, session: ClientSession, live: LiveSnapshot) -> PgwardenError | None:
        """Why the new snapshot no longer allows this session, or None if it keeps its access."""
        if session.route is None or session.request is None or session.info is None:
            return None
        retired = _retired_credential(session.identity.session, live) if session.identity else None
        if retired is not None:
            return AuthenticationFailed(f"session revoked: {retired}", hint="get a new token from a current client")
        try:
            route = live.route(session.info.user, session.route.service.name, session.request,
                               identity_session=session.identity.session if session.identity else None)
        except PgwardenError as exc:
            return AccessDenied(f"access revoked by configuration change: {exc.message}", detail=exc.detail)
        if route.target != session.route.target:
            return AccessDenied(
                "access revoked by configuration change: this session's routing changed "
                f'(now config "{route.config.name}")',
                hint="reconnect to get the new routing",
            )
        if route.config.postgres.guard_rails != session.route.config.postgres.guard_rails:
            # The rails are startup parameters of the upstream session: only a new session gets new ones.
            return AccessDenied(
                "access revoked by configuration change: the guard rails of this session's config changed "
                f'(config "{route.config.name}")', hint="reconnect to get a session with the new guard rails")
        if route.config.postgres.authorization_mode == AuthorizationMode.ALL and not session.has_query_checks:
            # The relay chose its path at connect; an unchecked session must not outlive the switch.
            return AccessDenied(
                "access revoked by configuration change: per-query checks were turned on for this service "
                f'(config "{route.config.name}"), and this session was opened without them',
                hint="reconnect: every query of the new session is checked",
            )
        return None

    # --- session registry ----------------------------------------------------------------
    def register(self, session: ClientSession, user: str, generation: int) -> tuple[int, int]:
        """Record a session that reached the relay; returns the BackendKeyData we give its client.

        The process id is the upstream backend's own, so pg_backend_pid(), NotificationResponse and
        pg_terminate_backend() agree with what the client was told; the secret key is ours, so a
        client never learns the key that cancels on the upstream directly.
        """
        assert session.route is not None and session.login is not None
        process_id = session.login.process_id
        while True:
            secret_key = secrets.randbits(32) - 2**31
            if (process_id, secret_key) not in self._by_cancel_key:
                break
        route = session.route
        session.info = SessionInfo(
            id=session.id, user=user, service=route.service.name, config=route.config.name,
            upstream_user=route.upstream_user, upstream_database=route.upstream_database,
            client_address=_peer(session), started_at=time.time(), generation=generation,
        )
        self.sessions[session.id] = session
        self.metrics.session_started()
        self._by_cancel_key[(process_id, secret_key)] = session
        if session.identity is not None:
            self._by_identity.setdefault(session.identity.session.id, set()).add(session)
        return process_id, secret_key

    def take_connection_slot(self, session: ClientSession, user: str, route: Route) -> None:
        """Count `session` against its config's maxConnectionsPerUser rail, or raise TooManyConnections.

        Taken before the upstream login (so concurrent logins cannot all pass), given back in `forget`.
        Counted per proxy process: with several workers or replicas each allows the cap.
        """
        limit = route.config.postgres.guard_rails.max_connections_per_user
        if limit is None:
            return
        key = (user, route.service.name, route.config.name)
        taken = self._rail_slots.setdefault(key, set())
        if len(taken) >= limit:
            raise TooManyConnections(
                f'too many connections for user "{user}": guard rail "maxConnectionsPerUser" of config '
                f'"{route.config.name}" allows {limit}', hint="close an idle session and connect again")
        taken.add(session.id)
        session.connection_slot = key

    def forget(self, session: ClientSession) -> None:
        slot = session.connection_slot
        if slot is not None:
            session.connection_slot = None
            taken = self._rail_slots.get(slot)
            if taken is not None:
                taken.discard(session.id)
                if not taken:
                    del self._rail_slots[slot]
        if self.sessions.pop(session.id, None) is not None:
            self.metrics.session_ended(session.bytes_received,
                                       session.upstream.bytes_received if session.upstream else 0,
                                       session.pending_termination)
        if session.identity is not None:
            live = self._by_identity.get(session.identity.session.id)
            if live is not None:
                live.discard(session)
                if not live:
                    del self._by_identity[session.identity.session.id]
        key = (session.process_id, session.secret_key)
        if self._by_cancel_key.get(key) is session:
            del self._by_cancel_key[key]

    def start_cancel(self, process_id: int, secret_key: int) -> None:
        """Forward a CancelRequest in its own task: libpq may close its socket before the forward is done."""
        task = asyncio.get_running_loop().create_task(self.cancel(process_id, secret_key))
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)

    async def cancel(self, process_id: int, secret_key: int) -> None:
        """Forward a client's CancelRequest to the upstream backend of the session it names."""
        session = self._by_cancel_key.get((process_id, secret_key))
        if session is None or session.login is None or session.route is None:
            return
        up = session.route.config.upstream
        await send_cancel(up.host, up.port, session.route.config.postgres.ssl_mode,
                          session.login.process_id, session.login.secret_key)

    async def watch_identity_sessions(self, *, interval_s: float = IDENTITY_RECHECK_S) -> None:
        """End connections whose Session was revoked elsewhere or expired, through store outages.

        Revocations normally arrive at once through the store's notices (every replica of a shared
        PostgreSQL store hears them); proxy/identity/revocation_watch.py keeps that feed alive, re-checks
        on reconnect and periodically, and ends sessions after `state_outage_grace_s` without a store.
        """
        watch = RevocationWatch(
            self.identity.store, live_sessions=lambda: list(self._by_identity),
            revoke=lambda sids, reason: self.revoke_identity_sessions(sids, reason=reason),
            end_all=lambda reason: self.end_identity_sessions(reason), housekeeping=self.housekeeping,
            recheck_s=interval_s, grace_s=self.state_outage_grace_s, housekeeping_s=PURGE_EVERY_S,
        )
        await watch.run()

    def end_identity_sessions(self, reason: str) -> int:
        """End every connection opened with an identity Session (the store cannot vouch for any of them)."""
        ended = 0
        for sessions in list(self._by_identity.values()):
            for session in list(sessions):
                session.terminate(AuthenticationFailed(f"session ended: {reason}",
                                                       hint="connect again once the state store is back"))
                ended += 1
        return ended

    async def housekeeping(self, now: datetime) -> int:
        """Delete device codes past their expiry and sessions expired over PURGE_AFTER ago; never raises."""
        try:
            purged = await self.identity.store.purge_expired(now - PURGE_AFTER)
        except StateStoreError as exc:
            log.warning("state store housekeeping failed: %s", exc.message)
            return 0
        if purged:
            log.info("state store: removed %d sessions expired over %s ago", purged, PURGE_AFTER)
        return purged

    async def revoke_identity_sessions(self, session_ids: list[str], *, reason: str) -> int:
        """End every database connection opened with these identity Sessions; returns how many."""
        ended = 0
        for sid in session_ids:
            for session in list(self._by_identity.get(sid, ())):
                session.terminate(AuthenticationFailed(f"session revoked: {reason}",
                                                       hint="log in again (pgwarden login) or issue a new token"))
                ended += 1
        return ended

    def session_list(self) -> list[dict[str, Any]]:
        out = []
        for s in self.sessions.values():
            if s.info is None:
                continue
            entry = asdict(s.info)
            entry["transactionStatus"] = s.transaction_status.decode()
            entry["bytesFromClient"] = s.bytes_received
            entry["bytesFromUpstream"] = s.upstream.bytes_received if s.upstream else 0
            entry["identitySession"] = s.identity.session.id if s.identity else ""
            out.append(entry)
        return out

    # --- access log ----------------------------------------------------------------------
    def session_log(self, session: ClientSession, user: str, route: Route, request: ConnectRequest) -> SessionLog:
        return self.access_log.session(session.id, {
            "connectionID": session.id, "user": user, "service": route.service.name,
            "config": route.config.name, "status": "ALLOWED", "reason": route.reason,
            "upstreamUser": route.upstream_user, "upstreamDatabase": route.upstream_database,
            "generation": self.live.generation, "clientAddress": _peer(session),
        })

    def log_denied(
        self, session: ClientSession, user: str, service: str, request: ConnectRequest, exc: PgwardenError
    ) -> None:
        self.metrics.session_refused(exc)
        self.access_log.event(
            {"connectionID": session.id, "user": user, "service": service, "status": "DENIED",
             "reason": exc.message, "sqlstate": exc.sqlstate, "clientAddress": _peer(session)},
            {"type": "SESSION_START", "start": {"requestedUser": request.user,
                                                "requestedDatabase": request.database,
                                                "applicationName": request.application_name}},
            entry_id=f"{session.id}-0",
        )


def _retired_credential(session: IdentitySession, live: LiveSnapshot) -> str | None:
    """Why a client-credentials Session lost its Credential under `live` (its idp is the client_id), or None."""
    if session.method != AuthMethod.CLIENT_CREDENTIALS:
        return None
    credential = live.snapshot.credentials.get(session.idp)
    if credential is None:
        return f"client {session.idp} was removed"
    return f"client {session.idp} is disabled" if credential.is_disabled else None


def _peer(session: ClientSession) -> str:
    if session.transport is None:
        return ""
    peer = session.transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer or "")

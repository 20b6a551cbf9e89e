"""The listener; `apply()` swaps the snapshot atomically. The live sessions are in proxy/registry.py.

New connections read `server.live` once; a swap is one reference assignment. After a swap, every
session whose access the new snapshot removes is ended with a FATAL that says why. Sessions are given
`SessionCollaborators` (the registry, this server as the holder of the live snapshot, the access log, ...),
never the server itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from identity.certs import ClientCertificateAuthority
from identity.revocation_watch import STATE_OUTAGE_GRACE_S, RevocationWatch
from identity.sessions import SessionAuthority
from identity.store.base import AuthMethod, IdentitySession, StateStoreError, utc_now
from proxy.audit.accesslog import AccessLog
from proxy.errors import AccessDenied, AuthenticationFailed, PgwardenError, SnapshotInvalid, SnapshotSuperseded
from proxy.grant_timer import GrantTimer, name_lapsed_grants
from proxy.metrics import ProxyMetrics
from proxy.offload import compile_window
from proxy.preauth import PreAuthLimits, PreAuthRegistry
from proxy.registry import CancelRouter, SessionRegistry
from proxy.routing import LiveSnapshot
from proxy.session import ClientSession, SessionCollaborators
from proxy.snapshot import AuthorizationMode, Snapshot

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
        cancel_router: CancelRouter | None = None,  # several processes share the address (runtime/workers.py)
        # What a grant window's boundary runs: by default this server's refresh_grants; the parent of workers
        # passes one that moves every worker. A worker has no timer (`has_grant_timer=False`): its parent's moves it.
        grant_refresh: Callable[[], Awaitable[object]] | None = None,
        has_grant_timer: bool = True,
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
        self._reloads_asked = 0  # tickets handed to apply/reload calls, in the order they were made
        self._live_ticket = 0  # the ticket of the live snapshot: an older one never swaps in after it
        self.registry = SessionRegistry(self.metrics, cancel_router=cancel_router)  # sessions, cancel keys, identity
        self.preauth = PreAuthRegistry(preauth_limits or PreAuthLimits(), self.metrics)  # not logged in yet
        self.collaborators = SessionCollaborators(
            registry=self.registry, snapshots=self, access_log=access_log, metrics=self.metrics,
            identity=identity, preauth=self.preauth, tls_context=tls_context, default_service=default_service)
        self._server: asyncio.AbstractServer | None = None
        self._revocation: asyncio.Task[None] | None = None
        self._identity_watch: asyncio.Task[None] | None = None
        self.state_outage_grace_s = STATE_OUTAGE_GRACE_S  # start_proxy sets --state-outage-grace
        # Grant windows end at the second with no commit: a timer re-evaluates the live snapshot at each boundary.
        # Workers leave it to the parent, which pushes the re-evaluation to all of them (one generation).
        self.grant_timer = GrantTimer(grant_refresh or self.refresh_grants) if has_grant_timer else None
        # Replicas (runtime/replica.py): only the writer-lease holder runs housekeeping on the shared store, and
        # `sessions list` adds the other replicas' open connections per identity Session.
        self.is_writer: Callable[[], bool] = lambda: True
        self.peer_connections: Callable[[], dict[str, int]] = dict

    # --- listening -----------------------------------------------------------------------
    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> tuple[str, int]:
        """Listen on host:port; `reuse_port` lets several worker processes share it (SO_REUSEPORT)."""
        loop = asyncio.get_running_loop()
        # A deep accept queue: with asyncio's default of 100, a burst of connects overflows it and a real client's
        # SYN is dropped and retried a second later; the pre-auth caps, not the kernel, decide who stays.
        parts = self.collaborators
        self._server = await loop.create_server(lambda: ClientSession(parts), host, port, reuse_address=True,
                                                reuse_port=reuse_port or None, backlog=LISTEN_BACKLOG)
        sockname = self._server.sockets[0].getsockname()
        self._identity_watch = loop.create_task(self.watch_identity_sessions())
        if self.grant_timer is not None:
            self.grant_timer.arm(self.live)
        return sockname[0], sockname[1]

    def stop_accepting(self) -> None:
        """Close the listening socket, so a balancer moves on; open sessions carry on (proxy/drain.py ends them)."""
        if self._server is not None:
            self._server.close()

    async def close(self) -> None:
        if self._identity_watch is not None:
            self._identity_watch.cancel()
        if self.grant_timer is not None:
            self.grant_timer.cancel()
        if self._server is not None:
            self._server.close()
        for session in list(self.sessions.values()):
            session.terminate(AuthenticationFailed("the proxy is shutting down", hint="reconnect in a moment"))
        if self._server is not None:
            await self._server.wait_closed()
        await asyncio.sleep(0.05)  # let the FATALs go out before the sockets are dropped
        for connection in list(self.registry.connections):
            if connection.upstream is not None:
                connection.upstream.abort()
            connection.abort()
        await asyncio.sleep(0)  # connection_lost callbacks run before the loop may close
        self.access_log.writer.flush()

    # --- snapshots -----------------------------------------------------------------------
    def apply(self, snapshot: Snapshot) -> int:
        """Compile `snapshot` on this thread and swap it in; returns its generation. On error nothing changes.

        For callers off the relay's loop, or tests; on the loop prefer `reload`, which compiles in a thread.
        """
        return self._swap(compile_snapshot(snapshot, self.live.generation), self._take_ticket())

    async def reload(self, snapshot: Snapshot) -> int:
        """Compile `snapshot` in a worker thread, then swap it in on the loop; returns its generation.

        The loop only assigns one reference: sessions keep relaying while CEL and Policies compile. Reloads
        are numbered when asked for; one that finishes compiling after a later one went live raises
        SnapshotSuperseded instead of swapping an older state back in.
        """
        ticket = self._take_ticket()
        live = await asyncio.to_thread(_compile_in_thread, snapshot, self.live.generation)
        return self._swap(live, ticket)

    def _take_ticket(self) -> int:
        self._reloads_asked += 1
        return self._reloads_asked

    def _swap(self, live: LiveSnapshot, ticket: int) -> int:
        """On the loop: make `live` the served snapshot (one assignment), then re-check sessions in batches."""
        if ticket < self._live_ticket:
            raise SnapshotSuperseded(
                f"snapshot dropped: a reload asked for after it went live first (generation {self.live.generation})",
                hint="the newer state stays live; apply again to serve this one")
        # Numbered here, not when compiled: generations stay consecutive (`pgwarden up --workers` relies on it).
        live.generation = self.live.generation + 1
        previous, self.live = self.live, live
        self._live_ticket = ticket
        self.applied_at = time.time()
        if self.grant_timer is not None:
            self.grant_timer.arm(live)
        if self._revocation is not None and not self._revocation.done():
            self._revocation.cancel()
        self._revocation = asyncio.get_running_loop().create_task(self._revoke(live, previous))
        return live.generation

    async def refresh_grants(self) -> int | None:
        """Re-evaluate the live snapshot at the clock's time, exactly as a reload of it: the grant timer calls
        this when a validFrom/validUntil passes. None when a reload went live meanwhile (it judged the windows
        itself, and its swap re-armed the timer).

        No ticket of its own: it never supersedes a reload in flight, and never swaps an older state back in.
        """
        base = self.live
        live = await asyncio.to_thread(_compile_in_thread, base.snapshot, base.generation)
        if self.live is not base:
            return None
        return self._swap(live, self._live_ticket)

    async def _revoke(self, live: LiveSnapshot, previous: LiveSnapshot | None = None) -> None:
        for i, session in enumerate(list(self.sessions.values())):
            if i and i % REVOCATION_BATCH == 0:
                await asyncio.sleep(0)
            if self.live is not live:
                return  # a newer snapshot took over; it will re-check everyone
            reason = self.recheck(session, live)
            if reason is not None and previous is not None and session.info is not None:
                reason = name_lapsed_grants(reason, session.info.user, session.info.service, previous, live)
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

    # --- session registry (proxy/registry.py) ---------------------------------------------
    @property
    def sessions(self) -> dict[str, ClientSession]:
        """The sessions that reached the relay, by id."""
        return self.registry.sessions

    @property
    def connections(self) -> set[ClientSession]:
        """Every open client socket, logged in or not."""
        return self.registry.connections

    def start_cancel(self, process_id: int, secret_key: int) -> asyncio.Task[None]:
        """Forward a CancelRequest in its own task (a sibling worker's forward arrives here too)."""
        return self.registry.start_cancel(process_id, secret_key)

    async def watch_identity_sessions(self, *, interval_s: float = IDENTITY_RECHECK_S) -> None:
        """End connections whose Session was revoked elsewhere or expired, through store outages.

        Revocations normally arrive at once through the store's notices (every replica of a shared
        PostgreSQL store hears them); identity/revocation_watch.py keeps that feed alive, re-checks
        on reconnect and periodically, and ends sessions after `state_outage_grace_s` without a store.
        """
        watch = RevocationWatch(
            self.identity.store, live_sessions=self.registry.identity_session_ids,
            revoke=lambda sids, reason: self.revoke_identity_sessions(sids, reason=reason),
            end_all=lambda reason: self.end_identity_sessions(reason), housekeeping=self.housekeeping,
            recheck_s=interval_s, grace_s=self.state_outage_grace_s, housekeeping_s=PURGE_EVERY_S,
        )
        await watch.run()

    def end_identity_sessions(self, reason: str) -> int:
        """End every connection opened with an identity Session (the store cannot vouch for any of them)."""
        return self.registry.end_identity_sessions(reason)

    async def housekeeping(self, now: datetime) -> int:
        """Delete device codes past their expiry and sessions expired over PURGE_AFTER ago; never raises."""
        if not self.is_writer():
            return 0
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
        return self.registry.revoke_identity_sessions(session_ids, reason=reason)

    def session_list(self) -> list[dict[str, Any]]:
        return self.registry.session_list()


def compile_snapshot(snapshot: Snapshot, live_generation: int) -> LiveSnapshot:
    """Compile a Snapshot for serving (routing CEL, Policies); pure, so it may run in any thread.

    Raises SnapshotRejected naming `live_generation`, which stays live. The generation is set at the swap.
    """
    try:
        return LiveSnapshot(snapshot, generation=0)
    except Exception as exc:
        raise SnapshotInvalid(f"snapshot rejected, generation {live_generation} stays live: {exc}") from exc


def _compile_in_thread(snapshot: Snapshot, live_generation: int) -> LiveSnapshot:
    """`compile_snapshot` in a worker thread, in a window that keeps the loop thread moving (proxy/offload.py)."""
    with compile_window():
        return compile_snapshot(snapshot, live_generation)


def _retired_credential(session: IdentitySession, live: LiveSnapshot) -> str | None:
    """Why a client-credentials Session lost its Credential under `live` (its idp is the client_id), or None."""
    if session.method != AuthMethod.CLIENT_CREDENTIALS:
        return None
    credential = live.snapshot.credentials.get(session.idp)
    if credential is None:
        return f"client {session.idp} was removed"
    return f"client {session.idp} is disabled" if credential.is_disabled else None


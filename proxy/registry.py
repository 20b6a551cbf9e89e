"""The live sessions of one proxy process: what a session needs of the server, and no more.

Sessions that reached the relay by id, by the BackendKeyData we gave their client (CancelRequest) and by the
identity Session they were opened with (revocation); every open client socket; and the connection slots of guard
rails' maxConnectionsPerUser. Mutable on purpose: one event loop owns it, sessions add and remove themselves.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from identity.sessions import Identity
from proxy.errors import AuthenticationFailed, PgwardenError
from proxy.guardrails import TooManyConnections
from proxy.metrics import ProxyMetrics
from proxy.routing import Route
from proxy.upstream import UpstreamLogin, send_cancel

ConnectionSlot = tuple[str, str, str]  # (user, service, config) of a maxConnectionsPerUser rail


@dataclass(slots=True, kw_only=True)
class SessionInfo:
    """What `GET /v1/sessions` shows about a live session."""

    id: str
    user: str
    service: str
    config: str
    upstream_user: str
    upstream_database: str
    client_address: str
    started_at: float
    generation: int


class Relayed(Protocol):
    """The bytes an upstream side has received (for metrics and the session list)."""

    bytes_received: int


class RegisteredSession(Protocol):
    """What the registry reads and sets on a client session (proxy/session.py's ClientSession)."""

    id: str
    info: SessionInfo | None
    route: Route | None
    login: UpstreamLogin | None
    identity: Identity | None
    process_id: int
    secret_key: int
    bytes_received: int
    transaction_status: bytes
    pending_termination: PgwardenError | None
    connection_slot: ConnectionSlot | None

    @property
    def upstream(self) -> Relayed | None: ...

    @property
    def client_address(self) -> str: ...

    def terminate(self, reason: PgwardenError) -> None: ...


class CancelRouter(Protocol):
    """Where a CancelRequest goes when several processes share one address (runtime/ injects one).

    PostgreSQL sends a cancel on a new connection, which may reach a process other than the session's owner:
    the keys we hand out say which process owns them, and a cancel for another process's key is forwarded.
    """

    def claim(self, secret_key: int) -> int:
        """`secret_key` changed (a few bits at most) so that it names this process; stays a signed int32."""
        ...

    def is_mine(self, secret_key: int) -> bool:
        """Whether this process issued `secret_key`."""
        ...

    async def forward(self, process_id: int, secret_key: int) -> None:
        """Send the cancel to the process that owns `secret_key`; never raises (a cancel gets no reply)."""
        ...


class SessionRegistry:
    """Live sessions, cancel keys, the identity index and connection slots of one proxy process."""

    def __init__(self, metrics: ProxyMetrics, *, cancel_router: CancelRouter | None = None) -> None:
        self.metrics = metrics
        self.cancel_router = cancel_router  # None: one process owns every key
        self.sessions: dict[str, Any] = {}  # id -> a RegisteredSession that reached the relay
        self.connections: set[Any] = set()  # every open client socket, logged in or not
        self.by_cancel_key: dict[tuple[int, int], Any] = {}
        self._by_identity: dict[str, set[Any]] = {}  # identity Session id -> its live DB sessions
        self._rail_slots: dict[ConnectionSlot, set[str]] = {}  # -> ids of its sessions
        self._cancels: set[asyncio.Task[None]] = set()  # in flight; held so a closing client cannot drop them
        # Replicas behind one balancer: a cancel for a key we did not issue goes to the others (proxy/cancel_forward).
        self.forward_cancel: Callable[[int, int], Awaitable[None]] | None = None

    def register(self, session: RegisteredSession, user: str, generation: int) -> tuple[int, int]:
        """Record a session that reached the relay; returns the BackendKeyData we give its client.

        The process id is the upstream backend's own, so pg_backend_pid(), NotificationResponse and
        pg_terminate_backend() agree with what the client was told; the secret key is ours, so a
        client never learns the key that cancels on the upstream directly.
        """
        assert session.route is not None and session.login is not None
        process_id = session.login.process_id
        router = self.cancel_router
        while True:
            secret_key = secrets.randbits(32) - 2**31
            if router is not None:
                secret_key = router.claim(secret_key)
            if (process_id, secret_key) not in self.by_cancel_key:
                break
        route = session.route
        session.info = SessionInfo(
            id=session.id, user=user, service=route.service.name, config=route.config.name,
            upstream_user=route.upstream_user, upstream_database=route.upstream_database,
            client_address=session.client_address, started_at=time.time(), generation=generation,
        )
        self.sessions[session.id] = session
        self.metrics.session_started()
        self.by_cancel_key[(process_id, secret_key)] = session
        if session.identity is not None:
            self._by_identity.setdefault(session.identity.session.id, set()).add(session)
        return process_id, secret_key

    def take_connection_slot(self, session: RegisteredSession, user: str, route: Route) -> None:
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

    def forget(self, session: RegisteredSession) -> None:
        """The session ended: give back its slot, count its bytes, drop it from every index."""
        slot = session.connection_slot
        if slot is not None:
            session.connection_slot = None
            taken = self._rail_slots.get(slot)
            if taken is not None:
                taken.discard(session.id)
                if not taken:
                    del self._rail_slots[slot]
        if self.sessions.pop(session.id, None) is not None:
            upstream = session.upstream
            self.metrics.session_ended(session.bytes_received, upstream.bytes_received if upstream else 0,
                                       session.pending_termination)
        if session.identity is not None:
            live = self._by_identity.get(session.identity.session.id)
            if live is not None:
                live.discard(session)
                if not live:
                    del self._by_identity[session.identity.session.id]
        key = (session.process_id, session.secret_key)
        if self.by_cancel_key.get(key) is session:
            del self.by_cancel_key[key]

    # --- cancel requests -----------------------------------------------------------------
    def start_cancel(self, process_id: int, secret_key: int) -> asyncio.Task[None]:
        """Forward a CancelRequest in its own task, held here: a client that gives up waiting must not drop it.

        The caller closes the requester's connection when the task is done, not before: PostgreSQL closes a
        cancel connection only once the backend has been signalled, and clients rely on that (libpq's PQcancel
        and asyncpg wait for the close and then send their next query, which a late cancel would hit).
        """
        task = asyncio.get_running_loop().create_task(self.cancel(process_id, secret_key))
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)
        return task

    async def cancel(self, process_id: int, secret_key: int) -> None:
        """Forward a client's CancelRequest to the upstream backend of the session it names."""
        if self.cancel_router is not None and not self.cancel_router.is_mine(secret_key):
            await self.cancel_router.forward(process_id, secret_key)
            return
        if await self.cancel_here(process_id, secret_key) or self.forward_cancel is None:
            return
        await self.forward_cancel(process_id, secret_key)  # issued by another replica, perhaps

    async def cancel_here(self, process_id: int, secret_key: int) -> bool:
        """Cancel on the upstream if this process issued the key; False if it did not."""
        session = self.by_cancel_key.get((process_id, secret_key))
        if session is None or session.login is None or session.route is None:
            return False
        up = session.route.config.upstream
        await send_cancel(up.host, up.port, session.route.config.postgres.ssl_mode,
                          session.login.process_id, session.login.secret_key)
        return True

    # --- identity Sessions ---------------------------------------------------------------
    def identity_session_ids(self) -> list[str]:
        """The identity Sessions that have a live database session here."""
        return list(self._by_identity)

    def end_identity_sessions(self, reason: str) -> int:
        """End every connection opened with an identity Session (the store cannot vouch for any of them)."""
        ended = 0
        for sessions in list(self._by_identity.values()):
            for session in list(sessions):
                session.terminate(AuthenticationFailed(f"session ended: {reason}",
                                                       hint="connect again once the state store is back"))
                ended += 1
        return ended

    def revoke_identity_sessions(self, session_ids: list[str], *, reason: str) -> int:
        """End every database connection opened with these identity Sessions; returns how many."""
        ended = 0
        for sid in session_ids:
            for session in list(self._by_identity.get(sid, ())):
                session.terminate(AuthenticationFailed(f"session revoked: {reason}",
                                                       hint="log in again (pgwarden login) or issue a new token"))
                ended += 1
        return ended

    def session_list(self) -> list[dict[str, Any]]:
        """The live sessions as `GET /v1/sessions` shows them."""
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

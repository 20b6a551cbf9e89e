"""Replicas that share a PostgreSQL state store: a directory row each (heartbeat, cancel address, applied revision,
open database connections per identity Session) and the writer lease, a session-level advisory lock.

The lease lives on the directory's own connection: PostgreSQL drops the lock the moment that backend ends, so a
leader that is killed (SIGKILL, power loss: the kernel closes its socket) hands over at the next heartbeat of
another replica. The leader is whoever's backend holds the lock in pg_locks, never a flag a dead replica left.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from identity.store.base import StateStoreUnavailable, mask_dsn, utc_now

log = logging.getLogger("pgwarden.replicas")

HEARTBEAT_S = 0.5
STALE_AFTER_S = 5.0  # a row not refreshed for this long belongs to a replica that is gone
LEASE_CLASS, LEASE_OBJECT = 0x70677764, 1  # ('pgwd', 1): pg_try_advisory_lock(int4, int4) of the writer lease
_UNAVAILABLE = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaRecord:
    """One replica as the directory shows it."""

    id: str
    cancel_address: str  # HOST:PORT of its cancel inbox
    web_url: str
    revision: str  # the revision it has applied
    connections: dict[str, int] = field(default_factory=dict)  # identity Session id -> open DB connections
    heartbeat_at: datetime
    is_leader: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "cancelAddress": self.cancel_address, "webURL": self.web_url,
                "revision": self.revision, "databaseConnections": sum(self.connections.values()),
                "heartbeatAt": self.heartbeat_at.isoformat(), "isLeader": self.is_leader}


@dataclass(slots=True, kw_only=True)
class LocalReplica:
    """What this replica publishes at each heartbeat. Mutable: the runtime updates it."""

    id: str
    cancel_address: str
    web_url: str
    revision: str = ""
    connections: dict[str, int] = field(default_factory=dict)


class ReplicaDirectory:
    """This replica's row and lease in the shared store. Mutable: it owns one connection and its heartbeat."""

    def __init__(self, dsn: str, local: LocalReplica) -> None:
        self._dsn = dsn
        self._where = mask_dsn(dsn)
        self.local = local
        self.is_leader = False
        self.replicas: list[ReplicaRecord] = []  # as of the last heartbeat
        self._conn: asyncpg.Connection | None = None
        self._started = utc_now()

    async def beat(self) -> bool:
        """Publish our row, try to take the lease, read the directory; returns whether we hold the lease.

        Raises StateStoreUnavailable; the connection (and with it the lease) is dropped then, and made again
        at the next beat."""
        try:
            conn = await self._connection()
            local = self.local
            await conn.execute(
                "INSERT INTO pgwarden.replicas (id, backend_pid, cancel_address, web_url, revision, connections, "
                "started_at, heartbeat_at) VALUES ($1, pg_backend_pid(), $2, $3, $4, $5::jsonb, $6, now()) "
                "ON CONFLICT (id) DO UPDATE SET backend_pid = excluded.backend_pid, cancel_address = "
                "excluded.cancel_address, web_url = excluded.web_url, revision = excluded.revision, "
                "connections = excluded.connections, heartbeat_at = now()",
                local.id, local.cancel_address, local.web_url, local.revision, json.dumps(local.connections),
                self._started)
            if not self.is_leader:
                self.is_leader = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)",
                                                          LEASE_CLASS, LEASE_OBJECT))
                if self.is_leader:
                    log.info("replica %s now holds the writer lease", local.id)
            rows = await conn.fetch(
                "SELECT r.id, r.cancel_address, r.web_url, r.revision, r.connections, r.heartbeat_at, "
                "EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted AND l.pid = "
                "r.backend_pid AND l.classid::bigint = $1 AND l.objid::bigint = $2 AND l.objsubid = 2) AS leads "
                "FROM pgwarden.replicas r WHERE r.heartbeat_at > now() - $3::interval ORDER BY r.id",
                LEASE_CLASS, LEASE_OBJECT, timedelta(seconds=STALE_AFTER_S))
        except _UNAVAILABLE as exc:
            await self._drop()
            raise StateStoreUnavailable(f"state store {self._where}: replica heartbeat failed: "
                                        f"{type(exc).__name__}") from None
        self.replicas = [ReplicaRecord(id=r["id"], cancel_address=r["cancel_address"], web_url=r["web_url"],
                                       revision=r["revision"], connections=dict(json.loads(r["connections"])),
                                       heartbeat_at=r["heartbeat_at"], is_leader=r["leads"]) for r in rows]
        return self.is_leader

    def others(self) -> list[ReplicaRecord]:
        return [r for r in self.replicas if r.id != self.local.id]

    def leader(self) -> ReplicaRecord | None:
        return next((r for r in self.replicas if r.is_leader), None)

    async def close(self) -> None:
        """Leave the directory and release the lease (a killed replica's row simply goes stale).

        The lease is unlocked by statement, not left to the end of the connection: a backend exits some time
        after its client's socket closes (later still on a loaded server), and another replica's beat in that
        gap would find the lease held and leave the fleet without a writer for a whole heartbeat."""
        if self._conn is not None and not self._conn.is_closed():
            try:
                await self._conn.execute("DELETE FROM pgwarden.replicas WHERE id = $1", self.local.id)
                if self.is_leader:
                    await self._conn.execute("SELECT pg_advisory_unlock($1, $2)", LEASE_CLASS, LEASE_OBJECT)
            except _UNAVAILABLE:
                pass
        await self._drop()

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self.is_leader = False  # a new backend holds no lock
            self._conn = await asyncpg.connect(self._dsn, timeout=5,
                                               server_settings={"application_name": "pgwarden-replica"})
        return self._conn

    async def _drop(self) -> None:
        conn, self._conn, self.is_leader = self._conn, None, False
        if conn is not None and not conn.is_closed():
            conn.terminate()

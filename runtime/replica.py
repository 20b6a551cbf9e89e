"""One `pgwarden up` among several replicas sharing a PostgreSQL state store (`--state postgres://…`).

Assembles the parts that make replicas one service behind a balancer: the directory row and writer lease
(identity/store/replicas.py), cancel forwarding between replicas (proxy/cancel_forward.py), open connections
per identity Session published for `pgwarden sessions list`, and GET /v1/replicas on the admin socket.
Only the lease holder runs the state store's housekeeping; every replica applies the same commit itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from identity.store.base import StateStoreUnavailable
from identity.store.replicas import HEARTBEAT_S, LocalReplica, ReplicaDirectory
from proxy.cancel_forward import CancelInbox, forward_cancel, forwarding_key
from proxy.server import ProxyServer
from runtime.datadir import state_key

log = logging.getLogger("pgwarden.replicas")

MAX_FORWARDS_PER_S = 100


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaSettings:
    """How this replica names itself and where other replicas forward cancel requests to it."""

    id: str | None = None  # default: HOST-RANDOM
    cancel_listen: tuple[str, int] | None = None  # default: the proxy's listen host, a free port
    advertise_host: str | None = None  # default: the cancel inbox's host, or this host's address for a wildcard


def is_shared_state(state: str | None) -> bool:
    return bool(state) and str(state).startswith(("postgres://", "postgresql://"))


class Replica:
    """This process as a replica. Mutable: built before the proxy (for its admin routes), started after it."""

    def __init__(self, settings: ReplicaSettings, state: str, data_dir: Path, *, revision: Callable[[], str],
                 web_url: str) -> None:
        self._settings = settings
        self._data_dir = data_dir
        self._revision = revision
        self.id = settings.id or f"{socket.gethostname()}-{secrets.token_hex(3)}"
        self.directory = ReplicaDirectory(state, LocalReplica(id=self.id, cancel_address="", web_url=web_url))
        self._inbox: CancelInbox | None = None
        self._task: asyncio.Task[None] | None = None
        self._server: ProxyServer | None = None
        self._window_start, self._forwards = 0.0, 0  # cancel forwards in the current second

    def add_routes(self, app: web.Application) -> None:
        async def replicas(_: web.Request) -> web.Response:
            leader = self.directory.leader()
            return web.json_response({
                "replica": self.id, "isLeader": self.directory.is_leader, "leader": leader.id if leader else None,
                "replicas": [r.to_dict() for r in self.directory.replicas]})

        app.router.add_get("/v1/replicas", replicas)

    async def start(self, server: ProxyServer, proxy_host: str) -> None:
        """Open the cancel inbox, wire cancel forwarding and the writer gate, join the directory."""
        self._server = server
        key = forwarding_key(state_key(self._data_dir))
        self._inbox = CancelInbox(key, server.registry.cancel_here)
        host, port = self._settings.cancel_listen or (proxy_host, 0)
        bound_host, bound_port = await self._inbox.start(host, port)
        advertised = self._settings.advertise_host or _advertised(bound_host)
        self.directory.local.cancel_address = f"{advertised}:{bound_port}"

        async def forward(process_id: int, secret_key: int) -> None:
            inboxes = [r.cancel_address for r in self.directory.others()]
            if not inboxes or not self._may_forward():
                return
            delivered = await forward_cancel(key, inboxes, process_id, secret_key)
            log.info("forwarded a cancel request for a key this replica did not issue to %d replica(s)", delivered)

        server.registry.forward_cancel = forward
        server.is_writer = lambda: self.directory.is_leader
        server.peer_connections = self.peer_connections
        with contextlib.suppress(StateStoreUnavailable):
            await self._beat()  # the first row before we report ready; the loop retries an outage
        self._task = asyncio.get_running_loop().create_task(self._run())
        print(f"pgwarden replica {self.id}: cancel inbox {self.directory.local.cancel_address}, "
              f"{'holds' if self.directory.is_leader else 'waits for'} the writer lease", file=sys.stderr, flush=True)

    def _may_forward(self) -> bool:
        """At most MAX_FORWARDS_PER_S: anyone may send CancelRequests with made-up keys, and each one we forward
        costs every other replica a connection, so a flood of them must not multiply."""
        now = time.monotonic()
        if now - self._window_start >= 1.0:
            self._window_start, self._forwards = now, 0
        self._forwards += 1
        if self._forwards == MAX_FORWARDS_PER_S + 1:
            log.warning("more than %d cancel requests a second for keys issued elsewhere: the rest of this second's "
                        "are dropped", MAX_FORWARDS_PER_S)
        return self._forwards <= MAX_FORWARDS_PER_S

    def peer_connections(self) -> dict[str, int]:
        """Open database connections per identity Session on the other live replicas (as of their heartbeat)."""
        total: dict[str, int] = {}
        for record in self.directory.others():
            for sid, count in record.connections.items():
                total[sid] = total.get(sid, 0) + count
        return total

    async def _beat(self) -> None:
        local = self.directory.local
        local.revision = self._revision()
        counts: dict[str, int] = {}
        if self._server is not None:
            for entry in self._server.session_list():
                if entry["identitySession"]:
                    counts[entry["identitySession"]] = counts.get(entry["identitySession"], 0) + 1
        local.connections = counts
        was_leader = self.directory.is_leader
        await self.directory.beat()
        if self.directory.is_leader and not was_leader:
            print(f"pgwarden replica {self.id}: took the writer lease", file=sys.stderr, flush=True)

    async def _run(self) -> None:
        is_down = False
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                await self._beat()
                is_down = False
            except StateStoreUnavailable as exc:
                if not is_down:
                    log.warning("replica %s: %s; the writer lease is released", self.id, exc.message)
                is_down = True

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        if self._inbox is not None:
            await self._inbox.close()
        await self.directory.close()


def _advertised(host: str) -> str:
    if host not in ("0.0.0.0", "::", ""):
        return f"[{host}]" if ":" in host else host
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"

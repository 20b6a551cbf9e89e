"""The parent of `pgwarden up --workers N`: a `WorkerGroup` in front of the N worker processes' admin sockets.

How it works (docs/performance.md, "pgwarden up --workers N"):
- The parent holds a plain ProxyServer that never listens (`WorkerGroup.local`): the live snapshot and the
  identity authority (signing key from the data directory, the shared state store). The `WorkerGroup` wraps it
  and is the reconciler's LiveTarget, the admin API's host and identity's host, so the admin socket (status,
  reconcile, token issue, sessions), the auth server, the webhook and /metrics work as in one process.
- It reserves the proxy port with SO_REUSEPORT (runtime/workers.py) and starts N workers, each
  `pgwarden up … --worker-slot I/N`: a ProxyServer on the shared port with an empty snapshot and a cancel router,
  its admin API on DATA_DIR/admin-I.sock. The keys exist before any worker starts (the parent created them).
- `WorkerGroup.swap` is the one way a snapshot goes live (the reconciler's apply and PUT /v1/state both end
  there): it PUTs the snapshot to every worker's admin socket in index order and swaps its own copy only when
  all accepted. Worker 0 compiles first, so a snapshot the proxy refuses is refused before any worker changes.
  All workers start at generation 1 and move together, so they serve the same generation.
- `session_list()` gathers every worker's connections (each tagged with `worker`), so `pgwarden sessions
  list` and GET /v1/sessions on the parent's socket show them all.
- A worker that exits stops the parent (exit 1), which stops the others; a supervisor restarts the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from identity.certs import ClientCertificateAuthority
from identity.sessions import SessionAuthority
from identity.store.opening import open_store
from identity.tokens import TokenAuthority
from proxy.admin import add_metrics_route, build_app, start_admin
from proxy.audit.accesslog import AccessLog, AccessLogWriter
from proxy.errors import SnapshotInvalid, WorkerUnreachable
from proxy.routing import LiveSnapshot
from proxy.server import ProxyServer
from proxy.snapshot import Snapshot
from proxy.snapshot_wire import to_wire
from proxy.tls import ServerCertificate, ensure_local_certificate, server_context
from runtime.admin_socket import request
from runtime.datadir import ADMIN_SOCKET, fingerprint_key, prepare, state_key
from runtime.process import ProxyOptions, RunningProxy
from runtime.workers import await_ready, reserve_port, spawn_worker, wait_all

log = logging.getLogger("pgwarden")
APPLY_TIMEOUT_S = 60.0  # a 10,000-User snapshot takes a while to compile on a busy worker
LIST_TIMEOUT_S = 5.0


def worker_admin_socket(admin_socket: Path, index: int) -> Path:
    """Worker I's admin API: `admin-I.sock` next to the parent's (which keeps `admin.sock` for the CLI)."""
    return admin_socket.with_name(f"{admin_socket.stem}-{index}{admin_socket.suffix}")


class WorkerGroup:
    """The workers as one proxy: applies snapshots to every worker, lists and revokes their sessions.

    `local` is bound once the parent's never-listening ProxyServer exists (its admin API is built around this
    group, and the reconciler is built with it as its target before that).
    """

    def __init__(self, worker_sockets: list[Path], local: ProxyServer | None = None) -> None:
        self.worker_sockets = worker_sockets
        self.local = local
        self.worker_pids: list[int] = []  # set once every worker is ready (and handles SIGUSR1)
        self._pushing = asyncio.Lock()  # reloads reach the workers one after another

    def _bound(self) -> ProxyServer:
        if self.local is None:
            raise RuntimeError("the parent's proxy state is not open yet")
        return self.local

    # --- what the admin API and identity read, from the parent's copy -------------------------------------
    @property
    def live(self) -> LiveSnapshot:
        return self._bound().live

    @property
    def applied_at(self) -> float:
        return self._bound().applied_at

    @property
    def fingerprint_key(self) -> bytes:
        return self._bound().fingerprint_key

    @property
    def identity(self) -> SessionAuthority:
        return self._bound().identity

    @property
    def client_ca(self) -> ClientCertificateAuthority | None:
        return self._bound().client_ca

    def peer_connections(self) -> dict[str, int]:
        """Other replicas' connections: none are known with --workers (docs/replicas.md, Limits)."""
        return {}

    @property
    def sessions(self) -> dict[str, Any]:
        return self._bound().sessions  # the parent relays nothing: its own, always empty

    # --- the reconciler's LiveTarget ----------------------------------------------------------------------
    def current(self) -> Snapshot:
        return self._bound().live.snapshot

    async def swap(self, snapshot: Snapshot) -> int:
        return await self.reload(snapshot)

    async def reload(self, snapshot: Snapshot) -> int:
        """Every worker takes `snapshot`, then the parent's copy; the workers' round trips run in a thread, so
        the parent's loop keeps serving logins. One reload at a time: overlapping ones reach every worker in the
        same order."""
        local = self._bound()
        async with self._pushing:
            generations = await asyncio.to_thread(self._push_to_workers, snapshot)
            return self._generation_after(generations, await local.reload(snapshot))

    async def refresh_grants(self) -> int | None:
        """A grant window opened or closed: every worker re-evaluates the live snapshot, then the parent (one
        generation for all). Under the reload lock, so no reload is half pushed and the live state is current."""
        local = self._bound()
        async with self._pushing:
            generations = await asyncio.to_thread(self._push_to_workers, local.live.snapshot)
            generation = await local.refresh_grants()
            return None if generation is None else self._generation_after(generations, generation)

    def _push_to_workers(self, snapshot: Snapshot) -> list[int]:
        """PUT `snapshot` to every worker in index order; the generations they took it as. Raises on a refusal."""
        body = json.dumps(to_wire(snapshot, fingerprint_key=self.fingerprint_key, include_secrets=True),
                          default=str).encode()
        generations: list[int] = []
        for index, path in enumerate(self.worker_sockets):
            try:
                code, reply = request(path, "PUT", "/v1/state", body=body, timeout_s=APPLY_TIMEOUT_S)
            except OSError as exc:
                code, reply = 0, {"error": f"unreachable on {path.name}: {exc.strerror or exc}"}
            if code != 200:
                reason = reply.get("error", f"HTTP {code}") if isinstance(reply, dict) else f"HTTP {code}"
                # 400/422: the worker read the snapshot and cannot compile it, and never will; anything else
                # (unreachable, a timeout, a 5xx) may pass on the next attempt.
                refused = SnapshotInvalid if code in (400, 422) else WorkerUnreachable
                raise refused(refusal_message(index, reason, generations, self.live.generation))
            generations.append(int(reply["generation"]))
        return generations

    @staticmethod
    def _generation_after(generations: list[int], generation: int) -> int:
        if set(generations) != {generation}:  # only after a worker failed mid-apply before (it is then named)
            log.warning("workers serve generations %s, the parent %d", generations, generation)
        return generations[0] if generations else generation

    # --- sessions -----------------------------------------------------------------------------------------
    async def revoke_identity_sessions(self, session_ids: list[str], *, reason: str) -> int:
        """The admin API revoked these Sessions in the store: make every worker re-check its connections now.

        SIGUSR1 rather than a request: a worker's own revoke endpoint would find the Session already revoked.
        Returns the connections that will end (counted from the workers' lists), as one process would.
        """
        wanted = set(session_ids)
        ending = sum(1 for entry in self.session_list() if entry.get("identitySession") in wanted)
        for pid in self.worker_pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGUSR1)
        log.info("asked %d workers to end the connections of %d revoked sessions (%s)",
                 len(self.worker_pids), len(session_ids), reason)
        return ending

    def session_list(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for index, path in enumerate(self.worker_sockets):
            try:
                code, body = request(path, "GET", "/v1/sessions", timeout_s=LIST_TIMEOUT_S)
            except OSError as exc:
                log.warning("worker %d did not list its sessions: %s", index, exc.strerror or exc)
                continue
            if code == 200:
                out += [{**entry, "worker": index} for entry in body.get("sessions", [])]
        return out


def refusal_message(index: int, reason: str, accepted: list[int], previous: int) -> str:
    if not accepted:
        return f"worker {index} refused the snapshot, every worker keeps generation {previous}: {reason}"
    return (f"worker {index} refused the snapshot: {reason}; workers 0-{index - 1} serve generation "
            f"{accepted[-1]}, worker {index} and later keep generation {previous} until the next apply")


async def start_control(options: ProxyOptions, port: int, group: WorkerGroup, *,
                        admin_routes: Callable[[web.Application], None]) -> RunningProxy:
    """Like runtime.process.start_proxy without a listener: the same keys, store and CA; the admin API serves
    `group`. Binds `group.local`."""
    data_dir = prepare(options.data_dir)
    if options.tls_cert and options.tls_key:
        cert = ServerCertificate(cert_path=options.tls_cert, key_path=options.tls_key, ca_path=None)
    else:
        cert = ensure_local_certificate(data_dir)
    store = await open_store(options.state, data_dir, encryption_key=state_key(data_dir))
    client_ca = ClientCertificateAuthority.load_or_create(data_dir)
    server = ProxyServer(  # never listens: the workers do
        tls_context=server_context(cert, client_ca=client_ca.cert_path),
        client_ca=client_ca,
        identity=SessionAuthority(TokenAuthority.load_or_create(data_dir), store),
        access_log=AccessLog(AccessLogWriter(options.access_log)),  # workers log the connections
        fingerprint_key=fingerprint_key(data_dir),
        snapshot=Snapshot(),
        default_service=options.default_service,
        grant_refresh=group.refresh_grants,  # the parent's timer moves every worker
    )
    group.local = server
    socket_path = options.admin_socket or data_dir / ADMIN_SOCKET
    app = build_app(group)
    admin_routes(app)
    add_metrics_route(app, server)
    admin = await start_admin(server, socket_path, app)
    return RunningProxy(server=server, admin=admin, host=options.listen_host, port=port, admin_socket=socket_path,
                        ca_path=cert.ca_path)


class WorkerProcesses:
    """The worker processes: started once the parent's keys exist, watched, stopped together."""

    def __init__(self, host: str, port: int, count: int, data_dir: Path) -> None:
        self.count = count
        self.host = host
        self.reservation = reserve_port(host, port)  # OSError: reported like any listen failure
        self.port: int = self.reservation.getsockname()[1]
        self.extra = ("--data-dir", str(data_dir))  # the parent may have chosen the default
        self.procs: list[subprocess.Popen[bytes]] = []
        self.died: str | None = None

    async def start(self) -> None:
        spawned = [spawn_worker(i, self.count, self.host, self.port, self.extra) for i in range(self.count)]
        self.procs = [popen for popen, _ in spawned]
        await asyncio.gather(*(asyncio.to_thread(await_ready, popen, fd, i)
                               for i, (popen, fd) in enumerate(spawned)))

    async def watch(self) -> None:
        """A dead worker stops the parent (SIGTERM to itself ends serve_until_signal), which stops the rest."""
        while True:
            await asyncio.sleep(0.5)
            for index, popen in enumerate(self.procs):
                if popen.poll() is not None:
                    if popen.returncode != 0:  # 0: stopped by a signal it was sent (Ctrl-C reaches it too)
                        self.died = f"worker {index} exited with {popen.returncode}; stopped the others"
                    os.kill(os.getpid(), signal.SIGTERM)
                    return

    def signal_all(self, signum: int) -> None:
        for popen in self.procs:
            with contextlib.suppress(ProcessLookupError):
                popen.send_signal(signum)

    def stop(self, *, timeout_s: float = 15.0) -> None:
        """SIGTERM every worker (each drains, see runtime/drain.py) and wait up to `timeout_s` for them."""
        self.signal_all(signal.SIGTERM)
        wait_all(self.procs, timeout_s=timeout_s)
        self.reservation.close()

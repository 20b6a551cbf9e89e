"""`pgwarden up --workers N`: the reconciler and the HTTP listener in the parent, the proxy in N workers.

How it works (docs/performance.md, "pgwarden up --workers N"):
- The parent builds a `ControlServer`: a ProxyServer that never listens. It holds the live snapshot and the
  identity authority (signing key from the data directory, the shared state store), so the admin socket
  (status, reconcile, token issue, sessions), the auth server, the webhook and /metrics work as in one process.
- It reserves the proxy port with SO_REUSEPORT (pgwarden/workers.py) and starts N workers, each
  `pgwarden up … --worker-slot I/N`: a WorkerServer on the shared port with an empty snapshot, its admin API
  on DATA_DIR/admin-I.sock. The keys exist before any worker starts (the parent created them), so none race.
- `ControlServer.reload` is the one way a snapshot goes live (the reconciler's apply and PUT /v1/state both
  end there): it PUTs the snapshot to every worker's admin socket in index order and swaps its own copy only
  when all accepted. Worker 0 compiles first, so a snapshot the proxy refuses is refused before any worker
  changes. All workers start at generation 1 and move together, so they serve the same generation.
- `session_list()` gathers every worker's connections (each tagged with `worker`), so `pgwarden sessions
  list` and GET /v1/sessions on the parent's socket show them all.
- A worker that exits stops the parent (exit 1), which stops the others; a supervisor restarts the group.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from identity.certs import ClientCertificateAuthority
from identity.sessions import SessionAuthority
from identity.store.opening import open_store
from identity.tokens import TokenAuthority
from pgwarden.adminclient import request
from pgwarden.commands.proxy import options_from
from pgwarden.datadir import ADMIN_SOCKET, fingerprint_key, prepare, state_key
from pgwarden.notifications import webhook_settings_from
from pgwarden.output import error
from pgwarden.runtime import ProxyOptions, RunningProxy, run, serve_until_signal, start_proxy
from pgwarden.workers import (
    WorkerServer,
    WorkerSlot,
    _await_ready,
    _reserve_port,
    _spawn,
    _wait_all,
    _workers,
    announce_ready,
    parse_slot,
)
from proxy.admin import add_metrics_route, build_app, start_admin
from proxy.audit.accesslog import AccessLog, AccessLogWriter
from proxy.errors import SnapshotInvalid, WorkerUnreachable
from proxy.server import ProxyServer
from proxy.snapshot import Snapshot, to_wire
from proxy.tls import ServerCertificate, ensure_local_certificate, server_context
from reconciler.api import add_reconciler_routes
from reconciler.notifications import notify_revocations, start_notifications
from reconciler.sops import KeyRing
from reconciler.source import SourceSpec

log = logging.getLogger("pgwarden")
_APPLY_TIMEOUT_S = 60.0  # a 10,000-User snapshot takes a while to compile on a busy worker
_LIST_TIMEOUT_S = 5.0


def add_up_worker_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=_workers, default=1, metavar="N|auto",
                   help="proxy worker processes sharing the listening port via SO_REUSEPORT; auto starts one per "
                        "core this process may use (the production setting). Default 1: one process. The "
                        "reconciler, login pages and webhook stay in the parent, which pushes every revision to "
                        "all workers, e.g. pgwarden up --repo URL --workers auto")
    p.add_argument("--worker-slot", type=parse_slot, default=None, help=argparse.SUPPRESS)  # set by the parent


def worker_admin_socket(admin_socket: Path, index: int) -> Path:
    """Worker I's admin API: `admin-I.sock` next to the parent's (which keeps `admin.sock` for the CLI)."""
    return admin_socket.with_name(f"{admin_socket.stem}-{index}{admin_socket.suffix}")


class ControlServer(ProxyServer):
    """The parent's ProxyServer: never listens; applies snapshots to every worker and lists their sessions."""

    def __init__(self, *, worker_sockets: list[Path], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.worker_sockets = worker_sockets
        self.worker_pids: list[int] = []  # set once every worker is ready (and handles SIGUSR1)
        self._pushing = asyncio.Lock()  # reloads reach the workers one after another

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

    def apply(self, snapshot: Snapshot) -> int:
        generations = self._push_to_workers(snapshot)
        return self._generation_after(generations, super().apply(snapshot))

    async def reload(self, snapshot: Snapshot) -> int:
        """As `apply`, with the workers' round trips in a thread: the parent's loop keeps serving logins meanwhile.

        One reload at a time (a lock), so two overlapping ones reach every worker in the same order.
        """
        async with self._pushing:
            generations = await asyncio.to_thread(self._push_to_workers, snapshot)
            return self._generation_after(generations, await super().reload(snapshot))

    def _push_to_workers(self, snapshot: Snapshot) -> list[int]:
        """PUT `snapshot` to every worker in index order; the generations they took it as. Raises on a refusal."""
        body = json.dumps(to_wire(snapshot, fingerprint_key=self.fingerprint_key, include_secrets=True),
                          default=str).encode()
        generations: list[int] = []
        for index, path in enumerate(self.worker_sockets):
            try:
                code, reply = request(path, "PUT", "/v1/state", body=body, timeout_s=_APPLY_TIMEOUT_S)
            except OSError as exc:
                code, reply = 0, {"error": f"unreachable on {path.name}: {exc.strerror or exc}"}
            if code != 200:
                reason = reply.get("error", f"HTTP {code}") if isinstance(reply, dict) else f"HTTP {code}"
                # 400/422: the worker read the snapshot and cannot compile it, and never will; anything else
                # (unreachable, a timeout, a 5xx) may pass on the next attempt.
                refused = SnapshotInvalid if code in (400, 422) else WorkerUnreachable
                raise refused(_refusal(index, reason, generations, self.live.generation))
            generations.append(int(reply["generation"]))
        return generations

    @staticmethod
    def _generation_after(generations: list[int], generation: int) -> int:
        if set(generations) != {generation}:  # only after a worker failed mid-apply before (it is then named)
            log.warning("workers serve generations %s, the parent %d", generations, generation)
        return generations[0] if generations else generation

    def session_list(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for index, path in enumerate(self.worker_sockets):
            try:
                code, body = request(path, "GET", "/v1/sessions", timeout_s=_LIST_TIMEOUT_S)
            except OSError as exc:
                log.warning("worker %d did not list its sessions: %s", index, exc.strerror or exc)
                continue
            if code == 200:
                out += [{**entry, "worker": index} for entry in body.get("sessions", [])]
        return out


def _refusal(index: int, reason: str, accepted: list[int], previous: int) -> str:
    if not accepted:
        return f"worker {index} refused the snapshot, every worker keeps generation {previous}: {reason}"
    return (f"worker {index} refused the snapshot: {reason}; workers 0-{index - 1} serve generation "
            f"{accepted[-1]}, worker {index} and later keep generation {previous} until the next apply")


async def start_control(options: ProxyOptions, port: int, worker_sockets: list[Path], *,
                        admin_routes: Any) -> RunningProxy:
    """Like runtime.start_proxy, without a listener: the same keys, store, CA and admin API."""
    data_dir = prepare(options.data_dir)
    if options.tls_cert and options.tls_key:
        cert = ServerCertificate(cert_path=options.tls_cert, key_path=options.tls_key, ca_path=None)
    else:
        cert = ensure_local_certificate(data_dir)
    store = await open_store(options.state, data_dir, encryption_key=state_key(data_dir))
    client_ca = ClientCertificateAuthority.load_or_create(data_dir)
    server = ControlServer(
        worker_sockets=worker_sockets,
        tls_context=server_context(cert, client_ca=client_ca.cert_path),
        client_ca=client_ca,
        identity=SessionAuthority(TokenAuthority.load_or_create(data_dir), store),
        access_log=AccessLog(AccessLogWriter(options.access_log)),  # workers log the connections
        fingerprint_key=fingerprint_key(data_dir),
        snapshot=Snapshot(),
        default_service=options.default_service,
    )
    socket_path = options.admin_socket or data_dir / ADMIN_SOCKET
    app = build_app(server)
    admin_routes(app)
    add_metrics_route(app, server)
    admin = await start_admin(server, socket_path, app)
    return RunningProxy(server=server, admin=admin, host=options.listen_host, port=port, admin_socket=socket_path,
                        ca_path=cert.ca_path)


# --- the worker -------------------------------------------------------------------------------------------

def run_up_worker(args: argparse.Namespace) -> int:
    """`pgwarden up … --worker-slot I/N`, started by the parent: serve clients; the parent pushes snapshots."""
    slot: WorkerSlot = args.worker_slot
    options = options_from(args)
    admin = worker_admin_socket(options.admin_socket or options.data_dir / ADMIN_SOCKET, slot.index)
    options = dataclasses.replace(options, admin_socket=admin)

    async def main() -> None:
        running = await start_proxy(options, Snapshot(), server_factory=functools.partial(
            WorkerServer, slot=slot, data_dir=options.data_dir))
        server = running.server
        assert isinstance(server, WorkerServer)
        rechecks: set[asyncio.Task[int]] = set()  # held until done

        def recheck() -> None:  # the parent's SIGUSR1: a Session was revoked through its admin API
            task = asyncio.get_running_loop().create_task(server.recheck_identity_sessions())
            rechecks.add(task)
            task.add_done_callback(rechecks.discard)

        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, recheck)  # before the parent may send it
        announce_ready(running.ready_line(), is_to_stderr=True)
        await serve_until_signal(running)

    try:
        run(main)
    except OSError as exc:  # the parent reports that this worker did not start
        error(f"worker {slot.index}: cannot listen on {options.listen_host}:{options.listen_port}: "
              f"{exc.strerror or exc}")
        return 2
    return 0


# --- the parent -------------------------------------------------------------------------------------------

class _Workers:
    """The worker processes: started once the parent's keys exist, watched, stopped together."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.count: int = args.workers
        self.host, port = args.listen
        self.reservation = _reserve_port(self.host, port)  # OSError: reported like any listen failure
        self.port: int = self.reservation.getsockname()[1]
        self.extra = ("--data-dir", str(args.data_dir))  # the parent may have chosen the default
        self.procs: list[subprocess.Popen[bytes]] = []
        self.died: str | None = None

    async def start(self) -> None:
        spawned = [_spawn(i, self.count, self.host, self.port, self.extra) for i in range(self.count)]
        self.procs = [popen for popen, _ in spawned]
        await asyncio.gather(*(asyncio.to_thread(_await_ready, popen, fd, i)
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

    def stop(self) -> None:
        for popen in self.procs:
            with contextlib.suppress(ProcessLookupError):
                popen.send_signal(signal.SIGTERM)
        _wait_all(self.procs)
        self.reservation.close()


async def serve_with_workers(args: argparse.Namespace, spec: SourceSpec, keys: KeyRing, *, is_demo: bool) -> None:
    """`pgwarden up --workers N`: as up.py's `_serve`, with the proxy listeners in N worker processes."""
    from pgwarden.commands import up  # up.py imports this module lazily; its helpers are shared

    options = options_from(args)
    admin_socket = options.admin_socket or options.data_dir / ADMIN_SOCKET
    workers = _Workers(args)
    worker_sockets = [worker_admin_socket(admin_socket, i) for i in range(workers.count)]
    source, target, reconciler, metrics = up.build_reconciler(
        args, spec, keys, count_sessions=lambda server: len(server.session_list()))  # every worker's sessions
    notifier = start_notifications(webhook_settings_from(args), reconciler, metrics.registry)
    running = await start_control(options, workers.port, worker_sockets, admin_routes=lambda app: (
        add_reconciler_routes(app, reconciler, metrics), notify_revocations(app, notifier)))
    target.server = running.server
    watch: asyncio.Task[None] | None = None
    loop_task: asyncio.Task[None] | None = None
    http = None
    serving = False
    try:
        try:
            await workers.start()  # after start_control: the keys and CA exist, so the workers only read them
        except RuntimeError as exc:
            workers.died = str(exc)
            return
        control = running.server
        assert isinstance(control, ControlServer)
        control.worker_pids = [popen.pid for popen in workers.procs]
        watch = asyncio.get_running_loop().create_task(workers.watch())
        http = await up._start_http(args, reconciler, running, metrics=metrics)
        first = await reconciler.reconcile()
        loop_task = asyncio.get_running_loop().create_task(reconciler.run(initial=False))
        pids = ", ".join(str(p.pid) for p in workers.procs)
        print(f"{running.ready_line()}, {workers.count} workers (pids {pids}, admin sockets "
              f"{worker_sockets[0].name}…)", file=sys.stderr, flush=True)
        http_host, http_port = args.http_listen
        print(f"pgwarden reconciler: {source.describe()} -> generation {running.server.live.generation}; "
              f"webhook http://{http_host}:{http_port}/hooks/git", file=sys.stderr, flush=True)
        if not first:
            print("pgwarden: the first revision was not applied; see `pgwarden status`", file=sys.stderr)
        if is_demo:
            print(up._demo_help(running, args), flush=True)
        serving = True
        await serve_until_signal(running)  # closes `running`
    finally:
        for task in (loop_task, watch):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        if http is not None:
            await http.cleanup()
        if not serving:
            await running.close()
        await asyncio.to_thread(workers.stop)
        if workers.died:
            print(f"pgwarden: {workers.died}", file=sys.stderr, flush=True)
            raise SystemExit(1)

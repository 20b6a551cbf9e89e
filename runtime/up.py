"""`pgwarden up` assembled: reconciler, proxy and HTTP listener in one process, or the proxy in N workers.

Both topologies use the same parts: the reconciler applies to a `LiveTarget` (the embedded proxy, or the
`WorkerGroup` that pushes to every worker), identity and the admin API serve the same host, and SIGTERM drains
(runtime/probes.py turns /readyz to 503, the listeners close, proxy/drain.py ends the sessions).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace

from aiohttp import web

from identity.web.limits import HttpLimits
from proxy.drain import FINAL_GRACE_S, drain
from proxy.metrics import ProxyCollector
from proxy.snapshot import Snapshot
from reconciler.api import add_reconciler_routes
from reconciler.apply import LiveTarget
from reconciler.loop import ReconcileOptions, Reconciler
from reconciler.metrics import ReconcilerMetrics
from reconciler.notifications import leader_only, notify_revocations, start_notifications
from reconciler.notify import WebhookSettings
from reconciler.sops import KeyRing
from reconciler.source import GitSource, SourceSpec
from runtime.datadir import ADMIN_SOCKET
from runtime.probes import Readiness
from runtime.process import EmbeddedTarget, ProxyOptions, RunningProxy, run, serve_until_signal, start_proxy
from runtime.replica import Replica, ReplicaSettings, is_shared_state
from runtime.web import start_http, stop_accepting
from runtime.worker_group import WorkerGroup, WorkerProcesses, start_control, worker_admin_socket
from runtime.workers import WorkerSlot, announce_ready, recheck_identity_sessions, start_worker

DRAIN_TIMEOUT_S = 30.0
WORKER_EXIT_MARGIN_S = 10.0  # beyond a worker's own drain, before the parent kills it


@dataclass(frozen=True, slots=True, kw_only=True)
class UpSettings:
    """Everything `pgwarden up` assembles from, parsed by the command (pgwarden/commands/up.py)."""

    proxy: ProxyOptions
    http_listen: tuple[str, int]
    public_url: str  # where browsers reach http_listen (runtime.web.public_url_of)
    http_limits: HttpLimits
    reconcile: ReconcileOptions
    workers: int = 1
    drain_timeout_s: float = DRAIN_TIMEOUT_S
    replica: ReplicaSettings = ReplicaSettings()  # in effect with a PostgreSQL state store (runtime/replica.py)
    notify: WebhookSettings | None = None  # --notify-url-file: status and revocation events to a webhook


OnReady = Callable[[RunningProxy], None]


def build_reconciler(settings: UpSettings, spec: SourceSpec, keys: KeyRing,
                     target: LiveTarget) -> tuple[GitSource, Reconciler]:
    """The control plane: the Git source and the loop that applies it to `target`."""
    source = GitSource(spec, cache_dir=settings.proxy.data_dir / "source-cache")
    return source, Reconciler(source, target, keys, settings.reconcile)


def announce(running: RunningProxy, source: GitSource, settings: UpSettings, *, is_applied: bool,
             suffix: str = "") -> None:
    print(running.ready_line() + suffix, file=sys.stderr, flush=True)
    http_host, http_port = settings.http_listen
    print(f"pgwarden reconciler: {source.describe()} -> generation {running.server.live.generation}; "
          f"webhook http://{http_host}:{http_port}/hooks/git", file=sys.stderr, flush=True)
    if not is_applied:
        print("pgwarden: the first revision was not applied; see `pgwarden status`", file=sys.stderr)


async def serve_up(settings: UpSettings, spec: SourceSpec, keys: KeyRing, *, on_ready: OnReady | None = None) -> None:
    """One process: reconciler, proxy and HTTP listener, until SIGTERM/SIGINT (drained) or a second one."""
    target = EmbeddedTarget()
    source, reconciler = build_reconciler(settings, spec, keys, target)
    metrics = ReconcilerMetrics(reconciler.status,
                                generation=lambda: target.server.live.generation if target.server else 0,
                                sessions=lambda: len(target.server.sessions) if target.server else 0)
    # One /metrics for both rooms: the reconciler's registry already has these two series, with the same values.
    metrics.registry.register(ProxyCollector(
        lambda: target.server, skip={"pgwarden_sessions_open", "pgwarden_live_generation"}))
    readiness = Readiness(has_applied=lambda: reconciler.status.last_applied_at is not None)
    replica = (Replica(settings.replica, str(settings.proxy.state), settings.proxy.data_dir,
                       revision=lambda: reconciler.status.last_applied_revision or "", web_url=settings.public_url)
               if is_shared_state(settings.proxy.state) else None)
    # With replicas every one sees the same status: only the writer-lease holder sends status events.
    notifier = start_notifications(settings.notify, reconciler, metrics.registry,
                                   should_send=leader_only(lambda: target.server is None or target.server.is_writer()))

    def admin_routes(app: web.Application) -> None:
        add_reconciler_routes(app, reconciler, metrics)
        notify_revocations(app, notifier)
        if replica is not None:
            replica.add_routes(app)

    running = await start_proxy(settings.proxy, Snapshot(), admin_routes=admin_routes)
    target.server = running.server
    readiness.is_listening = True
    http = await start_http(running.server, running, reconciler, readiness, listen=settings.http_listen,
                            public_url=settings.public_url, limits=settings.http_limits, metrics=metrics)
    loop_task: asyncio.Task[None] | None = None
    try:
        if replica is not None:
            await replica.start(running.server, running.host)
        first = await reconciler.reconcile()
        loop_task = readiness.reconcile_task = asyncio.get_running_loop().create_task(reconciler.run(initial=False))
        announce(running, source, settings, is_applied=first)
        if on_ready is not None:
            on_ready(running)

        async def drain_process() -> None:
            readiness.is_draining = True
            running.server.stop_accepting()
            await stop_accepting(http)
            await drain(running.server.registry, settings.drain_timeout_s)

        await serve_until_signal(running, drain=drain_process)
    finally:
        await _cancel(loop_task)
        if replica is not None:
            await replica.close()
        await http.cleanup()


async def serve_up_with_workers(settings: UpSettings, spec: SourceSpec, keys: KeyRing, *,
                                on_ready: OnReady | None = None) -> None:
    """`--workers N`: as `serve_up`, with the proxy listeners in N worker processes behind a WorkerGroup.

    Raises SystemExit(1) when a worker did not start or died (the others are stopped first).
    """
    options = settings.proxy
    admin_socket = options.admin_socket or options.data_dir / ADMIN_SOCKET
    workers = WorkerProcesses(options.listen_host, options.listen_port, settings.workers, options.data_dir)
    group = WorkerGroup([worker_admin_socket(admin_socket, i) for i in range(workers.count)])
    source, reconciler = build_reconciler(settings, spec, keys, group)
    metrics = ReconcilerMetrics(reconciler.status,
                                generation=lambda: group.local.live.generation if group.local else 0,
                                sessions=lambda: len(group.session_list()))  # every worker's sessions
    readiness = Readiness(has_applied=lambda: reconciler.status.last_applied_at is not None)
    notifier = start_notifications(settings.notify, reconciler, metrics.registry)

    def admin_routes(app: web.Application) -> None:
        add_reconciler_routes(app, reconciler, metrics)
        notify_revocations(app, notifier)

    running = await start_control(options, workers.port, group, admin_routes=admin_routes)
    watch: asyncio.Task[None] | None = None
    loop_task: asyncio.Task[None] | None = None
    http = None
    serving = False
    stop_timeout_s = settings.drain_timeout_s + FINAL_GRACE_S + WORKER_EXIT_MARGIN_S
    try:
        try:
            await workers.start()  # after start_control: the keys and CA exist, so the workers only read them
        except RuntimeError as exc:
            workers.died = str(exc)
            return
        group.worker_pids = [popen.pid for popen in workers.procs]
        readiness.is_listening = True
        watch = asyncio.get_running_loop().create_task(workers.watch())
        http = await start_http(group, running, reconciler, readiness, listen=settings.http_listen,
                                public_url=settings.public_url, limits=settings.http_limits, metrics=metrics)
        first = await reconciler.reconcile()
        loop_task = readiness.reconcile_task = asyncio.get_running_loop().create_task(reconciler.run(initial=False))
        pids = ", ".join(str(p.pid) for p in workers.procs)
        announce(running, source, settings, is_applied=first,
                 suffix=f", {workers.count} workers (pids {pids}, admin sockets {group.worker_sockets[0].name}…)")
        if on_ready is not None:
            on_ready(running)
        web = http

        async def drain_workers() -> None:
            readiness.is_draining = True
            await stop_accepting(web)
            await _cancel(watch)  # the workers are about to exit 0 on purpose
            await asyncio.to_thread(workers.stop, timeout_s=stop_timeout_s)  # each drains its own sessions

        serving = True
        await serve_until_signal(running, drain=drain_workers,
                                 on_hurry=lambda: workers.signal_all(signal.SIGTERM))  # closes `running`
    finally:
        await _cancel(loop_task)
        await _cancel(watch)
        if http is not None:
            await http.cleanup()
        if not serving:
            await running.close()
        await asyncio.to_thread(workers.stop, timeout_s=stop_timeout_s)
        if workers.died:
            print(f"pgwarden: {workers.died}", file=sys.stderr, flush=True)
            raise SystemExit(1)


def run_up_worker(options: ProxyOptions, slot: WorkerSlot, *, drain_timeout_s: float = DRAIN_TIMEOUT_S) -> None:
    """`pgwarden up … --worker-slot I/N`, started by the parent: serve clients; the parent pushes snapshots and
    forwards SIGTERM (a worker ignores Ctrl-C's SIGINT: its parent decides). Raises OSError if it cannot listen."""
    admin = worker_admin_socket(options.admin_socket or options.data_dir / ADMIN_SOCKET, slot.index)
    options = replace(options, admin_socket=admin)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    async def main() -> None:
        running = await start_worker(options, Snapshot(), slot)
        server = running.server
        rechecks: set[asyncio.Task[int]] = set()  # held until done

        def recheck() -> None:  # the parent's SIGUSR1: a Session was revoked through its admin API
            task = asyncio.get_running_loop().create_task(recheck_identity_sessions(server))
            rechecks.add(task)
            task.add_done_callback(rechecks.discard)

        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, recheck)  # before the parent may send it
        announce_ready(running.ready_line(), is_to_stderr=True)

        async def drain_worker() -> None:
            server.stop_accepting()
            await drain(server.registry, drain_timeout_s)

        await serve_until_signal(running, drain=drain_worker, stop_signals=(signal.SIGTERM,))

    run(main)


async def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is not None and not task.done():
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


"""Assemble a running proxy from options: data directory, TLS, tokens, access log, admin API."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from identity.certs import ClientCertificateAuthority
from identity.revocation_watch import STATE_OUTAGE_GRACE_S
from identity.sessions import SessionAuthority
from identity.store.opening import open_store
from identity.tokens import TokenAuthority
from proxy.admin import add_metrics_route, build_app, start_admin
from proxy.audit.accesslog import AccessLog, AccessLogWriter
from proxy.audit.normalize import QueryText
from proxy.audit.otel import OtelAccessLogSink, OtlpSettings
from proxy.preauth import PreAuthLimits
from proxy.registry import CancelRouter
from proxy.server import ProxyServer
from proxy.snapshot import Snapshot
from proxy.tls import ServerCertificate, ensure_local_certificate, server_context
from runtime.datadir import ADMIN_SOCKET, fingerprint_key, prepare, state_key

log = logging.getLogger("pgwarden")


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyOptions:
    listen_host: str
    listen_port: int
    data_dir: Path
    admin_socket: Path | None = None
    access_log: str | None = "-"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    default_service: str | None = None
    state: str | None = None  # identity state store: None/"sqlite" (DATA_DIR/state.db) or postgres://…
    otlp: OtlpSettings | None = None  # also export the access log as OpenTelemetry logs
    log_queries: QueryText = QueryText.FULL
    preauth: PreAuthLimits = PreAuthLimits()  # what a client that has not authenticated yet may cost
    state_outage_grace_s: float = STATE_OUTAGE_GRACE_S  # no state store this long: identity sessions end


@dataclass(slots=True, kw_only=True)
class RunningProxy:
    server: ProxyServer
    admin: web.AppRunner
    host: str
    port: int
    admin_socket: Path
    ca_path: Path | None
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)  # parts added by a topology

    def ready_line(self) -> str:
        ca = f", CA certificate {self.ca_path}" if self.ca_path else ""
        return (f"pgwarden proxy ready: listening on {self.host}:{self.port}, "
                f"admin socket {self.admin_socket}{ca}, generation {self.server.live.generation}")

    async def close(self) -> None:
        for close in self.closers:
            await close()
        await self.server.close()
        await self.admin.cleanup()
        self.server.access_log.writer.close()
        await asyncio.to_thread(self.server.access_log.close_sinks)  # an exporter may wait on its collector
        await self.server.identity.store.close()


async def start_proxy(
    options: ProxyOptions, snapshot: Snapshot, *, admin_routes: Callable[[web.Application], None] | None = None,
    cancel_router: CancelRouter | None = None, reuse_port: bool = False,  # runtime/workers.py: a worker
    has_grant_timer: bool = True,  # a worker's grant windows move with its parent (runtime/worker_group.py)
) -> RunningProxy:
    data_dir = prepare(options.data_dir)
    raise_open_files_limit()
    if options.tls_cert and options.tls_key:
        cert = ServerCertificate(cert_path=options.tls_cert, key_path=options.tls_key, ca_path=None)
    else:
        cert = ensure_local_certificate(data_dir)
    writer = AccessLogWriter(options.access_log)
    store = await open_store(options.state, data_dir, encryption_key=state_key(data_dir))
    client_ca = ClientCertificateAuthority.load_or_create(data_dir)  # signs `pgwarden cert` certificates
    server = ProxyServer(
        tls_context=server_context(cert, client_ca=client_ca.cert_path),
        client_ca=client_ca,
        identity=SessionAuthority(TokenAuthority.load_or_create(data_dir), store),
        access_log=AccessLog(writer, sinks=[OtelAccessLogSink(options.otlp)] if options.otlp else [],
                             query_text=options.log_queries),
        fingerprint_key=fingerprint_key(data_dir),
        snapshot=snapshot,
        default_service=options.default_service,
        preauth_limits=options.preauth,
        cancel_router=cancel_router,
        has_grant_timer=has_grant_timer,
    )
    server.state_outage_grace_s = options.state_outage_grace_s
    host, port = await server.start(options.listen_host, options.listen_port, reuse_port=reuse_port)
    socket_path = options.admin_socket or data_dir / ADMIN_SOCKET
    app = build_app(server)
    if admin_routes is not None:
        admin_routes(app)
    add_metrics_route(app, server)
    admin = await start_admin(server, socket_path, app)
    return RunningProxy(server=server, admin=admin, host=host, port=port, admin_socket=socket_path,
                        ca_path=cert.ca_path)


def raise_open_files_limit() -> int:
    """Lift the soft limit on open files to the hard one; returns the soft limit now in force.

    Every client holds one descriptor (two once relaying); the common soft default of 1024 would let a few
    hundred idle sockets starve real clients long before the pre-auth caps matter.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            return hard
        except (ValueError, OSError):
            log.warning("could not raise the open-files limit from %d to %d", soft, hard)
    return soft


async def serve_until_signal(
    running: RunningProxy, *, on_reload: Callable[[], None] | None = None,
    drain: Callable[[], Coroutine[Any, Any, object]] | None = None, on_hurry: Callable[[], None] | None = None,
    stop_signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM),
) -> None:
    """Run until one of `stop_signals`; SIGHUP calls `on_reload` (re-read the manifests).

    With `drain`, the first signal runs it (stop accepting, let sessions finish: runtime/up.py) and a second
    one cuts it short, calling `on_hurry` (a parent passes the signal on to its workers). Then `running` closes.
    """
    loop = asyncio.get_running_loop()
    stop, hurry = asyncio.Event(), asyncio.Event()

    def on_signal() -> None:
        (hurry if stop.is_set() else stop).set()

    for sig in stop_signals:
        loop.add_signal_handler(sig, on_signal)
    if on_reload is not None:
        loop.add_signal_handler(signal.SIGHUP, on_reload)
    try:
        await stop.wait()
        if drain is not None:
            draining = loop.create_task(drain())
            hurried = loop.create_task(hurry.wait())
            await asyncio.wait({draining, hurried}, return_when=asyncio.FIRST_COMPLETED)
            if not draining.done():
                log.warning("second signal: ending every session now")
                draining.cancel()
                if on_hurry is not None:
                    on_hurry()
            hurried.cancel()
            with contextlib.suppress(BaseException):
                await draining
    finally:
        for sig in (*stop_signals, signal.SIGHUP):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        await running.close()


def run(main: Callable[[], object]) -> None:
    """Run a coroutine function on uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(main())  # type: ignore[arg-type]
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())  # type: ignore[arg-type]


class EmbeddedTarget:
    """The reconciler's LiveTarget for a proxy in this process: reads and swaps `server.live`.

    Bound after construction, because the proxy's admin API is built with the reconciler's routes.
    """

    def __init__(self) -> None:
        self.server: ProxyServer | None = None

    def _bound(self) -> ProxyServer:
        if self.server is None:
            raise RuntimeError("the proxy is not running yet")
        return self.server

    def current(self) -> Snapshot:
        return self._bound().live.snapshot

    async def swap(self, snapshot: Snapshot) -> int:
        """Compile in a worker thread, swap on the loop (ProxyServer.reload)."""
        return await self._bound().reload(snapshot)

"""The HTTP listener of `pgwarden up`: login pages, token exchange, the Git webhook, probes and /metrics."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from identity.host import IdentityHost
from identity.web.app import build_auth_server, canonical_login_host
from identity.web.exchange import add_exchange_routes
from identity.web.limits import HttpLimits, limit_app, start_limited_site
from reconciler.loop import Reconciler
from reconciler.metrics import ReconcilerMetrics
from reconciler.webhook import add_webhook_routes
from runtime.probes import Readiness, add_probe_routes
from runtime.process import RunningProxy


async def start_http(host: IdentityHost, running: RunningProxy, reconciler: Reconciler, readiness: Readiness, *,
                     listen: tuple[str, int], public_url: str, limits: HttpLimits,
                     metrics: ReconcilerMetrics | None = None) -> web.AppRunner:
    """Serve the web routes on `listen`; `host` ends database connections of revoked Sessions (one process: the
    proxy server; `--workers`: the WorkerGroup)."""
    app = web.Application(client_max_size=limits.max_body_bytes)
    limit_app(app, lambda: host.identity.store, limits)  # outermost: timeouts, then rate limits
    add_exchange_routes(app, host)
    auth = build_auth_server(host, public_url=public_url, cluster_info=lambda: cluster_info(running, public_url))
    auth.add_routes(app)
    app.middlewares.append(canonical_login_host(public_url))
    add_webhook_routes(app, on_trigger=lambda: reconciler.request(with_source=True),
                       github_secret=os.environ.get("PGWARDEN_WEBHOOK_SECRET"),
                       token=os.environ.get("PGWARDEN_WEBHOOK_TOKEN"))
    add_probe_routes(app, readiness, is_ready=lambda: reconciler.status.is_ready)
    if metrics is not None:
        async def prometheus(_: web.Request) -> web.Response:
            # The reconciler's and the proxy's series, for scrapers that cannot reach the admin socket.
            return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

        app.router.add_get("/metrics", prometheus)
    listen_host, port = listen
    return await start_limited_site(app, limits, host=listen_host, port=port)


async def stop_accepting(runner: web.AppRunner) -> None:
    """Close the listening sockets; requests on connections already open are still answered (a probe's 503)."""
    for site in list(runner.sites):
        await site.stop()


def public_url_of(public_url: str | None, http_listen: tuple[str, int]) -> str:
    """`public_url`, else http://HOST:PORT of the HTTP listener (localhost for loopback: WebAuthn needs a name)."""
    if public_url:
        return public_url.rstrip("/")
    host, port = http_listen
    if host in ("127.0.0.1", "::1", "localhost"):
        host = "localhost"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def cluster_info(running: RunningProxy, public_url: str) -> dict[str, Any]:
    """What `pgwarden login` saves: where the proxy listens and the CA that signed its certificate."""
    host = running.host
    if host in ("0.0.0.0", "::", ""):  # listening everywhere: clients use the name they reach us by
        host = urlsplit(public_url).hostname or "localhost"
    ca_pem = running.ca_path.read_text() if running.ca_path else None
    return {"proxyHost": host, "proxyPort": running.port, "caCertificate": ca_pem, "publicURL": public_url}

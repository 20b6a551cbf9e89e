"""`/livez`, `/readyz` and `/healthz` of `pgwarden up`'s HTTP listener, and the readiness they report.

/livez: the event loop answers and the reconcile loop still runs (a restart would help otherwise).
/readyz: 503 until the first revision is applied and the proxy listens, and again once draining starts.
/healthz: the reconciler's Ready condition, as before; its status code now says the same (503 when not Ready).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

PROBE_PATHS = ("/livez", "/readyz", "/healthz")


@dataclass(slots=True)
class Readiness:
    """Mutable on purpose: the assembly flips each flag once, on the loop that serves the probes."""

    is_listening: bool = False  # the PostgreSQL listener (or every worker's) accepts clients
    is_draining: bool = False  # SIGTERM arrived: no new clients, open sessions are finishing
    has_applied: Callable[[], bool] = lambda: False  # the first revision went live in this process
    reconcile_task: asyncio.Task[None] | None = None  # the loop that follows the Git source

    def not_ready_because(self) -> str | None:
        """Why a balancer should not send clients here, or None."""
        if self.is_draining:
            return "draining: not accepting new connections"
        if not self.is_listening:
            return "starting: the proxy is not listening yet"
        if not self.has_applied():
            return "starting: the first revision has not been applied (see pgwarden status)"
        return None

    def not_live_because(self) -> str | None:
        """Why the process should be restarted, or None."""
        task = self.reconcile_task
        if task is not None and task.done() and not task.cancelled() and task.exception() is not None:
            return f"the reconcile loop stopped: {type(task.exception()).__name__}"
        return None


def add_probe_routes(app: web.Application, readiness: Readiness, *, is_ready: Callable[[], bool]) -> None:
    """GET /livez, /readyz and /healthz; `is_ready` is the reconciler's Ready condition (for /healthz)."""

    async def livez(_: web.Request) -> web.Response:
        reason = readiness.not_live_because()  # answering at all shows the event loop works
        return web.json_response({"live": reason is None, "reason": reason or "ok"}, status=503 if reason else 200)

    async def readyz(_: web.Request) -> web.Response:
        reason = readiness.not_ready_because()
        return web.json_response({"ready": reason is None, "reason": reason or "ok"}, status=503 if reason else 200)

    async def healthz(_: web.Request) -> web.Response:
        ready = is_ready()
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/healthz", healthz)

"""Admin API routes of the reconciler: status, reconcile, suspend/resume, metrics."""

from __future__ import annotations

import json

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from reconciler.loop import Reconciler
from reconciler.metrics import ReconcilerMetrics


def add_reconciler_routes(app: web.Application, reconciler: Reconciler, metrics: ReconcilerMetrics) -> None:
    async def status(_: web.Request) -> web.Response:
        return web.Response(text=json.dumps(reconciler.status.to_dict(), indent=2, default=str),
                            content_type="application/json")

    async def reconcile(request: web.Request) -> web.Response:
        with_source = request.query.get("withSource", "").lower() in ("1", "true", "yes")
        reconciler.request(with_source=with_source)
        return web.json_response({"status": "reconcile requested", "withSource": with_source}, status=202)

    async def suspend(_: web.Request) -> web.Response:
        reconciler.suspend()
        return web.json_response({"suspended": True})

    async def resume(_: web.Request) -> web.Response:
        reconciler.resume()
        return web.json_response({"suspended": False})

    async def prometheus(_: web.Request) -> web.Response:
        body = metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/v1/status", status)
    app.router.add_post("/v1/reconcile", reconcile)
    app.router.add_post("/v1/suspend", suspend)
    app.router.add_post("/v1/resume", resume)
    app.router.add_get("/metrics", prometheus)

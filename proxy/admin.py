"""The local admin API (HTTP+JSON on a unix socket, 0600): state, sessions, health.

Database clients cannot reach it: it never listens on the proxy's TCP port.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from aiohttp import web

from proxy.errors import SnapshotRejected
from proxy.server import ProxyServer
from proxy.snapshot import from_wire, to_wire

MAX_BODY_BYTES = 256 * 1024 * 1024


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data, indent=2, default=str), status=status,
                        content_type="application/json")


def build_app(server: ProxyServer) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES)

    async def healthz(_: web.Request) -> web.Response:
        return _json({"status": "ok", "generation": server.live.generation, "sessions": len(server.sessions)})

    async def get_state(_: web.Request) -> web.Response:
        live = server.live
        body = to_wire(live.snapshot, fingerprint_key=server.fingerprint_key)
        body["generation"] = live.generation
        body["appliedAt"] = server.applied_at
        return _json(body)

    async def put_state(request: web.Request) -> web.Response:
        try:
            snapshot = from_wire(await request.json())
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # The message names the field; it never echoes the body (which carries secrets).
            return _json({"error": f"malformed snapshot: {type(exc).__name__}: {exc}"}, status=400)
        try:
            generation = server.apply(snapshot)
        except SnapshotRejected as exc:
            return _json({"error": exc.message}, status=422)
        return _json({"generation": generation, "revision": snapshot.revision})

    async def get_sessions(_: web.Request) -> web.Response:
        return _json({"generation": server.live.generation, "sessions": server.session_list()})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/v1/state", get_state)
    app.router.add_put("/v1/state", put_state)
    app.router.add_get("/v1/sessions", get_sessions)
    return app


async def start_admin(server: ProxyServer, socket_path: Path, app: web.Application | None = None) -> web.AppRunner:
    """Serve the admin API on `socket_path`, readable and writable by this OS user only."""
    runner = web.AppRunner(app or build_app(server), access_log=None)
    await runner.setup()
    socket_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if socket_path.exists() or socket_path.is_symlink():
        socket_path.unlink()
    old_umask = os.umask(0o177)
    try:
        site = web.UnixSite(runner, str(socket_path))
        await site.start()
    finally:
        os.umask(old_umask)
    os.chmod(socket_path, 0o600)
    return runner

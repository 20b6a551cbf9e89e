"""The local admin API (HTTP+JSON on a unix socket, 0600): state, sessions, health.

Database clients cannot reach it: it never listens on the proxy's TCP port.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from identity.sessions import SessionAuthority
from identity.store.base import utc_now
from proxy import metrics
from proxy.errors import PgwardenError, SnapshotRejected, SnapshotSuperseded
from proxy.offload import run_beside_relay
from proxy.routing import LiveSnapshot
from proxy.server import ProxyServer
from proxy.snapshot import Snapshot
from proxy.snapshot_wire import from_wire, to_wire

MAX_BODY_BYTES = 256 * 1024 * 1024
MAX_TOKEN_TTL_S = 30 * 86400


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data, indent=2, default=str), status=status,
                        content_type="application/json")


def _snapshot_from_json(body: bytes) -> Snapshot:
    return from_wire(json.loads(body))


class AdminHost(Protocol):
    """What the admin API serves: a ProxyServer, or runtime/'s worker group in `pgwarden up --workers`."""

    @property
    def live(self) -> LiveSnapshot: ...

    @property
    def applied_at(self) -> float: ...

    @property
    def fingerprint_key(self) -> bytes: ...

    @property
    def identity(self) -> SessionAuthority: ...

    @property
    def sessions(self) -> dict[str, Any]: ...

    async def reload(self, snapshot: Snapshot) -> int: ...

    def session_list(self) -> list[dict[str, Any]]: ...

    def peer_connections(self) -> dict[str, int]:
        """Open database connections per identity Session on other replicas (runtime/replica.py); {} if none."""
        ...

    async def revoke_identity_sessions(self, session_ids: list[str], *, reason: str) -> int: ...


def build_app(server: AdminHost) -> web.Application:
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
        body = await request.read()
        try:
            # Decoded and compiled in worker threads: a big snapshot must not stall the relay's loop.
            snapshot = await run_beside_relay(_snapshot_from_json, body)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # The message names the field; it never echoes the body (which carries secrets).
            return _json({"error": f"malformed snapshot: {type(exc).__name__}: {exc}"}, status=400)
        try:
            generation = await server.reload(snapshot)
        except SnapshotSuperseded as exc:
            return _json({"error": exc.message}, status=409)
        except SnapshotRejected as exc:
            return _json({"error": exc.message}, status=422)
        return _json({"generation": generation, "revision": snapshot.revision})

    async def get_sessions(_: web.Request) -> web.Response:
        return _json({"generation": server.live.generation, "sessions": server.session_list()})

    async def issue_token(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            user, ttl_s = str(body["user"]), int(body.get("ttlSeconds", 3600))
        except (ValueError, KeyError, TypeError):
            return _json({"error": 'expected {"user": NAME, "ttlSeconds": N}'}, status=400)
        if ttl_s <= 0 or ttl_s > MAX_TOKEN_TTL_S:
            return _json({"error": f"ttlSeconds must be between 1 and {MAX_TOKEN_TTL_S}"}, status=400)
        try:
            server.live.user(user)  # exists and is enabled now; checked again at every connect
        except PgwardenError as exc:
            return _json({"error": exc.message}, status=404)
        session, token = await server.identity.issue_token(user, ttl_s=ttl_s)
        return _json({"token": token, "session": session.id, "expiresAt": session.expires_at.isoformat()})

    async def list_identity_sessions(request: web.Request) -> web.Response:
        user = request.query.get("user") or None
        include_inactive = request.query.get("all", "") in ("1", "true")
        sessions = await server.identity.store.list_sessions(user, include_inactive=include_inactive)
        now = utc_now()
        live = dict(server.peer_connections())  # other replicas', from their heartbeat rows
        for entry in server.session_list():
            if entry["identitySession"]:
                live[entry["identitySession"]] = live.get(entry["identitySession"], 0) + 1
        return _json({"sessions": [
            {"id": s.id, "user": s.user, "idp": s.idp, "method": str(s.method), "aal": str(s.aal),
             "state": s.state(now), "createdAt": s.created_at.isoformat(), "expiresAt": s.expires_at.isoformat(),
             "databaseConnections": live.get(s.id, 0)}
            for s in sessions
        ]})

    async def revoke_identity_session(request: web.Request) -> web.Response:
        sid = request.match_info["sid"]
        revoked = await server.identity.store.revoke_session(sid, utc_now())
        if not revoked:
            return _json({"error": f"no active session {sid}"}, status=404)
        ended = await server.revoke_identity_sessions([sid], reason=f"session {sid} was revoked")
        return _json({"revoked": [sid], "databaseConnectionsEnded": ended})

    async def revoke_user_sessions(request: web.Request) -> web.Response:
        user = request.match_info["user"]
        sids = await server.identity.store.revoke_user_sessions(user, utc_now())
        ended = await server.revoke_identity_sessions(sids, reason=f"all sessions of {user} were revoked")
        return _json({"revoked": sids, "databaseConnectionsEnded": ended})

    app.router.add_post("/v1/identity/tokens", issue_token)
    app.router.add_get("/v1/identity/sessions", list_identity_sessions)
    app.router.add_post("/v1/identity/sessions/{sid}/revoke", revoke_identity_session)
    app.router.add_post("/v1/identity/users/{user}/revoke", revoke_user_sessions)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/v1/state", get_state)
    app.router.add_put("/v1/state", put_state)
    app.router.add_get("/v1/sessions", get_sessions)
    return app


def add_metrics_route(app: web.Application, server: ProxyServer) -> None:
    """GET /metrics: the proxy's Prometheus series, unless the app serves /metrics already.

    `pgwarden up` registers the reconciler's /metrics first, with the proxy's collector merged into its registry.
    """
    if any(r.method == "GET" and r.resource is not None and r.resource.canonical == "/metrics"
           for r in app.router.routes()):
        return

    async def prometheus(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(server), headers={"Content-Type": metrics.CONTENT_TYPE})

    app.router.add_get("/metrics", prometheus)


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

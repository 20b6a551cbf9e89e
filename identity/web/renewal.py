"""Credentials derived from a live Session: a fresh access token, and a short-lived client certificate.

POST /v1/auth/refresh  {"ttlSeconds": N}?      → a new access token for the SAME Session
POST /v1/auth/cert     {"csr": PEM, "ttlSeconds": N} → a client certificate for the Session (mTLS identity)
Both take the current access token as `Authorization: Bearer TOKEN` and refuse once the Session has ended.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from aiohttp import web

from identity.certs import CertificateRequestInvalid
from identity.sessions import Identity
from identity.store.base import utc_now
from proxy.errors import PgwardenError

if TYPE_CHECKING:
    from identity.host import IdentityHost

log = logging.getLogger("pgwarden.identity")

DEFAULT_CERT_TTL_S = 12 * 3600
MIN_TOKEN_TTL_S = 1


def _refuse(status: int, message: str, hint: str | None = None) -> web.Response:
    return web.json_response({"error": message, **({"hint": hint} if hint else {})}, status=status)


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    body = await request.json()
    if not isinstance(body, dict):
        raise ValueError("body is not a JSON object")
    return body


async def _identity(host: IdentityHost, request: web.Request) -> Identity | web.Response:
    header = request.headers.get("Authorization", "")
    if not header.lower().startswith("bearer "):
        return _refuse(401, "send the access token as Authorization: Bearer TOKEN")
    try:
        identity = await host.identity.verify(header[7:].strip())
    except PgwardenError as exc:
        return _refuse(401, exc.message, "log in again: pgwarden login")
    user = host.live.snapshot.users.get(identity.user)
    if user is None or user.is_disabled:
        return _refuse(403, f'user "{identity.user}" does not exist or is disabled')
    return identity


def add_renewal_routes(app: web.Application, host: IdentityHost) -> None:
    async def refresh(request: web.Request) -> web.Response:
        identity = await _identity(host, request)
        if isinstance(identity, web.Response):
            return identity
        try:
            asked = int((await _body(request)).get("ttlSeconds", 0))
        except (ValueError, TypeError):
            return _refuse(400, 'expected no body or {"ttlSeconds": N}')
        session = identity.session
        remaining = int((session.expires_at - utc_now()).total_seconds())
        ttl_s = max(MIN_TOKEN_TTL_S, min(asked, remaining) if asked > 0 else remaining)
        token = host.identity.tokens.issue(session.user, ttl_s=ttl_s, session_id=session.id)
        expires = utc_now() + timedelta(seconds=ttl_s)
        return web.json_response({"token": token, "user": session.user, "session": session.id,
                                  "tokenExpiresAt": expires.isoformat(),
                                  "expiresAt": session.expires_at.isoformat()})

    async def cert(request: web.Request) -> web.Response:
        identity = await _identity(host, request)
        if isinstance(identity, web.Response):
            return identity
        authority = host.client_ca
        if authority is None:
            return _refuse(501, "this proxy does not issue client certificates")
        try:
            body = await _body(request)
            csr, ttl_s = str(body["csr"]), int(body.get("ttlSeconds", DEFAULT_CERT_TTL_S))
        except (ValueError, KeyError, TypeError):
            return _refuse(400, 'expected {"csr": PEM, "ttlSeconds": N}')
        if ttl_s <= 0:
            return _refuse(400, "ttlSeconds must be positive")
        try:
            issued = authority.issue(csr, identity.session, ttl_s=ttl_s)
        except CertificateRequestInvalid as exc:
            return _refuse(400, exc.message, exc.hint)
        log.info("client certificate %x issued to %s for session %s until %s", issued.serial, identity.user,
                 identity.session.id, issued.not_after.isoformat())
        return web.json_response({"certificate": issued.cert_pem, "user": identity.user,
                                  "session": identity.session.id, "notAfter": issued.not_after.isoformat()})

    app.router.add_post("/v1/auth/refresh", refresh)
    app.router.add_post("/v1/auth/cert", cert)

"""Workload login: exchange a platform-signed OIDC identity token (GitHub Actions, Kubernetes) for a
pgwarden Session and an access token, with no long-lived secret on the workload's side.

POST /v1/auth/assertion {"provider": NAME, "assertion": JWT, "ttlSeconds": N}
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
from aiohttp import web

from identity.errors import IdentityError
from identity.host import IdentityHost
from identity.providers.oidc.workload import verify_workload_assertion
from identity.sessions import Identity
from identity.store.base import AuthMethod, utc_now
from identity.web.client_credentials import add_client_credentials_routes
from identity.web.renewal import add_renewal_routes
from identity.workload_mapping import map_workload_user
from proxy.errors import PgwardenError
from proxy.snapshot import UserType

log = logging.getLogger("pgwarden.identity")

MAX_TTL_S = 12 * 3600
MAX_BODY_BYTES = 64 * 1024


def _refuse(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _jwks_url(spec: dict[str, Any], http: aiohttp.ClientSession) -> str:
    """jwksURL as configured, else the issuer's discovery document's jwks_uri."""
    if spec.get("jwksURL"):
        return str(spec["jwksURL"])
    issuer_url = str(spec["issuerURL"]).rstrip("/")
    async with http.get(f"{issuer_url}/.well-known/openid-configuration") as response:
        if response.status != 200:
            raise IdentityError(f"identity provider discovery at {issuer_url} answered {response.status}")
        document = await response.json(content_type=None)
    return str(document["jwks_uri"])


def add_exchange_routes(app: web.Application, host: IdentityHost) -> None:
    async def exchange(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            provider_name, assertion = str(body["provider"]), str(body["assertion"])
            ttl_s = min(int(body.get("ttlSeconds", 3600)), MAX_TTL_S)
        except (ValueError, KeyError, TypeError):
            return _refuse(400, 'expected {"provider": NAME, "assertion": JWT, "ttlSeconds": N}')
        live = host.live.snapshot
        provider = live.identity_providers.get(provider_name)
        if provider is None or provider.type != "oidcIdentityToken" or provider.is_disabled:
            return _refuse(404, f"no enabled oidcIdentityToken identity provider named {provider_name!r}")
        spec = dict(provider.manifest.get("spec", {}).get("oidcIdentityToken", {}))
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
                claims = await verify_workload_assertion(
                    assertion, jwks_or_url=await _jwks_url(spec, http), issuer=str(spec.get("issuer") or
                                                                                 spec.get("issuerURL")),
                    audience=str(spec["audience"]), provider=provider_name, session=http)
        except (IdentityError, aiohttp.ClientError, KeyError, TimeoutError) as exc:
            reason = exc.message if isinstance(exc, PgwardenError) else type(exc).__name__
            log.warning("workload assertion for %s refused: %s", provider_name, reason)
            return _refuse(401, f"assertion refused: {reason}")
        try:  # identities[] first, then the provider's CEL `users` rules (identity/workload_mapping.py)
            user_name = map_workload_user(provider, claims, live.users)
        except IdentityError as exc:
            log.warning("workload assertion for %s refused: %s", provider_name, exc.message)
            return _refuse(403, exc.message)
        user = live.users.get(user_name) if user_name else None
        if user is None or user.is_disabled or user.type != UserType.WORKLOAD:
            identifier = claims.get(spec.get("identifierClaim", "sub"))
            log.warning("workload identity %r of %s maps to no enabled WORKLOAD user (%s)", identifier, provider_name,
                        user_name or "no match")
            found = f" (it maps to User {user_name}, which is disabled or not a WORKLOAD)" if user_name else ""
            return _refuse(403, f"identity {identifier!r} of {provider_name} maps to no enabled WORKLOAD User{found}: "
                                "add it to a User's spec.authentication.identities, or write a condition that "
                                "matches it in the provider's spec.oidcIdentityToken.users")
        session, token = await host.identity.issue_token(user.name, ttl_s=ttl_s, method=AuthMethod.ASSERTION,
                                                           idp=provider_name)
        return web.json_response({"token": token, "user": user.name, "session": session.id,
                                  "expiresAt": session.expires_at.isoformat()})

    async def bearer_identity(request: web.Request) -> Identity | web.Response:
        header = request.headers.get("Authorization", "")
        if not header.lower().startswith("bearer "):
            return _refuse(401, "send the access token as Authorization: Bearer TOKEN")
        try:
            return await host.identity.verify(header[7:].strip())
        except PgwardenError as exc:
            return _refuse(401, exc.message)

    async def whoami(request: web.Request) -> web.Response:
        identity = await bearer_identity(request)
        if isinstance(identity, web.Response):
            return identity
        s = identity.session
        user = host.live.snapshot.users.get(s.user)
        return web.json_response({
            "user": s.user, "type": user.type.value if user else "", "groups": list(user.groups) if user else [],
            "session": s.id, "method": str(s.method), "aal": str(s.aal), "identityProvider": s.idp,
            "expiresAt": s.expires_at.isoformat(),
        })

    async def logout(request: web.Request) -> web.Response:
        identity = await bearer_identity(request)
        if isinstance(identity, web.Response):
            return identity
        sid = identity.session.id
        await host.identity.store.revoke_session(sid, utc_now())
        ended = await host.revoke_identity_sessions([sid], reason=f"{identity.user} logged out")
        return web.json_response({"revoked": sid, "databaseConnectionsEnded": ended})

    app.router.add_post("/v1/auth/assertion", exchange)
    app.router.add_get("/v1/auth/whoami", whoami)
    app.router.add_post("/v1/auth/logout", logout)
    add_client_credentials_routes(app, host)  # POST /v1/auth/token (OAuth2 client credentials)
    add_renewal_routes(app, host)  # POST /v1/auth/refresh and /v1/auth/cert

"""Sign-in through an OpenID Provider (IdentityProvider type `oidc`): authorization code + PKCE + nonce.

GET /login/idp/NAME?flow=ID (flow.py) → `OidcLogin.start` → the provider → GET /login/oidc/callback, where the
code is exchanged, the ID token checked against the provider's JWKS, userinfo merged, and the identity mapped
to a User. The callback finds its flow through the flow cookie and must then match that flow's `state`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from identity.providers.oidc import (
    AuthorizationRequest,
    IdentityError,
    ProviderMetadata,
    TokenRejected,
    discover,
    exchange_code,
    fetch_jwks,
    merged_claims,
    userinfo,
    verify_id_token,
)
from identity.store.base import AssuranceLevel, AuthMethod
from identity.web.flow import FLOW_COOKIE, AuthServer
from identity.web.login_flow import LoginFlow, LoginRefused, LoginResult, flow_data
from identity.web.pages import redirect
from proxy.policy.cel import CelCompileError, ConditionError, compile_expression, to_cel
from proxy.snapshot import IdentityProvider

log = logging.getLogger("pgwarden.identity")

CALLBACK_PATH = "/login/oidc/callback"
DEFAULT_SCOPES = ("openid", "email", "profile")


@flow_data
@dataclass(frozen=True, slots=True, kw_only=True)
class _PendingOidc:
    """What the callback must match, kept in flow.data (memory only; the secrets stay out of repr)."""

    provider: str
    request: AuthorizationRequest = field(repr=False)


class OidcLogin:
    """The `oidc` ProviderHandler."""

    type_name = "oidc"

    def add_routes(self, app: web.Application, auth: AuthServer) -> None:
        async def callback(request: web.Request) -> web.StreamResponse:
            return await self.callback(request, auth)

        app.router.add_get(CALLBACK_PATH, callback)

    async def start(self, request: web.Request, auth: AuthServer, provider: IdentityProvider,
                    flow: LoginFlow) -> web.StreamResponse:
        spec = auth.provider_spec(provider)
        try:
            meta = await discover(str(spec.get("issuerURL", "")), name=provider.name)
        except IdentityError as exc:
            log.warning("OIDC login through %s cannot start: %s", provider.name, exc.message)
            raise
        scopes = spec.get("scopes") or DEFAULT_SCOPES
        authorization = AuthorizationRequest.new(meta, str(spec.get("clientID", "")), auth.public_url + CALLBACK_PATH,
                                                 [str(s) for s in scopes])
        flow.data["oidc"] = _PendingOidc(provider=provider.name, request=authorization)
        return redirect(authorization.url)

    async def callback(self, request: web.Request, auth: AuthServer) -> web.StreamResponse:
        provider_name = "?"
        try:
            flow = await auth.flow(request, request.cookies.get(FLOW_COOKIE, "") or "-")
            pending = flow.data.pop("oidc", None)  # one callback per authorization request, replay or not
            if not isinstance(pending, _PendingOidc):
                raise LoginRefused("this sign-in did not go to an OpenID Connect provider",
                                   hint="start again from the login page")
            provider_name = pending.provider
            provider = auth.provider(pending.provider, self.type_name)
            result = await self._verify(request, auth, provider, pending.request)
            return await auth.finish_login(request, flow, result)
        except IdentityError as exc:
            # Messages from oidc.py and flow.py name the provider and the failed check, never a code or token.
            log.warning("OIDC login through %s refused: %s", provider_name, exc.message)
            return auth.refuse(exc)

    async def _verify(self, request: web.Request, auth: AuthServer, provider: IdentityProvider,
                      authorization: AuthorizationRequest) -> LoginResult:
        spec = auth.provider_spec(provider)
        # state and (RFC 9207) iss first: an error=access_denied from someone else's request is not ours to show.
        code = authorization.code_from_callback(str(request.rel_url))
        meta = await discover(authorization.issuer, name=provider.name)
        client_id = str(spec.get("clientID", ""))
        secret = (auth.secret_value(spec["clientSecret"], what=f"the client secret of {provider.name}")
                  if spec.get("clientSecret") else None)
        tokens = await exchange_code(meta, client_id, secret, code, authorization.redirect_uri,
                                     authorization.code_verifier)
        if not tokens.id_token:
            raise TokenRejected(f"identity provider {provider.name!r}: the token response carries no ID token",
                                hint="the client must be allowed the `openid` scope")
        claims = await _verified_id_token(meta, tokens.id_token, client_id, authorization.nonce)
        use_userinfo = spec.get("useUserInfo")
        # Default true, but only where the provider has the endpoint; an explicit true insists on it.
        if use_userinfo is True or (use_userinfo is None and meta.userinfo_endpoint):
            claims = merged_claims(claims, await userinfo(meta, tokens.access_token), provider=provider.name)
        user = auth.map_user(provider, claims, str(spec.get("identifierClaim") or "sub"))
        return LoginResult(user=user.name, idp=provider.name, method=AuthMethod.OIDC,
                           aal=assurance_level(provider, claims), claims=claims)


async def _verified_id_token(meta: ProviderMetadata, id_token: str, client_id: str, nonce: str) -> dict[str, Any]:
    keys = await fetch_jwks(meta.jwks_uri, provider=meta.name)
    try:
        return verify_id_token(meta, keys, id_token, client_id=client_id, nonce=nonce)
    except TokenRejected:
        # Providers rotate keys: refetch once (rate-limited in fetch_jwks) and let the second verdict stand.
        fresh = await fetch_jwks(meta.jwks_uri, provider=meta.name, is_refresh=True)
        if fresh is keys:
            raise
        return verify_id_token(meta, fresh, id_token, client_id=client_id, nonce=nonce)


def assurance_level(provider: IdentityProvider, claims: dict[str, Any]) -> AssuranceLevel:
    """spec.aalRules: the first rule whose `match` (CEL over `ctx.claims`) holds decides; default AAL1.

    Only `match` and `matchAny` conditions are read here; a rule that fails to compile or evaluate is skipped and
    logged, so a bad rule can only lower the level, never raise it.
    """
    rules = provider.manifest.get("spec", {}).get("aalRules") or []
    activation = {"ctx": to_cel({"claims": claims})}
    for index, rule in enumerate(rules if isinstance(rules, list) else []):
        condition = rule.get("condition", {}) if isinstance(rule, dict) else {}
        try:
            if condition.get("matchAny") is True:
                matched = True
            elif isinstance(condition.get("match"), str):
                matched = compile_expression(condition["match"]).evaluate(activation)
            else:
                continue
        except (CelCompileError, ConditionError) as exc:
            log.warning("IdentityProvider %s, spec.aalRules[%d]: skipped (%s)", provider.name, index, exc)
            continue
        if matched:
            level = str(rule.get("aal", "AAL1"))
            # AAL3 needs hardware-bound keys pgwarden cannot attest; treat it as AAL2, the highest we model.
            return AssuranceLevel.AAL2 if level in ("AAL2", "AAL3") else AssuranceLevel.AAL1
    return AssuranceLevel.AAL1

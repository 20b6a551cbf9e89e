"""GitHub OAuth login (IdentityProvider type "github"): github.com or GitHub Enterprise Server.

GitHub is OAuth 2.0 without OpenID Connect: no ID token, so the identity is whatever GET /user says for the
access token, and an email counts only as the primary, verified address from GET /user/emails.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import aiohttp
from aiohttp import web

from identity.providers.oidc import (
    AuthorizationDenied,
    CallbackRejected,
    IdentityError,
    ProviderMisconfigured,
    ProviderUnavailable,
    TokenRejected,
    TokenRequestRefused,
    read_bounded,
)
from identity.store.base import AssuranceLevel, AuthMethod
from identity.web.flow import AuthServer
from identity.web.login_flow import LoginFlow, LoginResult
from proxy.snapshot import IdentityProvider

log = logging.getLogger("pgwarden.identity")

GITHUB_BASE_URL = "https://github.com"
GITHUB_API_URL = "https://api.github.com"
SCOPES = "read:user user:email"  # the profile and the email list; nothing that touches repositories
CALLBACK_PATH = "/login/github/callback"
MAX_RESPONSE_BYTES = 1 << 20
_TIMEOUT = aiohttp.ClientTimeout(total=10)
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_API_HEADERS = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}


class GitHubLogin:
    """The ProviderHandler for `github` IdentityProviders."""

    type_name = "github"

    def add_routes(self, app: web.Application, auth: AuthServer) -> None:
        async def callback(request: web.Request) -> web.StreamResponse:
            return await self._callback(request, auth)

        app.router.add_get(CALLBACK_PATH, callback)

    async def start(self, request: web.Request, auth: AuthServer, provider: IdentityProvider,
                    flow: LoginFlow) -> web.StreamResponse:
        spec = auth.provider_spec(provider)
        base, _ = endpoints(provider.name, spec)
        nonce = secrets.token_urlsafe(24)
        flow.data["github"] = {"idp": provider.name, "nonce": nonce}
        query = {
            "client_id": str(spec.get("clientID", "")),
            "redirect_uri": auth.public_url + CALLBACK_PATH,
            # The flow id rides in `state` so the callback finds the flow; the cookie check in auth.flow() and the
            # nonce make it useless to anyone but this browser (RFC 6749 §10.12).
            "state": f"{flow.id}.{nonce}",
            "scope": SCOPES,
            "allow_signup": "false",
        }
        # A plain 302 Response: returning (not raising) web.HTTPFound is deprecated in aiohttp 3.
        return web.Response(status=302, headers={"Location": f"{base}/login/oauth/authorize?{urlencode(query)}"})

    async def _callback(self, request: web.Request, auth: AuthServer) -> web.StreamResponse:
        q = request.query
        flow_id, _, nonce = q.get("state", "").partition(".")
        try:
            flow = await auth.flow(request, flow_id)
            scratch = flow.data.pop("github", None)  # one use: a replayed callback finds nothing
            if not isinstance(scratch, dict) or not hmac.compare_digest(nonce.encode(), scratch["nonce"].encode()):
                raise CallbackRejected("the GitHub callback does not belong to this sign-in (state mismatch)",
                                       hint="start again from the login page")
            provider = auth.provider(scratch["idp"], self.type_name)
            if q.get("error"):
                raise _denied(provider.name, q)
            code = q.get("code", "")
            if not code:
                raise CallbackRejected(f"identity provider {provider.name!r}: the callback carries no code")
            claims = await self._verified_claims(auth, provider, code)
            user = auth.map_user(provider, claims, "sub")
        except IdentityError as exc:
            log.warning("github login refused: %s", exc.message)
            return auth.refuse(exc)
        return await auth.finish_login(request, flow, LoginResult(
            user=user.name, idp=provider.name, method=AuthMethod.GITHUB, aal=AssuranceLevel.AAL1, claims=claims))

    async def _verified_claims(self, auth: AuthServer, provider: IdentityProvider, code: str) -> dict[str, Any]:
        spec = auth.provider_spec(provider)
        base, api = endpoints(provider.name, spec)
        secret = auth.secret_value(spec.get("clientSecret"), what=f"the client secret of {provider.name!r}")
        async with aiohttp.ClientSession(timeout=_TIMEOUT) as http:
            token = await exchange_code(http, provider.name, f"{base}/login/oauth/access_token", {
                "client_id": str(spec.get("clientID", "")), "client_secret": secret, "code": code,
                "redirect_uri": auth.public_url + CALLBACK_PATH,
            })
            headers = {**_API_HEADERS, "Authorization": f"Bearer {token}"}
            profile = await _get(http, provider.name, f"{api}/user", headers)
            emails = await _get(http, provider.name, f"{api}/user/emails", headers, is_optional=True)
        return github_claims(provider.name, profile, emails)


def endpoints(provider: str, spec: Mapping[str, Any]) -> tuple[str, str]:
    """(web base URL, REST API root): github.com, or the Enterprise Server the spec names."""
    enterprise = spec.get("enterprise")
    if not isinstance(enterprise, Mapping):
        return GITHUB_BASE_URL, GITHUB_API_URL
    base = _checked_url(enterprise.get("baseURL"), provider, "enterprise.baseURL").rstrip("/")
    api = enterprise.get("apiBaseURL") or f"{base}/api/v3"
    return base, _checked_url(api, provider, "enterprise.apiBaseURL").rstrip("/")


async def exchange_code(http: aiohttp.ClientSession, provider: str, url: str, form: dict[str, str]) -> str:
    """The access token for `code`. GitHub answers form-encoded unless asked for JSON, and reports a bad code
    with HTTP 200 and an `error` field, so both shapes and both kinds of failure are read here."""
    try:
        async with http.post(url, data=form, headers={"Accept": "application/json"},
                             allow_redirects=False) as response:
            raw = await read_bounded(response, MAX_RESPONSE_BYTES)
            status, content_type = response.status, response.content_type
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise ProviderUnavailable(f"identity provider {provider!r}: the token endpoint could not be reached "
                                  f"({type(exc).__name__})",
                                  hint="check that GitHub is reachable from the proxy") from exc
    if len(raw) > MAX_RESPONSE_BYTES or status >= 500 or 300 <= status < 400:
        raise ProviderUnavailable(f"identity provider {provider!r}: the token endpoint answered HTTP {status}")
    body = _parse_token_body(raw, content_type)
    if body is None:
        raise ProviderUnavailable(f"identity provider {provider!r}: the token endpoint's answer is neither JSON "
                                  "nor a form")
    if body.get("error") or status != 200:
        error = _printable(body.get("error"), 64) or f"HTTP {status}"
        if error == "incorrect_client_credentials":
            raise ProviderMisconfigured(f"identity provider {provider!r}: GitHub refused the client ID or secret",
                                        hint="the administrator must check the OAuth app's clientID and Secret")
        description = _printable(body.get("error_description"), 200)
        raise TokenRequestRefused(f"identity provider {provider!r}: GitHub did not accept the sign-in code "
                                  f"({error}{': ' + description if description else ''})",
                                  hint="start again from the login page")
    token, token_type = body.get("access_token"), str(body.get("token_type") or "bearer")
    if not isinstance(token, str) or not token or token_type.lower() != "bearer":
        raise ProviderUnavailable(f"identity provider {provider!r}: the token response carries no bearer token")
    return token


def github_claims(provider: str, profile: Any, emails: Any) -> dict[str, Any]:
    """sub (the numeric id as text: logins can be renamed and reused), login, name, and the email only when
    /user/emails says it is the primary address and verified. /user's own `email` is whatever the user chose to
    show publicly and is never used."""
    if not isinstance(profile, Mapping) or not isinstance(profile.get("id"), int) or isinstance(profile["id"], bool):
        raise TokenRejected(f"identity provider {provider!r}: GET /user did not return a user with a numeric id")
    claims: dict[str, Any] = {"sub": str(profile["id"])}
    for key in ("login", "name"):
        if isinstance(profile.get(key), str):
            claims[key] = profile[key]
    for entry in emails if isinstance(emails, list) else ():
        if isinstance(entry, Mapping) and entry.get("primary") is True and isinstance(entry.get("email"), str):
            if entry.get("verified") is True:
                claims.update(email=entry["email"], email_verified=True)
            break
    return claims


async def _get(http: aiohttp.ClientSession, provider: str, url: str, headers: Mapping[str, str], *,
               is_optional: bool = False) -> Any:
    what = "GET " + urlsplit(url).path
    try:
        async with http.get(url, headers=headers, allow_redirects=False) as response:
            if is_optional and response.status in (403, 404):
                return None  # e.g. a GitHub App token without the email permission: no email, still a login
            if response.status == 401:
                raise TokenRejected(f"identity provider {provider!r}: {what} refused the access token (401)")
            if response.status != 200:
                raise ProviderUnavailable(f"identity provider {provider!r}: {what} answered HTTP {response.status}")
            raw = await read_bounded(response, MAX_RESPONSE_BYTES)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise ProviderUnavailable(f"identity provider {provider!r}: {what} failed ({type(exc).__name__})",
                                  hint="check that the GitHub API is reachable from the proxy") from exc
    try:
        if len(raw) > MAX_RESPONSE_BYTES:
            raise ValueError("too large")
        return json.loads(raw)
    except ValueError as exc:
        raise ProviderUnavailable(f"identity provider {provider!r}: {what} did not answer JSON") from exc


def _parse_token_body(raw: bytes, content_type: str) -> dict[str, Any] | None:
    text = raw.decode("utf-8", errors="replace").strip()
    if content_type == "application/json" or text.startswith("{"):
        try:
            body = json.loads(text)
        except ValueError:
            return None
        return body if isinstance(body, dict) else None
    pairs = parse_qsl(text, keep_blank_values=True)
    return dict(pairs) if pairs else None


def _denied(provider: str, q: Mapping[str, str]) -> IdentityError:
    error = _printable(q.get("error"), 64)
    if error == "access_denied":
        return AuthorizationDenied(f"identity provider {provider!r}: you did not authorize pgwarden on GitHub",
                                   hint="start again and choose Authorize, or use another sign-in method")
    description = _printable(q.get("error_description"), 200)
    return AuthorizationDenied(f"identity provider {provider!r}: GitHub refused the sign-in "
                               f"({error}{': ' + description if description else ''})",
                               hint="start again from the login page; if it persists, tell your administrator")


def _printable(value: object, limit: int) -> str:
    """A provider-sent string cut to `limit` printable characters (it reaches a page and the log)."""
    return "".join(ch for ch in value[:limit] if ch.isprintable()) if isinstance(value, str) else ""


def _checked_url(url: object, provider: str, what: str) -> str:
    """https, or http to a loopback host (tests, a local fake); anything else could leak codes and tokens."""
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or not parts.hostname:
        raise ProviderMisconfigured(f"identity provider {provider!r}: {what} is missing or not an absolute URL")
    if parts.scheme != "https" and not (parts.scheme == "http" and parts.hostname in _LOOPBACK_HOSTS):
        raise ProviderMisconfigured(f"identity provider {provider!r}: {what} must use https")
    return str(url)

"""OAuth/OIDC flows: authorization code + PKCE, the device authorization grant (RFC 8628), userinfo.

Errors name the provider and the check that failed, never a token or secret.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Self
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import aiohttp

from identity.errors import (
    AuthorizationDenied,
    CallbackRejected,
    DeviceCodeExpired,
    ProviderMisconfigured,
    ProviderUnavailable,
    TokenRequestRefused,
    fail,
)
from identity.pkce import s256_challenge
from identity.providers.oidc.discovery import ProviderMetadata
from identity.providers.oidc.http import TIMEOUT, check_url, get_json, http_client, oauth_error, read_json
from identity.providers.oidc.verification import check_subject, is_number
from identity.web.login_flow import flow_data
from proxy.snapshot import SecretValue

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenResponse:
    """A successful token endpoint answer. Tokens are left out of repr so logs never carry them."""

    access_token: str = field(repr=False)
    token_type: str = "Bearer"
    id_token: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    expires_in_s: int | None = None
    scope: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceAuthorization:
    """RFC 8628 §3.2: show `user_code` and `verification_uri` to the user, then poll with `device_code`."""

    device_code: str = field(repr=False)
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    interval_s: float
    expires_in_s: float


# --- authorization code + PKCE ----------------------------------------------------------------------------------


@flow_data
@dataclass(frozen=True, slots=True, kw_only=True)
class AuthorizationRequest:
    """One browser login: the URL to send the user to, and what the callback must match. Unpacks as
    `url, state, nonce, code_verifier`; the three secrets are left out of repr."""

    url: str
    state: str = field(repr=False)
    nonce: str = field(repr=False)
    code_verifier: str = field(repr=False)
    redirect_uri: str
    provider: str
    issuer: str
    has_iss_parameter: bool

    @classmethod
    def new(cls, meta: ProviderMetadata, client_id: str, redirect_uri: str, scopes: Iterable[str]) -> Self:
        """A fresh state, nonce and S256 PKCE verifier (RFC 7636 §4.1: 43-128 unreserved characters)."""
        state, nonce, verifier = secrets.token_urlsafe(32), secrets.token_urlsafe(32), secrets.token_urlsafe(48)
        params = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "scope": " ".join(_with_openid(scopes)),
            "state": state,
            "nonce": nonce,
            "code_challenge": s256_challenge(verifier),
            "code_challenge_method": "S256",
        }
        # RFC 6749 §3.1: the endpoint may carry its own query, which we must keep.
        sep = "&" if urlsplit(meta.authorization_endpoint).query else "?"
        url = meta.authorization_endpoint + sep + urlencode(params, quote_via=quote)
        return cls(url=url, state=state, nonce=nonce, code_verifier=verifier, redirect_uri=redirect_uri,
                   provider=meta.name, issuer=meta.issuer, has_iss_parameter=meta.has_iss_parameter)

    def __iter__(self) -> Iterator[str]:
        return iter((self.url, self.state, self.nonce, self.code_verifier))

    def code_from_callback(self, callback_url: str) -> str:
        """The authorization code from the redirect back, after checking state and (RFC 9207) iss."""
        params = dict(parse_qsl(urlsplit(callback_url).query, keep_blank_values=True))
        if not hmac.compare_digest(params.get("state", "").encode(), self.state.encode()):
            raise fail(CallbackRejected, self.provider, "callback `state` does not match this login",
                       hint="start the login again from the same browser")
        if "iss" in params or self.has_iss_parameter:
            if params.get("iss") != self.issuer:
                raise fail(CallbackRejected, self.provider, "callback `iss` is not this provider's issuer")
        if "error" in params:
            raise fail(AuthorizationDenied, self.provider, f"authorization refused: {oauth_error(params)}")
        if not params.get("code"):
            raise fail(CallbackRejected, self.provider, "callback carries no authorization code")
        return params["code"]


async def exchange_code(
    meta: ProviderMetadata, client_id: str, client_secret: str | SecretValue | None, code: str, redirect_uri: str,
    code_verifier: str, *, session: aiohttp.ClientSession | None = None,
) -> TokenResponse:
    """Redeem an authorization code at the token endpoint (RFC 6749 §4.1.3 with the PKCE verifier)."""
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
            "code_verifier": code_verifier}
    status, body = await _post_form(meta, meta.token_endpoint, client_id, client_secret, form, session, "token")
    if status != 200 or "error" in body:
        raise fail(TokenRequestRefused, meta.name, f"token endpoint refused the code: {oauth_error(body)}")
    return _token_response(meta.name, body)


async def userinfo(
    meta: ProviderMetadata, access_token: str, *, session: aiohttp.ClientSession | None = None
) -> dict[str, Any]:
    """GET the userinfo endpoint with the access token (OIDC Core 5.3); JSON responses only."""
    if meta.userinfo_endpoint is None:
        raise fail(ProviderMisconfigured, meta.name, "publishes no userinfo_endpoint", hint="set useUserInfo: false")
    headers = {"Authorization": f"Bearer {access_token}", "Accept": "application/json"}
    async with http_client(session) as http:
        body = await get_json(http, meta.userinfo_endpoint, meta.name, "userinfo", headers=headers)
    check_subject(body, meta.name, "userinfo")
    return body


# --- device authorization grant (RFC 8628) ----------------------------------------------------------------------


async def start_device_authorization(
    meta: ProviderMetadata, client_id: str, client_secret: str | SecretValue | None, scopes: Iterable[str], *,
    session: aiohttp.ClientSession | None = None,
) -> DeviceAuthorization:
    """RFC 8628 §3.1-3.2: ask for a device code and the user code to show."""
    if meta.device_authorization_endpoint is None:
        raise fail(ProviderMisconfigured, meta.name, "publishes no device_authorization_endpoint",
                   hint="log in with the browser flow instead")
    form = {"scope": " ".join(_with_openid(scopes))}
    status, body = await _post_form(meta, meta.device_authorization_endpoint, client_id, client_secret, form,
                                    session, "device authorization")
    if status != 200 or "error" in body:
        raise fail(TokenRequestRefused, meta.name, f"device authorization refused: {oauth_error(body)}")
    try:
        verification_uri = str(body.get("verification_uri") or body["verification_url"])  # Google's older name
        complete = body.get("verification_uri_complete")
        return DeviceAuthorization(
            device_code=str(body["device_code"]), user_code=str(body["user_code"]),
            verification_uri=check_url(verification_uri, meta.name, "verification_uri"),
            verification_uri_complete=check_url(str(complete), meta.name, "verification_uri_complete")
            if complete else None,
            interval_s=float(body.get("interval", 5)),  # §3.2: 5 s when absent
            expires_in_s=float(body["expires_in"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise fail(ProviderUnavailable, meta.name, "device authorization response lacks a required field") from exc


async def poll_device_token(
    meta: ProviderMetadata, client_id: str, client_secret: str | SecretValue | None, device: DeviceAuthorization, *,
    session: aiohttp.ClientSession | None = None, sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> TokenResponse:
    """Poll the token endpoint (RFC 8628 §3.4-3.5) until the user approves, denies, or the code expires."""
    deadline = time.monotonic() + device.expires_in_s
    interval_s = device.interval_s
    form = {"grant_type": DEVICE_CODE_GRANT, "device_code": device.device_code}
    while True:
        status, body = await _post_form(meta, meta.token_endpoint, client_id, client_secret, form, session, "token")
        error = body.get("error")
        if status == 200 and error is None:
            return _token_response(meta.name, body)
        if error == "authorization_pending":
            pass
        elif error == "slow_down":
            interval_s += 5  # §3.5: "MUST increase the polling interval by 5 seconds for all subsequent requests"
        elif error == "expired_token":
            raise fail(DeviceCodeExpired, meta.name, "the device code expired before the login was approved",
                       hint="start the device login again")
        elif error == "access_denied":
            raise fail(AuthorizationDenied, meta.name, "the user denied the device login")
        else:
            raise fail(TokenRequestRefused, meta.name, f"token endpoint refused the device code: {oauth_error(body)}")
        if time.monotonic() + interval_s > deadline:
            raise fail(DeviceCodeExpired, meta.name, "the device code expired before the login was approved",
                       hint="start the device login again")
        await sleep(interval_s)


# --- HTTP ---------------------------------------------------------------------------------------------------------


async def _post_form(
    meta: ProviderMetadata, url: str, client_id: str, client_secret: str | SecretValue | None, form: dict[str, str],
    session: aiohttp.ClientSession | None, what: str,
) -> tuple[int, dict[str, Any]]:
    """POST with client authentication (RFC 6749 §2.3.1); returns status and JSON body, errors included."""
    headers = {"Accept": "application/json"}
    secret = client_secret.reveal() if isinstance(client_secret, SecretValue) else client_secret
    if secret is None:
        form = {**form, "client_id": client_id}  # a public client: PKCE is its only proof
    elif "client_secret_basic" in meta.token_auth_methods or "client_secret_post" not in meta.token_auth_methods:
        # §2.3.1: form-urlencode id and secret before base64, or a ':' or '%' in either breaks the login.
        pair = f"{quote(client_id, safe='')}:{quote(secret, safe='')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
    else:
        form = {**form, "client_id": client_id, "client_secret": secret}
    try:
        async with http_client(session) as http, http.post(url, data=form, headers=headers, allow_redirects=False,
                                                       timeout=TIMEOUT) as response:
            if response.status >= 500 or response.status in (301, 302, 303, 307, 308):
                raise fail(ProviderUnavailable, meta.name, f"{what} endpoint answered HTTP {response.status}")
            return response.status, await read_json(response, meta.name, f"{what} endpoint")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise fail(ProviderUnavailable, meta.name, f"{what} endpoint could not be reached ({type(exc).__name__})",
                   hint="check that the provider is reachable from the proxy") from exc


def _token_response(provider: str, body: Mapping[str, Any]) -> TokenResponse:
    access_token, token_type = body.get("access_token"), body.get("token_type", "")
    if not isinstance(access_token, str) or not access_token:
        raise fail(ProviderUnavailable, provider, "token response carries no access_token")
    # RFC 6750 bearer only: a DPoP- or MTLS-bound token would not work the way we use it.
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise fail(ProviderMisconfigured, provider, "token response is not a Bearer token")
    id_token, refresh, expires = body.get("id_token"), body.get("refresh_token"), body.get("expires_in")
    return TokenResponse(
        access_token=access_token,
        token_type=token_type,
        id_token=id_token if isinstance(id_token, str) else None,
        refresh_token=refresh if isinstance(refresh, str) else None,
        expires_in_s=int(expires) if is_number(expires) else None,
        scope=body["scope"] if isinstance(body.get("scope"), str) else None,
    )


def _with_openid(scopes: Iterable[str]) -> list[str]:
    return ["openid", *dict.fromkeys(s for s in scopes if s != "openid")]

"""OpenID Connect relying party: discovery, authorization code + PKCE, device flow, ID-token and workload-JWT checks.

Async over aiohttp, JOSE via joserfc. Errors name the provider and the check that failed, never a token or secret.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Self, TypeGuard
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import aiohttp
from joserfc import jws, jwt
from joserfc.errors import BadSignatureError, InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet

from proxy.errors import PgwardenError
from proxy.snapshot import SecretValue

# Only public-key signatures: with HS256 anyone who holds the client secret could mint ID tokens, and "none"
# is no signature at all (OIDC Core 3.1.3.7 lets a client refuse both).
SIGNING_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DISCOVERY_MAX_AGE_S = 3600.0
JWKS_MAX_AGE_S = 3600.0
JWKS_MIN_REFRESH_S = 30.0  # an unknown `kid` refetches the JWKS at most this often, so junk tokens can't flood the IdP
MAX_RESPONSE_BYTES = 1 << 20
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_TIMEOUT = aiohttp.ClientTimeout(total=10)
# Userinfo may add profile claims but never these: they say how and when the user logged in, and only the signed
# ID token may say that (an AAL rule reading `acr` must not be fed by an unsigned response).
_ID_TOKEN_ONLY = frozenset(
    {"iss", "aud", "exp", "iat", "nbf", "nonce", "azp", "at_hash", "c_hash", "auth_time", "acr", "amr", "sid", "jti"}
)


class IdentityError(PgwardenError):
    """A login through an identity provider failed; the message names the provider and the check.

    IdentityError              28000
    ├── ProviderUnavailable    unreachable, or answered something that is not OAuth/OIDC (transient)
    ├── ProviderMisconfigured  discovery contradicts our configuration: issuer, http URL, no S256, no usable alg
    ├── CallbackRejected       the redirect back does not belong to this request (state, iss, missing code)
    ├── AuthorizationDenied    the user or the provider said no (error=..., access_denied)
    ├── TokenRequestRefused    the token endpoint answered an OAuth error (invalid_grant, invalid_client, ...)
    ├── DeviceCodeExpired      the device code expired before the user approved it
    └── TokenRejected          a JWT or userinfo failed a check: signature, alg, iss, aud, azp, exp, iat, nonce, sub
    """

    sqlstate = "28000"


class ProviderUnavailable(IdentityError):
    """The provider could not be reached, or its answer was not the JSON the protocol requires."""


class ProviderMisconfigured(IdentityError):
    """The provider's discovery document contradicts what pgwarden requires or was configured with."""


class CallbackRejected(IdentityError):
    """The authorization response is not the answer to our request (state, iss or code is wrong or missing)."""


class AuthorizationDenied(IdentityError):
    """The user declined, or the provider refused to authorize."""


class TokenRequestRefused(IdentityError):
    """The token or device endpoint answered with an OAuth error."""


class DeviceCodeExpired(IdentityError):
    """The device code expired before the user finished at the verification URI."""


class TokenRejected(IdentityError):
    """An ID token, workload assertion or userinfo response failed a check."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderMetadata:
    """What discovery said about one issuer, already checked. `name` is the IdentityProvider's, for messages."""

    name: str
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None = None
    device_authorization_endpoint: str | None = None
    id_token_algorithms: tuple[str, ...] = ("RS256",)
    token_auth_methods: tuple[str, ...] = ("client_secret_basic",)
    has_iss_parameter: bool = False  # RFC 9207: the callback must then carry `iss`


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


def _fail(cls: type[IdentityError], provider: str, text: str, *, hint: str | None = None) -> IdentityError:
    return cls(f"identity provider {provider!r}: {text}", hint=hint)


# --- discovery and keys -----------------------------------------------------------------------------------------

_discovered: dict[str, tuple[float, ProviderMetadata]] = {}
_jwks: dict[str, tuple[float, KeySet]] = {}


def clear_caches() -> None:
    """Forget every discovery document and JWKS (tests, or after an IdentityProvider changed)."""
    _discovered.clear()
    _jwks.clear()


async def discover(
    issuer_url: str, *, name: str | None = None, session: aiohttp.ClientSession | None = None,
    max_age_s: float = DISCOVERY_MAX_AGE_S,
) -> ProviderMetadata:
    """Fetch and check ISSUER/.well-known/openid-configuration; cached for `max_age_s`."""
    provider = name or issuer_url
    cached = _discovered.get(issuer_url)
    if cached and cached[0] > time.monotonic():
        return cached[1] if cached[1].name == provider else replace(cached[1], name=provider)
    _check_url(issuer_url, provider, "issuerURL")
    async with _client(session) as http:
        doc = await _get_json(http, issuer_url.rstrip("/") + "/.well-known/openid-configuration", provider, "discovery")
    # OIDC Discovery §4.3: the document's issuer must be exactly the URL we asked, or a mix-up is possible.
    if doc.get("issuer") != issuer_url:
        raise _fail(ProviderMisconfigured, provider, "discovery `issuer` does not equal the configured issuerURL",
                    hint="set issuerURL to exactly the issuer the provider publishes (mind the trailing slash)")

    def url(key: str) -> str:
        return _check_url(doc.get(key), provider, f"discovery {key}")

    def optional_url(key: str) -> str | None:
        return None if doc.get(key) is None else url(key)

    pkce = doc.get("code_challenge_methods_supported")
    if isinstance(pkce, list) and "S256" not in pkce:
        raise _fail(ProviderMisconfigured, provider, "does not support PKCE with S256")
    advertised = doc.get("id_token_signing_alg_values_supported") or ["RS256"]
    algorithms = tuple(alg for alg in SIGNING_ALGORITHMS if alg in advertised)
    if not algorithms:
        raise _fail(ProviderMisconfigured, provider, "signs ID tokens with no public-key algorithm pgwarden accepts",
                    hint=f"configure the client at the provider for one of {', '.join(SIGNING_ALGORITHMS)}")
    auth_methods = doc.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
    meta = ProviderMetadata(
        name=provider, issuer=issuer_url,
        authorization_endpoint=url("authorization_endpoint"),
        token_endpoint=url("token_endpoint"),
        jwks_uri=url("jwks_uri"),
        userinfo_endpoint=optional_url("userinfo_endpoint"),
        device_authorization_endpoint=optional_url("device_authorization_endpoint"),
        id_token_algorithms=algorithms,
        token_auth_methods=tuple(str(m) for m in auth_methods),
        has_iss_parameter=doc.get("authorization_response_iss_parameter_supported") is True,
    )
    _discovered[issuer_url] = (time.monotonic() + max_age_s, meta)
    return meta


async def fetch_jwks(
    jwks_url: str, *, provider: str | None = None, session: aiohttp.ClientSession | None = None,
    is_refresh: bool = False,
) -> KeySet:
    """The provider's signing keys; cached, refetched when `is_refresh` and the copy is older than 30 s."""
    provider = provider or jwks_url
    cached = _jwks.get(jwks_url)
    now = time.monotonic()
    if cached and (now - cached[0] < JWKS_MIN_REFRESH_S or (not is_refresh and now - cached[0] < JWKS_MAX_AGE_S)):
        return cached[1]
    _check_url(jwks_url, provider, "jwks_uri")
    async with _client(session) as http:
        keys = load_key_set(await _get_json(http, jwks_url, provider, "JWKS"), provider=provider)
    _jwks[jwks_url] = (now, keys)
    return keys


def load_key_set(jwks: KeySet | Mapping[str, Any], *, provider: str = "JWKS") -> KeySet:
    """A KeySet from a JWKS document, skipping keys joserfc can't use (a new kty must not break login)."""
    if isinstance(jwks, KeySet):
        return jwks
    listed = jwks.get("keys")
    usable = []
    for key in listed if isinstance(listed, list) else ():
        if not isinstance(key, Mapping) or key.get("use", "sig") != "sig":
            continue
        try:
            usable.append(KeySet.import_key_set({"keys": [dict(key)]}).keys[0])
        except (JoseError, ValueError, TypeError):
            continue
    if not usable:
        raise _fail(ProviderUnavailable, provider, "JWKS holds no usable signing key")
    return KeySet(usable)


# --- authorization code + PKCE ----------------------------------------------------------------------------------


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
            "code_challenge": _s256(verifier),
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
            raise _fail(CallbackRejected, self.provider, "callback `state` does not match this login",
                        hint="start the login again from the same browser")
        if "iss" in params or self.has_iss_parameter:
            if params.get("iss") != self.issuer:
                raise _fail(CallbackRejected, self.provider, "callback `iss` is not this provider's issuer")
        if "error" in params:
            raise _fail(AuthorizationDenied, self.provider, f"authorization refused: {_oauth_error(params)}")
        if not params.get("code"):
            raise _fail(CallbackRejected, self.provider, "callback carries no authorization code")
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
        raise _fail(TokenRequestRefused, meta.name, f"token endpoint refused the code: {_oauth_error(body)}")
    return _token_response(meta.name, body)


def verify_id_token(
    meta: ProviderMetadata, jwks: KeySet | Mapping[str, Any], token: str, *, client_id: str, nonce: str | None,
    now: float | None = None, leeway_s: float = 60,
) -> dict[str, Any]:
    """OIDC Core 3.1.3.7: signature by the JWKS, iss, aud (+ azp), exp, iat and nonce. Returns the claims."""
    keys = load_key_set(jwks, provider=meta.name)
    claims = _verified_claims(token, keys, meta.id_token_algorithms, meta.name, "ID token")
    current = time.time() if now is None else now
    _check_issuer(claims, meta.issuer, meta.name, "ID token")
    audiences = _audiences(claims)
    if client_id not in audiences:
        raise _fail(TokenRejected, meta.name, f"ID token audience does not include client {client_id!r}")
    # Several audiences: azp must name us, or another audience's client could replay its token here.
    if (len(audiences) > 1 or "azp" in claims) and claims.get("azp") != client_id:
        raise _fail(TokenRejected, meta.name, f"ID token azp is not client {client_id!r}")
    _check_times(claims, current, leeway_s, meta.name, "ID token", is_iat_required=True)
    if nonce is not None and not hmac.compare_digest(str(claims.get("nonce", "")).encode(), nonce.encode()):
        raise _fail(TokenRejected, meta.name, "ID token nonce does not match this login")
    _check_subject(claims, meta.name, "ID token")
    return claims


async def userinfo(
    meta: ProviderMetadata, access_token: str, *, session: aiohttp.ClientSession | None = None
) -> dict[str, Any]:
    """GET the userinfo endpoint with the access token (OIDC Core 5.3); JSON responses only."""
    if meta.userinfo_endpoint is None:
        raise _fail(ProviderMisconfigured, meta.name, "publishes no userinfo_endpoint", hint="set useUserInfo: false")
    headers = {"Authorization": f"Bearer {access_token}", "Accept": "application/json"}
    async with _client(session) as http:
        body = await _get_json(http, meta.userinfo_endpoint, meta.name, "userinfo", headers=headers)
    _check_subject(body, meta.name, "userinfo")
    return body


def merged_claims(
    id_claims: Mapping[str, Any], info: Mapping[str, Any], *, provider: str | None = None
) -> dict[str, Any]:
    """ID-token claims plus userinfo's. OIDC Core 5.3.2: userinfo `sub` must equal the ID token's, else refuse.

    The signed ID token wins where both have a claim; login-context claims (acr, amr, auth_time, ...) come only
    from it.
    """
    name = provider or str(id_claims.get("iss", "unknown"))
    if info.get("sub") != id_claims.get("sub"):
        raise _fail(TokenRejected, name, "userinfo `sub` differs from the ID token's: refusing to merge")
    return {**{k: v for k, v in info.items() if k not in _ID_TOKEN_ONLY}, **id_claims}


# --- device authorization grant (RFC 8628) ----------------------------------------------------------------------


async def start_device_authorization(
    meta: ProviderMetadata, client_id: str, client_secret: str | SecretValue | None, scopes: Iterable[str], *,
    session: aiohttp.ClientSession | None = None,
) -> DeviceAuthorization:
    """RFC 8628 §3.1-3.2: ask for a device code and the user code to show."""
    if meta.device_authorization_endpoint is None:
        raise _fail(ProviderMisconfigured, meta.name, "publishes no device_authorization_endpoint",
                    hint="log in with the browser flow instead")
    form = {"scope": " ".join(_with_openid(scopes))}
    status, body = await _post_form(meta, meta.device_authorization_endpoint, client_id, client_secret, form,
                                    session, "device authorization")
    if status != 200 or "error" in body:
        raise _fail(TokenRequestRefused, meta.name, f"device authorization refused: {_oauth_error(body)}")
    try:
        verification_uri = str(body.get("verification_uri") or body["verification_url"])  # Google's older name
        complete = body.get("verification_uri_complete")
        return DeviceAuthorization(
            device_code=str(body["device_code"]), user_code=str(body["user_code"]),
            verification_uri=_check_url(verification_uri, meta.name, "verification_uri"),
            verification_uri_complete=_check_url(str(complete), meta.name, "verification_uri_complete")
            if complete else None,
            interval_s=float(body.get("interval", 5)),  # §3.2: 5 s when absent
            expires_in_s=float(body["expires_in"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise _fail(ProviderUnavailable, meta.name, "device authorization response lacks a required field") from exc


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
            raise _fail(DeviceCodeExpired, meta.name, "the device code expired before the login was approved",
                        hint="start the device login again")
        elif error == "access_denied":
            raise _fail(AuthorizationDenied, meta.name, "the user denied the device login")
        else:
            raise _fail(TokenRequestRefused, meta.name, f"token endpoint refused the device code: {_oauth_error(body)}")
        if time.monotonic() + interval_s > deadline:
            raise _fail(DeviceCodeExpired, meta.name, "the device code expired before the login was approved",
                        hint="start the device login again")
        await sleep(interval_s)


# --- workload assertions (IdentityProvider spec.oidcIdentityToken) ----------------------------------------------


async def verify_workload_assertion(
    token: str, *, jwks_or_url: str | KeySet | Mapping[str, Any], issuer: str, audience: str,
    now: float | None = None, leeway_s: float = 60, provider: str | None = None,
    session: aiohttp.ClientSession | None = None,
) -> dict[str, Any]:
    """A JWT a platform (GitHub Actions, Kubernetes) signed for this workload: signature, iss, aud, exp, nbf, iat."""
    name = provider or issuer
    if isinstance(jwks_or_url, str):
        keys = await fetch_jwks(jwks_or_url, provider=name, session=session)
        try:
            claims = _verified_claims(token, keys, SIGNING_ALGORITHMS, name, "workload token")
        except _UnknownKey:
            # Issuers rotate keys: one refetch, rate-limited inside fetch_jwks.
            keys = await fetch_jwks(jwks_or_url, provider=name, session=session, is_refresh=True)
            claims = _verified_claims(token, keys, SIGNING_ALGORITHMS, name, "workload token")
    else:
        claims = _verified_claims(token, load_key_set(jwks_or_url, provider=name), SIGNING_ALGORITHMS, name,
                                  "workload token")
    _check_issuer(claims, issuer, name, "workload token")
    if audience not in _audiences(claims):
        raise _fail(TokenRejected, name, f"workload token audience does not include {audience!r}")
    _check_times(claims, time.time() if now is None else now, leeway_s, name, "workload token", is_iat_required=False)
    _check_subject(claims, name, "workload token")
    return claims


# --- checks shared by ID tokens and workload tokens -------------------------------------------------------------


class _UnknownKey(TokenRejected):
    """Signed by a `kid` the JWKS doesn't hold (yet)."""


def _verified_claims(
    token: str, keys: KeySet, algorithms: Iterable[str], provider: str, what: str
) -> dict[str, Any]:
    allowed = list(algorithms)
    token = token.strip()
    if token.count(".") == 4:
        raise _fail(TokenRejected, provider, f"{what} is encrypted (JWE), which pgwarden does not accept")
    try:
        alg = jws.extract_compact(token.encode("ascii")).headers().get("alg")
    except (JoseError, ValueError, UnicodeError) as exc:
        raise _fail(TokenRejected, provider, f"{what} is not a signed JWT") from exc
    if alg not in allowed:
        # Checked before any key is touched: "none" and HS* never reach joserfc (alg confusion).
        shown = alg if isinstance(alg, str) and alg.isalnum() and len(alg) <= 10 else "an unknown algorithm"
        raise _fail(TokenRejected, provider, f"{what} is signed with {shown}; accepted: {', '.join(allowed)}")
    try:
        claims = jwt.decode(token, keys, algorithms=allowed).claims
    except InvalidKeyIdError as exc:
        raise _fail(_UnknownKey, provider, f"{what} is signed by a key that is not in the provider's JWKS") from exc
    except BadSignatureError as exc:
        raise _fail(TokenRejected, provider, f"{what} signature does not verify against the provider's JWKS") from exc
    except (JoseError, ValueError) as exc:
        raise _fail(TokenRejected, provider, f"{what} is malformed") from exc
    if not isinstance(claims, dict):
        raise _fail(TokenRejected, provider, f"{what} claims are not a JSON object")
    return claims


def _check_issuer(claims: Mapping[str, Any], issuer: str, provider: str, what: str) -> None:
    if claims.get("iss") != issuer:
        raise _fail(TokenRejected, provider, f"{what} issuer (iss) is not {issuer!r}")


def _audiences(claims: Mapping[str, Any]) -> list[str]:
    aud = claims.get("aud")
    if isinstance(aud, str):
        return [aud]
    return [a for a in aud if isinstance(a, str)] if isinstance(aud, list) else []


def _check_times(
    claims: Mapping[str, Any], now: float, leeway_s: float, provider: str, what: str, *, is_iat_required: bool
) -> None:
    exp, iat, nbf = claims.get("exp"), claims.get("iat"), claims.get("nbf")
    if not _is_number(exp):
        raise _fail(TokenRejected, provider, f"{what} has no expiry (exp)")
    if now > exp + leeway_s:
        raise _fail(TokenRejected, provider, f"{what} has expired (exp)", hint="log in again")
    if (iat is None and is_iat_required) or (iat is not None and not _is_number(iat)):
        raise _fail(TokenRejected, provider, f"{what} has no valid issue time (iat)")
    if iat is not None and iat > now + leeway_s:
        raise _fail(TokenRejected, provider, f"{what} is issued in the future (iat); check the clocks")
    if nbf is not None and (not _is_number(nbf) or nbf > now + leeway_s):
        raise _fail(TokenRejected, provider, f"{what} is not valid yet (nbf)")


def _check_subject(claims: Mapping[str, Any], provider: str, what: str) -> None:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise _fail(TokenRejected, provider, f"{what} names no subject (sub)")


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


# --- HTTP -------------------------------------------------------------------------------------------------------


@asynccontextmanager
async def _client(session: aiohttp.ClientSession | None) -> AsyncIterator[aiohttp.ClientSession]:
    if session is not None:
        yield session
        return
    async with aiohttp.ClientSession(timeout=_TIMEOUT) as own:
        yield own


def _check_url(url: object, provider: str, what: str) -> str:
    """https, or http to a loopback host (tests, local IdPs); anything else could leak codes and tokens."""
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or not parts.hostname:
        raise _fail(ProviderMisconfigured, provider, f"{what} is missing or not an absolute URL")
    if parts.scheme != "https" and not (parts.scheme == "http" and parts.hostname in _LOOPBACK_HOSTS):
        raise _fail(ProviderMisconfigured, provider, f"{what} must use https")
    return str(url)


async def _get_json(
    http: aiohttp.ClientSession, url: str, provider: str, what: str, *, headers: Mapping[str, str] | None = None
) -> dict[str, Any]:
    try:
        async with http.get(url, headers=headers, timeout=_TIMEOUT) as response:
            if response.status == 401 and what == "userinfo":
                raise _fail(TokenRejected, provider, "userinfo refused the access token (401)")
            if response.status != 200:
                raise _fail(ProviderUnavailable, provider, f"{what} answered HTTP {response.status}")
            return await _read_json(response, provider, what)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise _fail(ProviderUnavailable, provider, f"{what} could not be fetched ({type(exc).__name__})",
                    hint="check that the provider is reachable from the proxy") from exc


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
        async with _client(session) as http, http.post(url, data=form, headers=headers, allow_redirects=False,
                                                       timeout=_TIMEOUT) as response:
            if response.status >= 500 or response.status in (301, 302, 303, 307, 308):
                raise _fail(ProviderUnavailable, meta.name, f"{what} endpoint answered HTTP {response.status}")
            return response.status, await _read_json(response, meta.name, f"{what} endpoint")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise _fail(ProviderUnavailable, meta.name, f"{what} endpoint could not be reached ({type(exc).__name__})",
                    hint="check that the provider is reachable from the proxy") from exc


async def read_bounded(response: aiohttp.ClientResponse, limit_bytes: int) -> bytes:
    """The body, or just past `limit_bytes` of it (content.read(n) alone returns only what has arrived)."""
    body = bytearray()
    async for chunk in response.content.iter_chunked(1 << 16):
        body += chunk
        if len(body) > limit_bytes:
            break
    return bytes(body)


async def _read_json(response: aiohttp.ClientResponse, provider: str, what: str) -> dict[str, Any]:
    raw = await read_bounded(response, MAX_RESPONSE_BYTES)
    if len(raw) > MAX_RESPONSE_BYTES:
        raise _fail(ProviderUnavailable, provider, f"{what} answer is larger than {MAX_RESPONSE_BYTES} bytes")
    if response.content_type == "application/jwt":
        raise _fail(ProviderMisconfigured, provider, f"{what} answers with a signed JWT, which is not supported",
                    hint="configure the client at the provider for plain JSON userinfo")
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise _fail(ProviderUnavailable, provider, f"{what} answer is not JSON") from exc
    if not isinstance(body, dict):
        raise _fail(ProviderUnavailable, provider, f"{what} answer is not a JSON object")
    return body


def _token_response(provider: str, body: Mapping[str, Any]) -> TokenResponse:
    access_token, token_type = body.get("access_token"), body.get("token_type", "")
    if not isinstance(access_token, str) or not access_token:
        raise _fail(ProviderUnavailable, provider, "token response carries no access_token")
    # RFC 6750 bearer only: a DPoP- or MTLS-bound token would not work the way we use it.
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise _fail(ProviderMisconfigured, provider, "token response is not a Bearer token")
    id_token, refresh, expires = body.get("id_token"), body.get("refresh_token"), body.get("expires_in")
    return TokenResponse(
        access_token=access_token,
        token_type=token_type,
        id_token=id_token if isinstance(id_token, str) else None,
        refresh_token=refresh if isinstance(refresh, str) else None,
        expires_in_s=int(expires) if _is_number(expires) else None,
        scope=body["scope"] if isinstance(body.get("scope"), str) else None,
    )


def _oauth_error(body: Mapping[str, Any]) -> str:
    """RFC 6749 §5.2 `error` (a restricted ASCII code) and a bounded, printable `error_description`."""
    code = str(body.get("error", "no error code"))
    code = code if code.replace("_", "").isalnum() and len(code) <= 64 else "an unrecognised error"
    description = body.get("error_description")
    if isinstance(description, str) and description:
        printable = "".join(ch for ch in description[:200] if ch.isprintable())
        return f"{code} ({printable})"
    return code


def _with_openid(scopes: Iterable[str]) -> list[str]:
    return ["openid", *dict.fromkeys(s for s in scopes if s != "openid")]


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

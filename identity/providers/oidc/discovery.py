"""OpenID Connect discovery and signing keys: the provider's metadata and JWKS, checked and cached.

Async over aiohttp, JOSE via joserfc. Errors name the provider and the check that failed, never a token or secret.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from identity.errors import ProviderMisconfigured, ProviderUnavailable, fail
from identity.providers.oidc.http import check_url, get_json, http_client

# Only public-key signatures: with HS256 anyone who holds the client secret could mint ID tokens, and "none"
# is no signature at all (OIDC Core 3.1.3.7 lets a client refuse both).
SIGNING_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
DISCOVERY_MAX_AGE_S = 3600.0
JWKS_MAX_AGE_S = 3600.0
JWKS_MIN_REFRESH_S = 30.0  # an unknown `kid` refetches the JWKS at most this often, so junk tokens can't flood the IdP


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
    check_url(issuer_url, provider, "issuerURL")
    async with http_client(session) as http:
        doc = await get_json(http, issuer_url.rstrip("/") + "/.well-known/openid-configuration", provider, "discovery")
    # OIDC Discovery §4.3: the document's issuer must be exactly the URL we asked, or a mix-up is possible.
    if doc.get("issuer") != issuer_url:
        raise fail(ProviderMisconfigured, provider, "discovery `issuer` does not equal the configured issuerURL",
                   hint="set issuerURL to exactly the issuer the provider publishes (mind the trailing slash)")

    def url(key: str) -> str:
        return check_url(doc.get(key), provider, f"discovery {key}")

    def optional_url(key: str) -> str | None:
        return None if doc.get(key) is None else url(key)

    pkce = doc.get("code_challenge_methods_supported")
    if isinstance(pkce, list) and "S256" not in pkce:
        raise fail(ProviderMisconfigured, provider, "does not support PKCE with S256")
    advertised = doc.get("id_token_signing_alg_values_supported") or ["RS256"]
    algorithms = tuple(alg for alg in SIGNING_ALGORITHMS if alg in advertised)
    if not algorithms:
        raise fail(ProviderMisconfigured, provider, "signs ID tokens with no public-key algorithm pgwarden accepts",
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
    check_url(jwks_url, provider, "jwks_uri")
    async with http_client(session) as http:
        keys = load_key_set(await get_json(http, jwks_url, provider, "JWKS"), provider=provider)
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
        raise fail(ProviderUnavailable, provider, "JWKS holds no usable signing key")
    return KeySet(usable)

"""Workload assertions: a JWT a platform (GitHub Actions, Kubernetes) signed for this workload
(IdentityProvider spec.oidcIdentityToken), checked against the issuer's JWKS."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import aiohttp
from joserfc.jwk import KeySet

from identity.errors import TokenRejected, fail
from identity.providers.oidc.discovery import SIGNING_ALGORITHMS, fetch_jwks, load_key_set
from identity.providers.oidc.verification import (
    UnknownKey,
    audiences_of,
    check_issuer,
    check_subject,
    check_times,
    verified_claims,
)


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
            claims = verified_claims(token, keys, SIGNING_ALGORITHMS, name, "workload token")
        except UnknownKey:
            # Issuers rotate keys: one refetch, rate-limited inside fetch_jwks.
            keys = await fetch_jwks(jwks_or_url, provider=name, session=session, is_refresh=True)
            claims = verified_claims(token, keys, SIGNING_ALGORITHMS, name, "workload token")
    else:
        claims = verified_claims(token, load_key_set(jwks_or_url, provider=name), SIGNING_ALGORITHMS, name,
                                  "workload token")
    check_issuer(claims, issuer, name, "workload token")
    if audience not in audiences_of(claims):
        raise fail(TokenRejected, name, f"workload token audience does not include {audience!r}")
    check_times(claims, time.time() if now is None else now, leeway_s, name, "workload token", is_iat_required=False)
    check_subject(claims, name, "workload token")
    return claims

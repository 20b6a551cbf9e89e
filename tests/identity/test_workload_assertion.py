"""Workload assertions (IdentityProvider spec.oidcIdentityToken) from a real oauth2-mock-server issuing
GitHub-Actions-shaped tokens: accepted when signed for us, refused on audience, issuer, expiry, alg and key."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
import pytest_asyncio
from joserfc import jwt
from joserfc.jwk import OctKey, RSAKey

from identity.providers import oidc
from identity.providers.oidc import TokenRejected
from tests.support.peers import WORKLOAD_AUDIENCE, Peer, start_workload_issuer

GITHUB_ISSUER = "https://token.actions.githubusercontent.com"


@pytest.fixture(scope="module")
def issuer() -> Iterator[Peer]:
    peer = start_workload_issuer(audience=WORKLOAD_AUDIENCE)
    try:
        yield peer
    finally:
        peer.stop()


@pytest_asyncio.fixture(scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    oidc.clear_caches()
    async with aiohttp.ClientSession() as session:
        yield session


async def mint(http: aiohttp.ClientSession, issuer: Peer, **fields: str) -> str:
    """A token from the issuer's client_credentials grant; `fields` reshape it (see workload_issuer.mjs)."""
    async with http.post(f"{issuer.url}/token", data={"grant_type": "client_credentials", **fields}) as response:
        assert response.status == 200, await response.text()
        return str((await response.json())["access_token"])


async def verify(http: aiohttp.ClientSession, peer: Peer, token: str, *, issuer: str | None = None) -> dict:
    return await oidc.verify_workload_assertion(
        token, jwks_or_url=f"{peer.url}/jwks", issuer=issuer or peer.url, audience=WORKLOAD_AUDIENCE,
        provider="github-actions", session=http,
    )


def segment(value: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


def decoded(part: str) -> dict:
    """One JWT part (header or payload) as JSON, unverified."""
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


async def test_a_token_signed_for_us_is_accepted(http: aiohttp.ClientSession, issuer: Peer) -> None:
    claims = await verify(http, issuer, await mint(http, issuer))
    assert claims["sub"] == "repo:acme/app:ref:refs/heads/main"
    assert claims["repository"] == "acme/app" and claims["aud"] == WORKLOAD_AUDIENCE and claims["iss"] == issuer.url
    # The JWKS document itself works as well as its URL.
    async with http.get(f"{issuer.url}/jwks") as response:
        document = await response.json()
    token = await mint(http, issuer, repository="acme/infra")
    claims = await oidc.verify_workload_assertion(token, jwks_or_url=document, issuer=issuer.url,
                                                  audience=WORKLOAD_AUDIENCE)
    assert claims["repository_owner"] == "acme"


async def test_wrong_audience_is_refused(http: aiohttp.ClientSession, issuer: Peer) -> None:
    token = await mint(http, issuer, aud="sts.amazonaws.com")
    with pytest.raises(TokenRejected, match="'github-actions': workload token audience does not include 'pgwarden'"):
        await verify(http, issuer, token)


async def test_wrong_issuer_is_refused(http: aiohttp.ClientSession, issuer: Peer) -> None:
    with pytest.raises(TokenRejected, match=r"issuer \(iss\) is not 'https://token.actions"):
        await verify(http, issuer, await mint(http, issuer), issuer=GITHUB_ISSUER)


async def test_expired_token_is_refused(http: aiohttp.ClientSession, issuer: Peer) -> None:
    with pytest.raises(TokenRejected, match=r"workload token has expired \(exp\)") as caught:
        await verify(http, issuer, await mint(http, issuer, expires_in_s="-600"))
    assert caught.value.hint == "log in again"
    # Within the 60 s leeway a just-expired token still passes; a fresh one checked an hour later does not.
    await verify(http, issuer, await mint(http, issuer, expires_in_s="-30"))
    with pytest.raises(TokenRejected, match="expired"):
        await oidc.verify_workload_assertion(await mint(http, issuer), jwks_or_url=f"{issuer.url}/jwks",
                                             issuer=issuer.url, audience=WORKLOAD_AUDIENCE, now=time.time() + 7200)


async def test_unsigned_and_symmetric_tokens_are_refused(http: aiohttp.ClientSession, issuer: Peer) -> None:
    _, payload, _ = (await mint(http, issuer)).split(".")
    with pytest.raises(TokenRejected, match="signed with none; accepted: RS256"):
        await verify(http, issuer, f"{segment({'alg': 'none', 'typ': 'JWT'})}.{payload}.")
    with pytest.raises(TokenRejected, match="not a signed JWT"):  # no signature part at all
        await verify(http, issuer, f"{segment({'alg': 'none'})}.{payload}")
    forged = jwt.encode({"alg": "HS256"}, decoded(payload), OctKey.generate_key(256))
    with pytest.raises(TokenRejected, match="signed with HS256"):
        await verify(http, issuer, forged)
    with pytest.raises(TokenRejected, match="not a signed JWT"):
        await verify(http, issuer, "not-a-jwt")


async def test_a_key_the_issuer_does_not_publish_is_refused(http: aiohttp.ClientSession, issuer: Peer) -> None:
    header, payload, _ = (await mint(http, issuer)).split(".")
    claims = decoded(payload)
    stranger = RSAKey.generate_key(2048, parameters={"kid": "stranger"})
    forged = jwt.encode({"alg": "RS256", "kid": "stranger"}, claims, stranger)
    with pytest.raises(TokenRejected, match="signed by a key that is not in the provider's JWKS"):
        await verify(http, issuer, forged)
    # Same kid as the issuer's real key, different key: the signature check catches it.
    impostor = jwt.encode({"alg": "RS256", "kid": decoded(header)["kid"]}, claims, stranger)
    with pytest.raises(TokenRejected, match="signature does not verify"):
        await verify(http, issuer, impostor)


"""The OIDC relying party against a real oidc-provider: discovery, code + PKCE, ID token, userinfo, device flow,
and mapping the result to Users. Logins are driven over plain HTTP through devInteractions (no browser)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from joserfc.jwk import KeySet

from identity.mapping import AmbiguousIdentity, map_identity
from identity.providers import oidc
from identity.providers.oidc import (
    AuthorizationDenied,
    AuthorizationRequest,
    CallbackRejected,
    DeviceCodeExpired,
    ProviderMetadata,
    ProviderMisconfigured,
    TokenRejected,
    TokenRequestRefused,
    TokenResponse,
)
from proxy.snapshot import SecretValue, User
from tests.support.peers import (
    OIDC_CLIENT_ID,
    OIDC_CLIENT_SECRET,
    OIDC_SHORT_DEVICE_CLIENT_ID,
    Peer,
    follow_login,
    start_oidc_provider,
)

REDIRECT_URI = "http://localhost:8765/callback"  # nothing listens: follow_login stops at the redirect
SCOPES = ["openid", "email", "profile", "groups"]
PROVIDER = "corp"
SECRET = SecretValue(OIDC_CLIENT_SECRET)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Login:
    """One finished browser login and what the relying party learned from it."""

    request: AuthorizationRequest
    tokens: TokenResponse
    id_claims: dict[str, Any]
    claims: dict[str, Any]


@pytest.fixture(scope="module")
def op() -> Iterator[Peer]:
    peer = start_oidc_provider(redirect_uris=[REDIRECT_URI])
    try:
        yield peer
    finally:
        peer.stop()


@pytest_asyncio.fixture(scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest_asyncio.fixture(scope="module")
async def meta(op: Peer, http: aiohttp.ClientSession) -> ProviderMetadata:
    oidc.clear_caches()
    return await oidc.discover(op.url, name=PROVIDER, session=http)


@pytest_asyncio.fixture(scope="module")
async def jwks(meta: ProviderMetadata, http: aiohttp.ClientSession) -> KeySet:
    return await oidc.fetch_jwks(meta.jwks_uri, provider=meta.name, session=http)


async def browser_login(meta: ProviderMetadata, jwks: KeySet, http: aiohttp.ClientSession, login: str) -> Login:
    request = AuthorizationRequest.new(meta, OIDC_CLIENT_ID, REDIRECT_URI, SCOPES)
    async with aiohttp.ClientSession() as browser:  # its own cookies, like a user's browser
        outcome = await follow_login(browser, request.url, login=login, redirect_prefix=REDIRECT_URI)
    code = request.code_from_callback(outcome.url)
    tokens = await oidc.exchange_code(meta, OIDC_CLIENT_ID, SECRET, code, REDIRECT_URI, request.code_verifier,
                                      session=http)
    assert tokens.id_token is not None
    id_claims = oidc.verify_id_token(meta, jwks, tokens.id_token, client_id=OIDC_CLIENT_ID, nonce=request.nonce)
    info = await oidc.userinfo(meta, tokens.access_token, session=http)
    return Login(request=request, tokens=tokens, id_claims=id_claims,
                 claims=oidc.merged_claims(id_claims, info, provider=meta.name))


@pytest_asyncio.fixture(scope="module")
async def alice(meta: ProviderMetadata, jwks: KeySet, http: aiohttp.ClientSession) -> Login:
    return await browser_login(meta, jwks, http, "alice")


# --- discovery --------------------------------------------------------------------------------------------------


async def test_discovery_reads_and_checks_the_provider(op: Peer, meta: ProviderMetadata) -> None:
    assert meta.issuer == op.url and meta.name == PROVIDER
    assert meta.token_endpoint.startswith(op.url) and meta.jwks_uri.startswith(op.url)
    assert meta.device_authorization_endpoint and meta.userinfo_endpoint
    assert meta.id_token_algorithms == ("RS256",)
    assert meta.has_iss_parameter  # oidc-provider sends RFC 9207 `iss` on the callback
    assert await oidc.discover(op.url, name=PROVIDER) is meta  # cached: no second fetch


async def test_discovery_refuses_an_issuer_that_differs_from_the_configured_url(
    op: Peer, http: aiohttp.ClientSession
) -> None:
    with pytest.raises(ProviderMisconfigured, match=r"'corp-slash'.*discovery `issuer` does not equal"):
        await oidc.discover(op.url + "/", name="corp-slash", session=http)


# --- authorization code + PKCE ----------------------------------------------------------------------------------


async def test_code_flow_with_pkce_verifies_the_id_token_and_merges_userinfo(alice: Login, op: Peer) -> None:
    assert "code_challenge_method=S256" in alice.request.url and "nonce=" in alice.request.url
    assert alice.id_claims["sub"] == "alice" and alice.id_claims["iss"] == op.url
    assert alice.id_claims["aud"] == OIDC_CLIENT_ID
    # With response_type=code oidc-provider signs only `sub` into the ID token; the rest comes from userinfo.
    assert "email" not in alice.id_claims and "groups" not in alice.id_claims
    assert alice.claims["email"] == "alice@example.com" and alice.claims["email_verified"] is True
    assert alice.claims["groups"] == ["admins"] and alice.claims["nonce"] == alice.request.nonce
    assert "access_token" not in repr(alice.tokens) and alice.tokens.access_token not in repr(alice.tokens)


async def test_tampered_id_token_is_refused(alice: Login, meta: ProviderMetadata, jwks: KeySet) -> None:
    token = alice.tokens.id_token
    assert token is not None
    header, payload, signature = token.split(".")
    middle = len(signature) // 2
    flipped = signature[:middle] + ("A" if signature[middle] != "A" else "B") + signature[middle + 1:]
    with pytest.raises(TokenRejected, match=r"'corp': ID token signature does not verify") as caught:
        oidc.verify_id_token(meta, jwks, f"{header}.{payload}.{flipped}", client_id=OIDC_CLIENT_ID,
                             nonce=alice.request.nonce)
    assert flipped not in str(caught.value) and payload not in str(caught.value)


async def test_id_token_with_the_wrong_nonce_audience_or_time_is_refused(
    alice: Login, meta: ProviderMetadata, jwks: KeySet
) -> None:
    token = alice.tokens.id_token
    assert token is not None
    verify = oidc.verify_id_token
    with pytest.raises(TokenRejected, match="nonce does not match"):
        verify(meta, jwks, token, client_id=OIDC_CLIENT_ID, nonce="another-login")
    with pytest.raises(TokenRejected, match="audience does not include client 'someone-else'"):
        verify(meta, jwks, token, client_id="someone-else", nonce=alice.request.nonce)
    with pytest.raises(TokenRejected, match=r"expired \(exp\)"):
        verify(meta, jwks, token, client_id=OIDC_CLIENT_ID, nonce=alice.request.nonce, now=time.time() + 86400)
    with pytest.raises(TokenRejected, match=r"issued in the future \(iat\)"):
        verify(meta, jwks, token, client_id=OIDC_CLIENT_ID, nonce=alice.request.nonce, now=time.time() - 3600)
    impostor = dataclasses.replace(meta, issuer="http://localhost:1")
    with pytest.raises(TokenRejected, match="issuer"):
        verify(impostor, jwks, token, client_id=OIDC_CLIENT_ID, nonce=alice.request.nonce)


async def test_callback_must_carry_our_state_and_the_providers_iss(meta: ProviderMetadata) -> None:
    request = AuthorizationRequest.new(meta, OIDC_CLIENT_ID, REDIRECT_URI, SCOPES)
    url, state, nonce, verifier = request
    assert url.startswith(meta.authorization_endpoint + "?") and f"state={state}" in url and nonce in url
    assert verifier not in url and verifier not in repr(request) and 43 <= len(verifier) <= 128
    good = f"state={request.state}&iss={meta.issuer}"
    assert request.code_from_callback(f"{REDIRECT_URI}?code=abc&{good}") == "abc"
    with pytest.raises(CallbackRejected, match="state"):
        request.code_from_callback(f"{REDIRECT_URI}?code=abc&state=forged&iss={meta.issuer}")
    with pytest.raises(CallbackRejected, match="iss"):
        request.code_from_callback(f"{REDIRECT_URI}?code=abc&state={request.state}&iss=http://evil.example")
    with pytest.raises(CallbackRejected, match="iss"):  # the provider promised RFC 9207 `iss`
        request.code_from_callback(f"{REDIRECT_URI}?code=abc&state={request.state}")
    with pytest.raises(AuthorizationDenied, match="access_denied"):
        request.code_from_callback(f"{REDIRECT_URI}?error=access_denied&{good}")


async def test_a_code_is_redeemed_once_and_only_with_its_verifier(
    meta: ProviderMetadata, http: aiohttp.ClientSession
) -> None:
    request = AuthorizationRequest.new(meta, OIDC_CLIENT_ID, REDIRECT_URI, SCOPES)
    async with aiohttp.ClientSession() as browser:
        outcome = await follow_login(browser, request.url, login="bob", redirect_prefix=REDIRECT_URI)
    code = request.code_from_callback(outcome.url)
    with pytest.raises(TokenRequestRefused, match="invalid_grant") as caught:
        await oidc.exchange_code(meta, OIDC_CLIENT_ID, SECRET, code, REDIRECT_URI, "x" * 43, session=http)
    assert code not in str(caught.value) and OIDC_CLIENT_SECRET not in str(caught.value)
    tokens = await oidc.exchange_code(meta, OIDC_CLIENT_ID, SECRET, code, REDIRECT_URI, request.code_verifier,
                                      session=http)
    assert tokens.id_token and tokens.token_type == "Bearer"
    with pytest.raises(TokenRequestRefused, match="invalid_grant"):  # RFC 6749 §4.1.2: a code is single-use
        await oidc.exchange_code(meta, OIDC_CLIENT_ID, SECRET, code, REDIRECT_URI, request.code_verifier,
                                 session=http)


async def test_userinfo_for_another_subject_is_not_merged(alice: Login) -> None:
    with pytest.raises(TokenRejected, match=r"'corp': userinfo `sub` differs"):
        oidc.merged_claims(alice.id_claims, {"sub": "mallory", "email": "alice@example.com"}, provider="corp")
    # Login-context claims only ever come from the signed ID token.
    merged = oidc.merged_claims({"sub": "a", "acr": "1"}, {"sub": "a", "acr": "phr", "amr": ["mfa"], "name": "A"})
    assert merged == {"sub": "a", "acr": "1", "name": "A"}


# --- device authorization grant ---------------------------------------------------------------------------------


async def approve(url: str, login: str, *, is_abort: bool = False) -> str:
    async with aiohttp.ClientSession() as browser:
        return (await follow_login(browser, url, login=login, is_abort=is_abort)).html


async def test_device_flow_end_to_end(meta: ProviderMetadata, jwks: KeySet, http: aiohttp.ClientSession) -> None:
    device = await oidc.start_device_authorization(meta, OIDC_CLIENT_ID, SECRET, SCOPES, session=http)
    assert device.verification_uri.startswith(meta.issuer) and "-" in device.user_code
    assert device.verification_uri_complete and device.device_code not in repr(device)
    # oidc-provider sends no interval (so 5 s); poll fast here, the user approves while we poll.
    fast = dataclasses.replace(device, interval_s=0.05)
    tokens, page = await asyncio.gather(
        oidc.poll_device_token(meta, OIDC_CLIENT_ID, SECRET, fast, session=http),
        approve(device.verification_uri_complete, "bob"),
    )
    assert "Sign-in Success" in page
    assert tokens.id_token is not None
    id_claims = oidc.verify_id_token(meta, jwks, tokens.id_token, client_id=OIDC_CLIENT_ID, nonce=None)
    claims = oidc.merged_claims(id_claims, await oidc.userinfo(meta, tokens.access_token, session=http))
    assert claims["sub"] == "bob" and claims["email"] == "bob@example.com"


async def test_device_flow_refused_by_the_user(meta: ProviderMetadata, http: aiohttp.ClientSession) -> None:
    device = await oidc.start_device_authorization(meta, OIDC_CLIENT_ID, SECRET, SCOPES, session=http)
    assert device.verification_uri_complete
    await approve(device.verification_uri_complete, "alice", is_abort=True)
    with pytest.raises(AuthorizationDenied, match="denied the device login"):
        await oidc.poll_device_token(meta, OIDC_CLIENT_ID, SECRET, device, session=http)


async def test_device_code_expires(meta: ProviderMetadata, http: aiohttp.ClientSession) -> None:
    device = await oidc.start_device_authorization(meta, OIDC_SHORT_DEVICE_CLIENT_ID, SECRET, SCOPES, session=http)
    assert device.expires_in_s == 1
    await asyncio.sleep(1.1)
    # A long local deadline, so it is the provider's `expired_token` that ends the polling.
    patient = dataclasses.replace(device, expires_in_s=600, interval_s=0.05)
    with pytest.raises(DeviceCodeExpired, match="expired before the login was approved"):
        await oidc.poll_device_token(meta, OIDC_SHORT_DEVICE_CLIENT_ID, SECRET, patient, session=http)


async def test_device_polling_backs_off_on_slow_down(http: aiohttp.ClientSession) -> None:
    # oidc-provider never answers slow_down, so a scripted token endpoint stands in for this one case.
    answers = [(400, {"error": "authorization_pending"}), (400, {"error": "slow_down"}),
               (200, {"access_token": "at", "token_type": "Bearer", "expires_in": 60})]

    async def token(request: web.Request) -> web.Response:
        assert (await request.post())["grant_type"] == oidc.DEVICE_CODE_GRANT
        status, body = answers.pop(0)
        return web.json_response(body, status=status)

    app = web.Application()
    app.router.add_post("/token", token)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        url = f"http://localhost:{port}"
        meta = ProviderMetadata(name="scripted", issuer=url, authorization_endpoint=url + "/auth",
                                token_endpoint=url + "/token", jwks_uri=url + "/jwks")
        device = oidc.DeviceAuthorization(device_code="dc", user_code="ABCD-EFGH", verification_uri=url + "/device",
                                          verification_uri_complete=None, interval_s=1, expires_in_s=600)
        slept: list[float] = []

        async def sleep(seconds: float) -> None:
            slept.append(seconds)

        tokens = await oidc.poll_device_token(meta, "c", "s", device, session=http, sleep=sleep)
    finally:
        await runner.cleanup()
    assert tokens.access_token == "at" and slept == [1, 6]  # RFC 8628 §3.5: +5 s after slow_down


# --- mapping the login to a User --------------------------------------------------------------------------------


def user(name: str, *, email: str = "", identities: list[dict[str, str]] | None = None) -> User:
    spec: dict[str, Any] = {"email": email} if email else {}
    if identities is not None:
        spec["authentication"] = {"identities": identities}
    return User(name=name, email=email, manifest={"metadata": {"name": name}, "spec": spec})


USERS = {
    u.name: u
    for u in (
        user("alice-dba", email="alice@corp.example",
             identities=[{"identityProvider": PROVIDER, "identifier": "alice"}]),
        user("bob", email="Bob@Example.com"),
        user("carol", email="carol@example.com"),
        user("alice-elsewhere", identities=[{"identityProvider": "other-idp", "identifier": "alice"}]),
    )
}


async def test_alice_maps_by_her_identity_entry(alice: Login) -> None:
    assert map_identity(alice.claims, PROVIDER, "sub", USERS) == "alice-dba"
    assert map_identity(alice.claims, "other-idp", "sub", USERS) == "alice-elsewhere"


async def test_carols_unverified_email_does_not_map(
    meta: ProviderMetadata, jwks: KeySet, http: aiohttp.ClientSession
) -> None:
    carol = await browser_login(meta, jwks, http, "carol")
    assert carol.claims["email"] == "carol@example.com" and carol.claims["email_verified"] is False
    assert map_identity(carol.claims, PROVIDER, "sub", USERS) is None
    assert map_identity(carol.claims, PROVIDER, "email", USERS) is None  # not as an identifier either


def test_verified_email_maps_only_users_without_an_identity_at_that_provider() -> None:
    bob = {"sub": "bob-at-idp", "email": "bob@example.com", "email_verified": True}
    assert map_identity(bob, PROVIDER, "sub", USERS) == "bob"  # case-insensitive address
    # alice-dba is bound to sub "alice" here: another account with her verified address is not her.
    other = {"sub": "not-alice", "email": "alice@corp.example", "email_verified": True}
    assert map_identity(other, PROVIDER, "sub", USERS) is None
    twice = {**USERS, "bob2": user("bob2", email="bob@example.com")}
    with pytest.raises(AmbiguousIdentity, match="bob, bob2"):
        map_identity(bob, PROVIDER, "sub", twice)

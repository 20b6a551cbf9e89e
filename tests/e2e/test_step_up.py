"""Step-up: a Service whose only routing rule demands AAL2 refuses an SSO-only Session and accepts one that
stepped up with an authenticator code or a passkey.

The first factor is real SSO: npm oidc-provider, signed into over HTTP as `pgwarden login --aal2` would start
it (GET /login?aal=AAL2 with the CLI's loopback redirect and PKCE). The token reaches PostgreSQL through the proxy
with psycopg, as `pgwarden connect` would present it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import aiohttp
import psycopg
import pytest
from aiohttp import web
from yarl import URL

from identity.store.base import AssuranceLevel, AuthMethod
from identity.web.flow import FLOW_COOKIE, WEB_COOKIE
from tests.support.chromium import Chromium
from tests.support.peers import Peer, follow_login, start_oidc_provider
from tests.support.pgcluster import free_port
from tests.support.second_factors import (
    AuthSite,
    bind_auth_socket,
    enrol_totp,
    fetch,
    pkce_pair,
    start_auth_site,
    totp_code,
)


@pytest.fixture(scope="module")
def sso(pg: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AuthSite, Peer]]:
    sock, url = bind_auth_socket()
    peer = start_oidc_provider(port=free_port(), redirect_uris=[f"{url}/login/oidc/callback"])
    try:
        auth_site, stop = start_auth_site(pg, tmp_path_factory.mktemp("step-up"), bound=(sock, url),
                                          issuer=peer.url)
    except BaseException:
        peer.stop()
        raise
    yield auth_site, peer
    stop()
    peer.stop()


@pytest.fixture(scope="module")
def site(sso: tuple[AuthSite, Peer]) -> AuthSite:
    return sso[0]


class CliLoopback:
    """What `pgwarden login` listens on: the loopback redirect that receives the one-time code."""

    def __init__(self) -> None:
        self.received: list[dict[str, str]] = []
        self.url = ""

    async def callback(self, request: web.Request) -> web.Response:
        self.received.append(dict(request.query))
        return web.Response(text="pgwarden: login complete; return to your terminal")


@pytest.fixture(scope="module")
async def loopback() -> AsyncIterator[CliLoopback]:
    receiver = CliLoopback()
    app = web.Application()
    app.router.add_get("/callback", receiver.callback)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    receiver.url = f"http://127.0.0.1:{port}/callback"
    yield receiver
    await runner.cleanup()


async def sso_login(site: AuthSite, client: aiohttp.ClientSession, user: str, loopback: CliLoopback, *,
                    is_aal2: bool) -> tuple[str, str]:
    """Start a CLI login and sign in at oidc-provider as `user`. (where the browser stands now, PKCE verifier)."""
    verifier, challenge = pkce_pair()
    query = {"redirect_uri": loopback.url, "state": "st-" + user, "code_challenge": challenge,
             "code_challenge_method": "S256", "idp": "corp"}
    if is_aal2:
        query["aal"] = "AAL2"
    outcome = await follow_login(client, f"{site.url}/login?{urlencode(query)}", login=user,
                                 redirect_prefix=loopback.url)
    return outcome.url, verifier


async def redeem(site: AuthSite, client: aiohttp.ClientSession, redirected_to: str, verifier: str,
                 user: str) -> dict[str, Any]:
    """What the CLI does with the loopback redirect: check state, trade the code and verifier for the token."""
    query = {k: v[0] for k, v in parse_qs(urlsplit(redirected_to).query).items()}
    assert query["state"] == "st-" + user
    async with client.post(f"{site.url}/v1/auth/cli/token",
                           json={"code": query["code"], "codeVerifier": verifier}) as response:
        assert response.status == 200, await response.text()
        return dict(await response.json())


def connect_as(site: AuthSite, user: str, token: str) -> str:
    with psycopg.connect(site.dsn(user, token)) as conn:
        row = conn.execute("SELECT current_user").fetchone()
        assert row is not None
        return str(row[0])


async def test_sso_alone_is_refused_by_a_service_that_demands_aal2(site: AuthSite, loopback: CliLoopback) -> None:
    async with aiohttp.ClientSession() as client:
        redirected_to, verifier = await sso_login(site, client, "alice", loopback, is_aal2=False)
        body = await redeem(site, client, redirected_to, verifier, "alice")
    assert (body["user"], body["method"], body["aal"]) == ("alice", "oidc", "AAL1")
    with pytest.raises(psycopg.OperationalError, match='no routing rule matched user "alice"'):
        connect_as(site, "alice", body["token"])


async def test_step_up_with_an_authenticator_code(site: AuthSite, loopback: CliLoopback) -> None:
    secret, _ = await enrol_totp(site, "bob")
    async with aiohttp.ClientSession() as client:
        parked_at, verifier = await sso_login(site, client, "bob", loopback, is_aal2=True)
        # SSO is done; the login waits on the second-factor page instead of going back to the CLI.
        assert urlsplit(parked_at).path == "/login/second-factor"
        flow = parse_qs(urlsplit(parked_at).query)["flow"][0]
        status, page, _ = await fetch(client, site, f"/login/totp?{urlencode({'flow': flow})}")
        assert status == 200 and "Signed in as <b>bob</b>" in page
        async with client.post(f"{site.url}/login/totp?{urlencode({'flow': flow})}",
                               data={"code": totp_code(secret)}, allow_redirects=False) as response:
            assert response.status == 302, await response.text()
            redirected_to = response.headers["Location"]
        assert redirected_to.startswith(loopback.url)
        body = await redeem(site, client, redirected_to, verifier, "bob")
    assert (body["user"], body["method"], body["aal"]) == ("bob", "oidc", "AAL2")
    assert connect_as(site, "bob", body["token"]) == "full_access"
    session = site.verify(body["token"]).session
    assert (session.idp, session.method, session.aal) == ("corp", AuthMethod.OIDC, AssuranceLevel.AAL2)


async def test_step_up_with_a_passkey(site: AuthSite, loopback: CliLoopback,
                                      tmp_path_factory: pytest.TempPathFactory) -> None:
    browser = await Chromium.launch(tmp_path_factory.mktemp("chromium") / "profile")
    try:
        page = await browser.new_page()
        await page.add_virtual_authenticator()
        await page.set_cookie(WEB_COOKIE, site.sso_token("carol"), site.url)  # carol adds a passkey first
        await page.goto(f"{site.url}/account")
        await page.evaluate("document.querySelector('[data-webauthn=create]').click()")
        await page.wait_for("location.search.includes('done=passkey-added')")
        await page.clear_cookies()

        async with aiohttp.ClientSession() as client:
            parked_at, verifier = await sso_login(site, client, "carol", loopback, is_aal2=True)
            flow_id = client.cookie_jar.filter_cookies(URL(f"{site.url}/login"))[FLOW_COOKIE].value
            # The same person's browser: the flow cookie moves to Chromium, where the passkey lives.
            await page.set_cookie(FLOW_COOKIE, flow_id, site.url, path="/login")
            await page.goto(urljoin(site.url, parked_at))
            assert "This sign-in needs a second factor" in await page.text()
            await page.evaluate("[...document.querySelectorAll('a')].find(a => a.textContent === 'Use a passkey')"
                                ".click()")
            await page.wait_for("!!document.querySelector('[data-webauthn=get]')")
            await page.evaluate("document.querySelector('[data-webauthn=get]').click()")
            await page.wait_for(f"location.href.startsWith({loopback.url!r})")
            body = await redeem(site, client, await page.url(), verifier, "carol")
    finally:
        await browser.close()
    assert (body["user"], body["method"], body["aal"]) == ("carol", "oidc", "AAL2")
    assert connect_as(site, "carol", body["token"]) == "full_access"

"""A person signs in with GitHub (an in-repo fake GitHub Enterprise on 127.0.0.1) and gets a Session.

The numeric GitHub id maps through identities[]; otherwise only the primary, verified address from
/user/emails counts. Refusals are clear pages, and neither the client secret nor GitHub's access tokens
show up in a page or a log.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import AsyncIterator, Iterator
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit

import aiohttp
import psycopg
import pytest
from aiohttp import web
from yarl import URL

from identity.providers.github import GitHubLogin
from identity.store.base import AssuranceLevel, AuthMethod
from identity.web.flow import WEB_COOKIE, AuthServer
from tests.conftest import LeakGuard
from tests.support.fake_github import FakeGitHub, GitHubUser
from tests.support.proxy_harness import ProxyHarness, write_manifests

CLIENT_ID = "Iv1.pgwarden-test"
CLIENT_SECRET = "gh-test-secret-" + secrets.token_hex(12)

IDENTITIES = """\
kind: IdentityProvider
metadata: {{name: github}}
spec:
  displayName: Sign in with GitHub
  github:
    clientID: "{client_id}"
    clientSecret: {{fromSecret: github-client-secret}}
    enterprise: {{baseURL: "{base}"}}
---
kind: Secret
metadata: {{name: github-client-secret}}
data: {{value: "{secret}"}}
---
kind: User
metadata: {{name: dana}}
spec:
  type: HUMAN
  email: dana@example.com
  authentication:
    identities: [{{identityProvider: github, identifier: "1001"}}]
"""


@pytest.fixture(scope="module")
def github(proxy: ProxyHarness) -> Iterator[FakeGitHub]:
    fake = FakeGitHub(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    # dana: bound by id; her public profile email is someone else's address, which must not matter.
    fake.add(GitHubUser(id=1001, login="dana-gh", name="Dana", public_email="bob@example.com",
                        emails=[("dana@personal.example", True, True)]))
    fake.add(GitHubUser(id=2002, login="alice-gh", name="Alice", emails=[("alice@example.com", True, True)]))
    # Claims bob's address, but GitHub never verified it.
    fake.add(GitHubUser(id=3003, login="mallory", emails=[("bob@example.com", True, False)]))
    # Shows bob's address publicly and has it verified, but as a secondary address: only the primary counts.
    fake.add(GitHubUser(id=4004, login="eve", public_email="bob@example.com",
                        emails=[("eve@elsewhere.example", True, True), ("bob@example.com", False, True)]))
    proxy.run(fake.start())
    yield fake
    proxy.run(fake.stop())


@pytest.fixture(scope="module")
def auth_url(proxy: ProxyHarness, github: FakeGitHub, pg: Any, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[str]:
    """The auth server (GitHub login registered) on the proxy's loop, with the GitHub IdentityProvider live."""
    directory = write_manifests(tmp_path_factory.mktemp("github") / "manifests", pg)
    (directory / "github.yaml").write_text(IDENTITIES.format(client_id=CLIENT_ID, base=github.url,
                                                              secret=CLIENT_SECRET))
    proxy.reload_from(directory)
    auth = AuthServer(proxy.running.server, public_url="http://127.0.0.1")
    auth.register(GitHubLogin())
    runner: web.AppRunner = proxy.run(_serve(auth))
    try:
        yield auth.public_url
    finally:
        proxy.run(runner.cleanup())
        proxy.reload_from(proxy.manifests)


async def _serve(auth: AuthServer) -> web.AppRunner:
    app = web.Application()
    auth.add_routes(app)
    runner = web.AppRunner(app, access_log=None)  # as `pgwarden up`: callback URLs carry one-time codes
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    auth.public_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    return runner


@pytest.fixture
def guard(leak_guard: LeakGuard, github: FakeGitHub, caplog: pytest.LogCaptureFixture,
          proxy: ProxyHarness) -> Iterator[LeakGuard]:
    """After each test: the client secret and every access token GitHub issued appear in no log."""
    caplog.set_level(logging.DEBUG)
    leak_guard.secrets.add(CLIENT_SECRET)
    yield leak_guard
    leak_guard.secrets.update(github.issued_tokens)
    leak_guard.check(caplog.text, "the log")
    leak_guard.check(Path(proxy.log_path).read_text() if Path(proxy.log_path).exists() else "", "the access log")


@pytest.fixture
async def browser() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:  # unsafe: IP hosts
        yield session


async def github_link(browser: aiohttp.ClientSession, auth_url: str) -> str:
    """Open the login page as a person would and pick the "Sign in with GitHub" link."""
    async with browser.get(f"{auth_url}/login") as response:
        html = await response.text()
    found = re.search(r"<a class=button href='(/login/idp/github\?flow=[^']+)'>Sign in with GitHub</a>", html)
    assert found, html
    return urljoin(auth_url, unescape(found.group(1)))


async def sign_in(browser: aiohttp.ClientSession, auth_url: str) -> tuple[int, str]:
    """From the login page, follow every redirect (the fake GitHub authorizes at once); the final page."""
    async with browser.get(await github_link(browser, auth_url)) as response:
        return response.status, await response.text()


async def until_callback(browser: aiohttp.ClientSession, auth_url: str) -> str:
    """Follow the redirects by hand and stop at GitHub's redirect back to pgwarden: the callback URL."""
    url = await github_link(browser, auth_url)
    for _ in range(5):
        async with browser.get(url, allow_redirects=False) as response:
            assert response.status == 302, await response.text()
            url = urljoin(url, response.headers["Location"])
        if url.startswith(f"{auth_url}/login/github/callback"):
            return url
    raise AssertionError("GitHub never redirected back")


def check_page(guard: LeakGuard, github: FakeGitHub, html: str) -> None:
    """Neither the client secret nor any access token GitHub has issued so far is on the page."""
    guard.secrets.update(github.issued_tokens)
    guard.check(html, "the page")


def web_token(browser: aiohttp.ClientSession, auth_url: str) -> str | None:
    cookie = browser.cookie_jar.filter_cookies(URL(auth_url)).get(WEB_COOKIE)
    return cookie.value if cookie else None


async def test_github_id_maps_to_its_user_and_creates_a_session(
    proxy: ProxyHarness, github: FakeGitHub, auth_url: str, browser: aiohttp.ClientSession, guard: LeakGuard,
    caplog: pytest.LogCaptureFixture,
) -> None:
    github.next_user = "dana-gh"
    status, html = await sign_in(browser, auth_url)
    assert status == 200 and "Signed in as <b>dana</b>" in html, html
    assert github.issued_tokens  # so the leak checks below look for a real access token
    check_page(guard, github, html)
    token = web_token(browser, auth_url)
    assert token
    identity = proxy.run(proxy.running.server.identity.verify(token))
    session = identity.session
    assert (session.user, session.idp, session.method, session.aal) == ("dana", "github", AuthMethod.GITHUB,
                                                                        AssuranceLevel.AAL1)
    assert session.attrs["claims"] == {"sub": "1001", "login": "dana-gh", "name": "Dana",
                                       "email": "dana@personal.example", "email_verified": True}
    # The log line proves this test's log capture sees the auth server's thread (so the leak check means something).
    assert f"login: user dana via github (github, AAL1), session {session.id}" in caplog.text
    with psycopg.connect(proxy.dsn("dana", token=token)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("read_only",)


async def test_verified_primary_email_maps_with_a_form_encoded_token_answer(
    proxy: ProxyHarness, github: FakeGitHub, auth_url: str, browser: aiohttp.ClientSession, guard: LeakGuard,
) -> None:
    github.next_user, github.token_format = "alice-gh", "form"
    try:
        status, html = await sign_in(browser, auth_url)
    finally:
        github.token_format = "accept"
    assert status == 200 and "Signed in as <b>alice</b>" in html, html
    check_page(guard, github, html)
    identity = proxy.run(proxy.running.server.identity.verify(web_token(browser, auth_url) or ""))
    assert identity.user == "alice" and identity.session.method == AuthMethod.GITHUB


@pytest.mark.parametrize("login", ["mallory", "eve"])
async def test_unverified_public_or_secondary_email_does_not_map(
    proxy: ProxyHarness, github: FakeGitHub, auth_url: str, browser: aiohttp.ClientSession, guard: LeakGuard,
    login: str,
) -> None:
    before = len(proxy.run(proxy.running.server.identity.store.list_sessions("bob")))
    github.next_user = login
    status, html = await sign_in(browser, auth_url)
    assert status == 403 and "is not linked to any pgwarden user" in html, html
    check_page(guard, github, html)
    assert web_token(browser, auth_url) is None
    assert len(proxy.run(proxy.running.server.identity.store.list_sessions("bob"))) == before


async def test_declined_authorization_shows_a_clear_page(
    github: FakeGitHub, auth_url: str, browser: aiohttp.ClientSession, guard: LeakGuard,
) -> None:
    github.is_denying = True
    try:
        status, html = await sign_in(browser, auth_url)
    finally:
        github.is_denying = False
    assert status == 403 and "you did not authorize pgwarden on GitHub" in html, html
    assert web_token(browser, auth_url) is None


async def test_bad_replayed_or_foreign_callbacks_are_refused(
    github: FakeGitHub, auth_url: str, browser: aiohttp.ClientSession, guard: LeakGuard,
) -> None:
    github.next_user = "dana-gh"
    callback = await until_callback(browser, auth_url)
    parts = urlsplit(callback)
    query = dict(parse_qsl(parts.query))
    # Someone else's browser (no flow cookie) cannot finish this login with the code.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as stranger, \
            stranger.get(callback) as response:
        assert response.status == 403 and "started in another browser" in await response.text()
    # A code GitHub does not know: GitHub says bad_verification_code in an HTTP 200 answer.
    bogus = f"{auth_url}{parts.path}?{urlencode({**query, 'code': 'not-a-real-code'})}"
    async with browser.get(bogus) as response:
        html = await response.text()
        assert response.status == 403 and "GitHub did not accept the sign-in code (bad_verification_code" in html
        check_page(guard, github, html)
    # The state was used up by that attempt: the genuine callback, replayed now, is refused too.
    async with browser.get(callback) as response:
        html = await response.text()
        assert response.status == 403 and "does not belong to this sign-in" in html, html
    assert web_token(browser, auth_url) is None


async def test_a_rejected_client_secret_is_reported_without_showing_it(
    github: FakeGitHub, auth_url: str, browser: aiohttp.ClientSession, guard: LeakGuard,
) -> None:
    # The OAuth app's secret was rotated at GitHub but not yet in Git.
    github.next_user, github.client_secret = "dana-gh", "rotated-" + secrets.token_hex(8)
    try:
        status, html = await sign_in(browser, auth_url)
    finally:
        github.client_secret = CLIENT_SECRET
    assert status == 403 and "GitHub refused the client ID or secret" in html, html
    check_page(guard, github, html)
    assert web_token(browser, auth_url) is None

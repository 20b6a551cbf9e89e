"""TOTP over real HTTP: enrolment on /account, then codes (computed with pyotp, as an app would) as the second
factor of a sign-in that asked for AAL2. Wrong, replayed and guessed codes are refused; the secret is shown once
and never reaches a log or a file in plaintext."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from yarl import URL

from identity.store.base import AssuranceLevel, AuthMethod
from identity.web.account import Account
from identity.web.flow import WEB_COOKIE
from tests.support.second_factors import (
    AuthSite,
    csrf,
    enrol_totp,
    fetch,
    join_flow,
    sign_in_web,
    start_auth_site,
    totp_code,
)


@pytest.fixture(scope="module")
def site(pg: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthSite]:
    auth_site, stop = start_auth_site(pg, tmp_path_factory.mktemp("totp"))
    yield auth_site
    stop()


def wrong_code(secret: str) -> str:
    """A well-formed code that is none of the codes in the server's ±1 step window."""
    valid = {totp_code(secret, d) for d in range(-2, 3)}
    return next(c for c in (f"{(int(totp_code(secret)) + k) % 1_000_000:06d}" for k in range(1, 10)) if c not in valid)


async def second_factor(site: AuthSite, user: str) -> tuple[aiohttp.ClientSession, str]:
    """An HTTP client holding a parked AAL2 login of `user` (SSO done), and the TOTP page's path."""
    flow = site.park(user)
    client = aiohttp.ClientSession()
    join_flow(client, site, flow)
    return client, f"/login/totp?{urlencode({'flow': flow.id})}"


def aal2_sessions(site: AuthSite, user: str) -> list[Any]:
    sessions = site.run(site.proxy.running.server.identity.store.list_sessions(user))
    return [s for s in sessions if s.aal >= AssuranceLevel.AAL2]


async def test_enrol_confirm_and_verify_as_second_factor(site: AuthSite, caplog: pytest.LogCaptureFixture) -> None:
    secret, enrol_page = await enrol_totp(site, "dave")
    assert f"otpauth://totp/pgwarden:dave?secret={secret}" in enrol_page

    client, totp_path = await second_factor(site, "dave")
    async with client:
        _, choices, _ = await fetch(client, site, totp_path.replace("/login/totp", "/login/second-factor"))
        assert "Enter a code from your authenticator app" in choices and totp_path in choices.replace("&amp;", "&")
        status, page, _ = await fetch(client, site, totp_path, {"code": totp_code(secret)})
        assert status == 200 and "Signed in as <b>dave</b> (oidc, AAL2)" in page, page
        token = client.cookie_jar.filter_cookies(URL(site.url))[WEB_COOKIE].value

    session = site.verify(token).session
    # The Session records the SSO first factor and the AAL2 the code added.
    assert (session.user, session.method, session.idp, session.aal) == ("dave", AuthMethod.OIDC, "corp",
                                                                        AssuranceLevel.AAL2)
    assert session.attrs["claims"]["secondFactor"] == "totp"
    # Shown once, never again: not on the account page, not in any log, not in any file of the data directory.
    async with aiohttp.ClientSession() as client:
        sign_in_web(client, site, token)
        _, account, _ = await fetch(client, site, "/account")
    assert "An authenticator app is set up." in account and secret not in account
    assert secret not in caplog.text
    assert site.files_contain(secret) == []


async def test_wrong_and_replayed_codes_are_refused(site: AuthSite) -> None:
    secret, _ = await enrol_totp(site, "erin")
    code = totp_code(secret)
    client, totp_path = await second_factor(site, "erin")
    async with client:
        status, page, _ = await fetch(client, site, totp_path, {"code": wrong_code(secret)})
        assert status == 403 and "that code is not right" in page
        status, page, _ = await fetch(client, site, totp_path, {"code": code})
        assert status == 200 and "(oidc, AAL2)" in page

    client, totp_path = await second_factor(site, "erin")
    async with client:
        status, page, _ = await fetch(client, site, totp_path, {"code": code})  # the same code again
        assert status == 403 and "that code was already used" in page
        status, page, _ = await fetch(client, site, totp_path, {"code": totp_code(secret, -1)})  # an older one
        assert status == 403 and "already used" in page
        status, page, _ = await fetch(client, site, totp_path, {"code": "12 34"})
        assert status == 403 and "6 digits" in page
        assert WEB_COOKIE not in {c.key for c in client.cookie_jar}
    assert len(aal2_sessions(site, "erin")) == 1


async def test_guessing_ends_the_flow_and_then_locks_the_user(site: AuthSite) -> None:
    secret, _ = await enrol_totp(site, "frank")
    for _ in range(2):  # 2 flows × 5 wrong codes reach the per-user limit of 10
        client, totp_path = await second_factor(site, "frank")
        async with client:
            for attempt in range(1, 6):
                status, page, _ = await fetch(client, site, totp_path, {"code": wrong_code(secret)})
                assert status == (429 if attempt == 5 else 403), page
            assert "too many wrong codes; this sign-in has been ended" in page
            status, page, _ = await fetch(client, site, totp_path, {"code": totp_code(secret)})
            assert status == 403 and "expired or is unknown" in page
    client, totp_path = await second_factor(site, "frank")
    async with client:  # a fresh flow does not reset the budget: even the right code waits
        status, page, _ = await fetch(client, site, totp_path, {"code": totp_code(secret)})
        assert status == 429 and "too many wrong codes" in page
    assert aal2_sessions(site, "frank") == []


async def test_changing_factors_needs_aal2_once_one_exists(site: AuthSite) -> None:
    async with aiohttp.ClientSession() as client:
        _, _, path = await fetch(client, site, "/account")
        assert path == "/login?next=/account"

    await enrol_totp(site, "grace")
    async with aiohttp.ClientSession() as client:  # someone with only grace's SSO account
        token = site.sso_token("grace")
        sign_in_web(client, site, token)
        _, account, _ = await fetch(client, site, "/account")
        assert "confirm it's you" in account and "Remove authenticator app" not in account
        # The page offers no forms; even a request with a valid form token is refused.
        account_pages = next(p for p in site.auth.pages if isinstance(p, Account))
        form = {"csrf": account_pages.csrf_token(site.verify(token))}
        status, page, _ = await fetch(client, site, "/account/totp/remove", form)
        assert status == 403 and "needs a second factor" in page
        status, page, _ = await fetch(client, site, "/account/totp", form)
        assert status == 403
    assert site.run(site.proxy.running.server.identity.store.get_totp("grace")).confirmed_at is not None

    async with aiohttp.ClientSession() as client:  # grace herself, after a step-up
        sign_in_web(client, site, site.sso_token("grace", AssuranceLevel.AAL2))
        _, account, _ = await fetch(client, site, "/account")
        status, page, path = await fetch(client, site, "/account/totp/remove", {"csrf": csrf(account)})
        assert (status, path) == (200, "/account?done=totp-removed") and "No authenticator app yet" in page
        status, page, _ = await fetch(client, site, "/account/totp/remove", {"csrf": "0" * 64})
        assert status == 403 and "stale or came from another site" in page


async def test_an_unconfirmed_app_is_no_second_factor(site: AuthSite) -> None:
    async with aiohttp.ClientSession() as client:
        sign_in_web(client, site, site.sso_token("alice"))
        _, account, _ = await fetch(client, site, "/account")
        _, shown, _ = await fetch(client, site, "/account/totp", {"csrf": csrf(account)})
    match = re.search(r"<code id=totp-secret>([A-Z2-7]{32})</code>", shown)
    assert match, shown  # set up, but its first code was never entered

    client, totp_path = await second_factor(site, "alice")
    async with client:
        status, page, _ = await fetch(client, site, totp_path.replace("/login/totp", "/login/second-factor"))
        assert status == 403 and "alice has none enrolled" in page
        status, page, _ = await fetch(client, site, totp_path, {"code": totp_code(match.group(1))})
        assert status == 403 and "no authenticator app is set up" in page
    assert aal2_sessions(site, "alice") == []

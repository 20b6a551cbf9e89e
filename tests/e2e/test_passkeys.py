"""Passkeys in Debian's headless Chromium with the DevTools virtual authenticator, on http://localhost.

Registration on /account, then a discoverable sign-in that needs no user name and gives an AAL2 Session; a
passkey without user verification is refused; another user's passkey is no second factor.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlencode

import psycopg
import pytest

from identity.store.base import AssuranceLevel, AuthMethod, utc_now
from identity.web.flow import FLOW_COOKIE, WEB_COOKIE
from identity.web.passkeys import user_handle
from tests.support.chromium import Chromium, Page
from tests.support.second_factors import AuthSite, start_auth_site

ADD = "document.querySelector('[data-webauthn=create]').click()"
USE = "document.querySelector('[data-webauthn=get]').click()"


@pytest.fixture(scope="module")
def site(pg: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthSite]:
    auth_site, stop = start_auth_site(pg, tmp_path_factory.mktemp("passkeys"))
    yield auth_site
    stop()


@pytest.fixture(scope="module")
async def browser(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Chromium]:
    chromium = await Chromium.launch(tmp_path_factory.mktemp("chromium") / "profile")
    yield chromium
    await chromium.close()


async def register_passkey(site: AuthSite, page: Page, user: str) -> None:
    """Sign the browser in as `user` (an SSO session) and add a passkey on /account."""
    await page.set_cookie(WEB_COOKIE, site.sso_token(user), site.url)
    await page.goto(f"{site.url}/account")
    await page.evaluate(ADD)
    await page.wait_for("location.search.includes('done=passkey-added')")
    await page.clear_cookies()


async def passkey_sessions(site: AuthSite, user: str) -> list[Any]:
    sessions = site.run(site.proxy.running.server.identity.store.list_sessions(user))
    return [s for s in sessions if s.method == AuthMethod.PASSKEY]


async def test_register_then_sign_in_with_the_passkey_alone(site: AuthSite, browser: Chromium) -> None:
    page = await browser.new_page()
    authenticator = await page.add_virtual_authenticator()
    await page.set_cookie(WEB_COOKIE, site.sso_token("dave"), site.url)
    await page.goto(f"{site.url}/account")
    assert "No passkeys yet" in await page.text()
    await page.evaluate(ADD)
    await page.wait_for("location.search.includes('done=passkey-added')")
    assert "Passkey added" in await page.text()

    store = site.proxy.running.server.identity.store
    [stored] = site.run(store.passkeys_for("dave"))
    [on_device] = await page.credentials(authenticator)
    assert on_device["isResidentCredential"]  # discoverable: sign-in needs no user name
    assert base64.b64decode(on_device["userHandle"]) == user_handle("dave")

    # A fresh browser session: no cookie, no user name typed; the passkey alone says who this is.
    await page.clear_cookies()
    await page.goto(f"{site.url}/login")
    await page.evaluate("[...document.querySelectorAll('a')].find(a => a.textContent === 'Sign in with a passkey')"
                        ".click()")
    await page.wait_for("!!document.querySelector('[data-webauthn=get]')")
    await page.evaluate(USE)
    await page.wait_for("document.title.startsWith('Signed in')")
    assert "Signed in as dave (passkey, AAL2)" in await page.text()

    identity = site.verify((await page.cookies(site.url))[WEB_COOKIE])
    assert (identity.user, identity.session.method, identity.session.aal, identity.session.idp) == \
        ("dave", AuthMethod.PASSKEY, AssuranceLevel.AAL2, "passkey")
    [after] = site.run(store.passkeys_for("dave"))
    assert after.last_used_at is not None and after.sign_count > stored.sign_count
    # The AAL2 Session's token opens the service whose only rule demands AAL2.
    token = (await page.cookies(site.url))[WEB_COOKIE]
    with psycopg.connect(site.dsn("dave", token)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("full_access",)

    # Had a copy of this key signed in elsewhere, the server's counter would be ahead: the next use is refused.
    assert site.run(store.update_sign_count(after.credential_id, after.sign_count + 100, utc_now()))
    await page.clear_cookies()
    await page.goto(f"{site.url}/login")
    flow_id = (await page.cookies(f"{site.url}/login"))[FLOW_COOKIE]
    await page.goto(f"{site.url}/login/passkey?{urlencode({'flow': flow_id})}")
    await page.evaluate(USE)
    await page.wait_for("document.title.startsWith('Sign-in refused')")
    assert "sign count" in (await page.text()).lower()
    assert WEB_COOKIE not in await page.cookies(site.url)
    await page.close()


async def test_passkey_without_user_verification_is_refused(site: AuthSite, browser: Chromium,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    page = await browser.new_page()
    authenticator = await page.add_virtual_authenticator(is_user_verified=True)
    await register_passkey(site, page, "erin")
    await page.set_user_verified(authenticator, False)  # the PIN or fingerprint check now fails

    await page.goto(f"{site.url}/login")
    flow_id = (await page.cookies(f"{site.url}/login"))[FLOW_COOKIE]
    passkey_page = f"{site.url}/login/passkey?{urlencode({'flow': flow_id})}"
    await page.goto(passkey_page)
    await page.evaluate(USE)
    # The page asks for user verification, so the browser itself refuses the unverified authenticator.
    await page.wait_for("document.querySelector('[role=status]').textContent.includes('did not answer')")

    # A client that ignores the page's requirement gets an assertion without the UV flag: the server refuses it.
    await page.goto(passkey_page)
    await page.evaluate("""(() => { const el = document.getElementById('passkey-options');
        const options = JSON.parse(el.textContent); options.userVerification = 'discouraged';
        el.textContent = JSON.stringify(options); })()""")
    await page.evaluate(USE)
    await page.wait_for("document.title.startsWith('Sign-in refused')")
    assert "user verification" in (await page.text()).lower()
    assert "passkey sign-in of erin refused" in caplog.text
    assert WEB_COOKIE not in await page.cookies(site.url)
    assert await passkey_sessions(site, "erin") == []
    await page.close()


async def test_another_users_passkey_is_no_second_factor(site: AuthSite, browser: Chromium,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    page = await browser.new_page()
    await page.add_virtual_authenticator()
    await register_passkey(site, page, "frank")  # this device holds only frank's passkey

    flow = site.park("grace")  # grace passed SSO (AAL1); the login asked for AAL2
    await page.set_cookie(FLOW_COOKIE, flow.id, site.url, path="/login")
    await page.goto(f"{site.url}/login/passkey?{urlencode({'flow': flow.id})}")
    assert "Signed in as grace" in await page.text()
    await page.evaluate(USE)
    await page.wait_for("document.title.startsWith('Sign-in refused')")
    assert "this passkey does not belong to grace" in await page.text()
    assert "passkey of frank presented for grace" in caplog.text
    assert WEB_COOKIE not in await page.cookies(site.url)
    for user in ("grace", "frank"):
        sessions = site.run(site.proxy.running.server.identity.store.list_sessions(user))
        assert [s for s in sessions if s.aal >= AssuranceLevel.AAL2] == []
    await page.close()

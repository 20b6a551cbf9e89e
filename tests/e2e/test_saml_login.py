"""A person signs in through a SAML 2.0 IdP (npm saml-idp) and gets a Session; forged or misplaced responses don't.

The test plays the browser over HTTP: pgwarden's login page, saml-idp's login form, then the IdP's auto-posting
form. That POST goes to the ACS without pgwarden's cookies, as a real browser sends a cross-site POST with
SameSite=Lax cookies; the ACS's 303 to the finish page is followed with them.
"""

from __future__ import annotations

import base64
import re
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from html import unescape
from typing import Any
from urllib.parse import urljoin

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from identity.providers.saml import SamlLogin, clear_metadata_cache
from identity.store.base import AssuranceLevel, AuthMethod
from identity.web.flow import WEB_COOKIE, AuthServer
from tests.support.peers import Peer, _Forms, start_saml_idp
from tests.support.proxy_harness import ProxyHarness, write_manifests

OTHER_SP = "urn:pgwarden:some-other-sp"

IDENTITIES = """\
kind: IdentityProvider
metadata: {{name: corp-saml}}
spec:
  displayName: Sign in with Corp SSO
  saml: {{metadataURL: "{metadata_url}"}}
---
kind: IdentityProvider
metadata: {{name: other-saml}}
spec:
  displayName: Sign in as another SP
  saml:
    entityID: "{other_sp}"
    metadata: |
{metadata}
---
kind: User
metadata: {{name: sam}}
spec:
  type: HUMAN
  authentication:
    identities: [{{identityProvider: corp-saml, identifier: sam@corp.example}}]
---
kind: User
metadata: {{name: sid}}
spec:
  type: HUMAN
  groups: [admins]
  authentication:
    identities: [{{identityProvider: corp-saml, identifier: sid@corp.example}}]
"""


@dataclass(frozen=True, slots=True)
class Setup:
    auth_url: str
    idp: Peer


@pytest.fixture(scope="module")
def setup(proxy: ProxyHarness, pg: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """The auth server (SAML registered) on the proxy's loop, saml-idp told its ACS and audience, and the
    IdentityProviders live: corp-saml by metadataURL, other-saml by inline metadata with another entityID."""
    auth = AuthServer(proxy.running.server, public_url="http://127.0.0.1")
    auth.register(SamlLogin())
    runner: web.AppRunner = proxy.run(_serve(auth))
    try:
        idp = start_saml_idp(None, acs_url=f"{auth.public_url}/login/saml/acs",
                             audience=f"{auth.public_url}/login/saml/corp-saml/metadata")
    except BaseException:
        # A listener left on the session's proxy loop by a failed set-up would outlive every test.
        proxy.run(runner.cleanup())
        raise
    try:
        with urllib.request.urlopen(f"{idp.url}/metadata", timeout=10) as response:
            metadata = response.read().decode()
        directory = write_manifests(tmp_path_factory.mktemp("saml") / "manifests", pg)
        (directory / "saml.yaml").write_text(IDENTITIES.format(
            metadata_url=f"{idp.url}/metadata", other_sp=OTHER_SP,
            metadata="\n".join("      " + line for line in metadata.splitlines())))
        proxy.reload_from(directory)
        yield Setup(auth_url=auth.public_url, idp=idp)
    finally:
        idp.stop()
        proxy.run(runner.cleanup())
        proxy.reload_from(proxy.manifests)
        clear_metadata_cache()


async def _serve(auth: AuthServer) -> web.AppRunner:
    app = web.Application()
    auth.add_routes(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    auth.public_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    return runner


@pytest.fixture
async def browser() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:  # unsafe: IP hosts
        yield session


@dataclass(frozen=True, slots=True)
class IdpAnswer:
    """The IdP's auto-posting form: where it posts and what."""

    acs: str
    saml_response: str
    relay_state: str


async def log_in_at_idp(browser: aiohttp.ClientSession, setup: Setup, name_id: str,
                        provider: str = "corp-saml") -> IdpAnswer:
    """pgwarden's login page → the provider's link → saml-idp's form, submitted as `name_id`."""
    async with browser.get(f"{setup.auth_url}/login") as response:
        html = await response.text()
    link = re.search(rf"href='(/login/idp/{provider}\?flow=[^']+)'", html)
    assert link, html
    async with browser.get(urljoin(setup.auth_url, unescape(link.group(1)))) as response:
        assert response.status == 200 and str(response.url).startswith(setup.idp.url), await response.text()
        forms = _Forms.parse(await response.text())
    action, fields = next((a, f) for a, f in forms if a == "/signin")
    fields.update(userName=name_id, email=name_id, firstName="Test", lastName="Person")
    async with browser.post(urljoin(setup.idp.url, action), data=fields) as response:
        assert response.status == 200, await response.text()
        (acs, posted), = _Forms.parse(await response.text())
    return IdpAnswer(acs=unescape(acs), saml_response=posted["SAMLResponse"], relay_state=posted["RelayState"])


async def post_to_acs(browser: aiohttp.ClientSession, answer: IdpAnswer, saml_response: str | None = None
                      ) -> tuple[int, str]:
    """What a browser does with the IdP's form: a cross-site POST (no Lax cookies), then the same-site GET."""
    data = {"SAMLResponse": saml_response or answer.saml_response, "RelayState": answer.relay_state}
    async with aiohttp.ClientSession() as cross_site, \
            cross_site.post(answer.acs, data=data, allow_redirects=False) as response:
        if response.status != 303:
            return response.status, await response.text()
        location = urljoin(answer.acs, response.headers["Location"])
    async with browser.get(location) as response:
        return response.status, await response.text()


def web_token(browser: aiohttp.ClientSession, setup: Setup) -> str | None:
    cookie = browser.cookie_jar.filter_cookies(URL(setup.auth_url)).get(WEB_COOKIE)
    return cookie.value if cookie else None


async def test_sp_metadata_names_the_acs_and_entity_id(setup: Setup) -> None:
    async with aiohttp.ClientSession() as http, \
            http.get(f"{setup.auth_url}/login/saml/corp-saml/metadata") as response:
        xml = await response.text()
    assert response.status == 200 and response.content_type == "application/samlmetadata+xml"
    assert f'entityID="{setup.auth_url}/login/saml/corp-saml/metadata"' in xml
    assert f'Location="{setup.auth_url}/login/saml/acs"' in xml


async def test_sp_initiated_login_maps_the_name_id_and_creates_a_session(
    proxy: ProxyHarness, setup: Setup, browser: aiohttp.ClientSession,
) -> None:
    answer = await log_in_at_idp(browser, setup, "sam@corp.example")
    status, html = await post_to_acs(browser, answer)
    assert status == 200 and "Signed in as <b>sam</b>" in html, html
    token = web_token(browser, setup)
    assert token
    session = proxy.run(proxy.running.server.identity.verify(token)).session
    assert (session.user, session.idp, session.method, session.aal) == ("sam", "corp-saml", AuthMethod.SAML,
                                                                        AssuranceLevel.AAL1)
    assert session.attrs["claims"]["nameID"] == "sam@corp.example"
    assert session.attrs["claims"]["email"] == "sam@corp.example"  # an IdP attribute, kept on the Session
    # The same response again, as an attacker who captured it would post it: refused, no second Session.
    status, html = await post_to_acs(browser, answer)
    assert status == 403 and "does not answer a sign-in in progress here" in html, html


async def test_a_response_replayed_into_a_new_sign_in_is_refused(
    setup: Setup, browser: aiohttp.ClientSession,
) -> None:
    old = await log_in_at_idp(browser, setup, "sam@corp.example")
    assert (await post_to_acs(browser, old))[0] == 200
    fresh = await log_in_at_idp(browser, setup, "sam@corp.example")
    # The old assertion answered another AuthnRequest: InResponseTo gives it away.
    status, html = await post_to_acs(browser, IdpAnswer(fresh.acs, old.saml_response, fresh.relay_state))
    assert status == 403 and "it answers another sign-in (InResponseTo)" in html, html


async def test_a_tampered_assertion_is_refused(setup: Setup, browser: aiohttp.ClientSession) -> None:
    answer = await log_in_at_idp(browser, setup, "sam@corp.example")
    xml = base64.b64decode(answer.saml_response).decode()
    assert xml.count("sam@corp.example") >= 2  # NameID and the email attribute, inside the signed assertion
    forged = base64.b64encode(xml.replace("sam@corp.example", "sid@corp.example").encode()).decode()
    status, html = await post_to_acs(browser, answer, forged)
    assert status == 403 and "its signature is not valid" in html, html
    assert "sid" not in html.replace("sid@", "")  # not signed in as sid: no "Signed in as" page
    assert web_token(browser, setup) is None


async def test_a_response_for_another_audience_is_refused(setup: Setup, browser: aiohttp.ClientSession) -> None:
    # other-saml is the same IdP, but its SP entityID is one this IdP never names as the audience.
    answer = await log_in_at_idp(browser, setup, "sam@corp.example", provider="other-saml")
    status, html = await post_to_acs(browser, answer)
    assert status == 403 and "it is meant for another service provider (audience)" in html, html
    assert web_token(browser, setup) is None


async def test_an_unlinked_name_id_gets_a_clear_page(setup: Setup, browser: aiohttp.ClientSession) -> None:
    answer = await log_in_at_idp(browser, setup, "nobody@corp.example")
    status, html = await post_to_acs(browser, answer)
    assert status == 403 and "(nobody@corp.example) is not linked to any pgwarden user" in html, html


async def test_another_browser_cannot_finish_the_sign_in(setup: Setup, browser: aiohttp.ClientSession) -> None:
    answer = await log_in_at_idp(browser, setup, "sam@corp.example")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as stranger:
        status, html = await post_to_acs(stranger, answer)
    assert status == 403 and "started in another browser" in html, html

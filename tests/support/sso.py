"""A real `pgwarden up` whose people sign in through a real OpenID Provider (npm oidc-provider), and a $BROWSER
script that plays the person for `pgwarden login`. Shared by the browser, device and end-to-end login tests."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.gitops import ManifestRepo, UpProcess
from tests.support.peers import OIDC_CLIENT_ID, OIDC_CLIENT_SECRET, Peer, start_oidc_provider
from tests.support.pgcluster import free_port

# alice is linked to her corp identity; bob and carol are found by email (bob's is verified at the provider).
PEOPLE = """\
kind: Group
metadata: {name: admins}
---
kind: User
metadata: {name: alice}
spec:
  type: HUMAN
  groups: [admins]
  authentication:
    identities: [{identityProvider: corp, identifier: alice}]
---
kind: User
metadata: {name: bob}
spec: {type: HUMAN, groups: [], email: bob@example.com}
---
kind: User
metadata: {name: carol}
spec: {type: HUMAN, groups: [], email: carol@example.com}
"""

# A browser for `pgwarden login`: webbrowser runs $BROWSER with the URL; this one plays the person over HTTP.
# It signs in at the provider as $TEST_LOGIN and, when pgwarden asks for a second factor, types the code an
# authenticator app holding $TEST_TOTP_SECRET shows. It appends the final page to $TEST_BROWSER_LOG.
BROWSER_SCRIPT = """\
#!{python}
import asyncio, os, re, sys, time
from urllib.parse import parse_qs, urljoin, urlsplit
sys.path.insert(0, {repo!r})
import aiohttp
from tests.support.peers import follow_login

async def second_factor(browser, outcome, loopback):
    import pyotp
    link = re.search(r"href='(/login/totp\\?flow=[^']+)'", outcome.html).group(1)
    into = time.time() % 30  # a code about to roll over may be stale when it arrives: wait for the next
    if into > 27:
        await asyncio.sleep(30.2 - into)
    code = pyotp.TOTP(os.environ["TEST_TOTP_SECRET"]).now()
    async with browser.post(urljoin(outcome.url, link), data={{"code": code}}, allow_redirects=False) as r:
        location = r.headers.get("Location", "")
        if not location.startswith(loopback):
            raise SystemExit(f"the second factor was refused: {{r.status}} {{await r.text()}}")
        return location

async def main(url):
    loopback = parse_qs(urlsplit(url).query)["redirect_uri"][0]
    async with aiohttp.ClientSession() as browser:
        outcome = await follow_login(browser, url, login=os.environ["TEST_LOGIN"], redirect_prefix=loopback)
        if outcome.html and "/login/idp/" in outcome.html:  # the provider list: click it, as a person would
            link = re.search(r"href='(/login/idp/[^']+)'", outcome.html).group(1)
            outcome = await follow_login(browser, urljoin(url, link), login=os.environ["TEST_LOGIN"],
                                         redirect_prefix=loopback)
        target = outcome.url
        if outcome.html and "/login/totp?" in outcome.html and os.environ.get("TEST_TOTP_SECRET"):
            target = await second_factor(browser, outcome, loopback)
        async with browser.get(target) as response:
            page = await response.text()
    with open(os.environ["TEST_BROWSER_LOG"], "a") as log:
        log.write(f"{{response.status}} {{page}}\\n")

asyncio.run(main(sys.argv[1]))
"""


@dataclass
class SsoCluster:
    up: UpProcess
    peer: Peer
    base: str  # pgwarden's public URL, as browsers reach it
    cluster: str  # what `pgwarden login --cluster` is given
    data_dir: Path


def start_sso_cluster(pg: Any, base_dir: Path, *, extra_manifests: str = "",
                      up_args: tuple[str, ...] = ()) -> tuple[SsoCluster, ManifestRepo]:
    """`pgwarden up` with an oidc IdentityProvider `corp` pointing at a fresh oidc-provider peer."""
    peer_port = free_port()
    repo = ManifestRepo(base_dir, pg)
    repo.write_defaults()
    repo.write("people.yaml", PEOPLE)
    repo.write("idp.yaml", f"""\
kind: IdentityProvider
metadata: {{name: corp}}
spec:
  displayName: Sign in with Corp
  oidc:
    issuerURL: "http://localhost:{peer_port}"
    clientID: {OIDC_CLIENT_ID}
    clientSecret: {{fromSecret: corp-oidc-secret}}
    scopes: [openid, email, profile, groups]
{extra_manifests}""")
    repo.write_secret("corp-oidc-secret", OIDC_CLIENT_SECRET)
    repo.commit("people sign in through corp")
    up = UpProcess(repo.url, base_dir / "data", "--age-key-file", str(repo.key_file), "--poll-interval", "3600",
                   *up_args)
    base = f"http://localhost:{up.http_port}"
    try:
        # The provider learns pgwarden's callback at start; the IdP is only contacted at login time.
        peer = start_oidc_provider(port=peer_port, redirect_uris=[f"{base}/login/oidc/callback"])
    except BaseException:
        up.stop()
        raise
    return SsoCluster(up=up, peer=peer, base=base, cluster=f"http://127.0.0.1:{up.http_port}",
                      data_dir=base_dir / "data"), repo


def assert_no_secrets(texts: Iterable[str], secrets: Iterable[str]) -> None:
    for secret in secrets:
        for text in texts:
            assert secret not in text, "a secret value leaked into an output or log"

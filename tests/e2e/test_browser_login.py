"""People sign in through an OpenID Provider (npm oidc-provider) on pgwarden's login pages, in a browser driven
over HTTP and through `pgwarden login`, and then reach PostgreSQL with the token as the manifests route them."""

from __future__ import annotations

import html
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import psycopg
import pytest

from identity.providers.oidc.login import assurance_level
from identity.store.base import AssuranceLevel
from pgwarden.demo import DEMO_OIDC_PORT
from proxy.snapshot import IdentityProvider
from tests.support.peers import OIDC_CLIENT_SECRET, REPO, follow_login
from tests.support.pgcluster import free_port, wait_for_demo_ports
from tests.support.sso import BROWSER_SCRIPT, SsoCluster, assert_no_secrets, start_sso_cluster

PGWARDEN = [sys.executable, "-m", "pgwarden"]

@pytest.fixture(scope="module")
def sso(pg: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SsoCluster]:
    # `gone` is a public client whose issuer nobody serves: what people see when the provider is down.
    env, _ = start_sso_cluster(pg, tmp_path_factory.mktemp("sso"), extra_manifests=f"""\
---
kind: IdentityProvider
metadata: {{name: gone}}
spec:
  oidc: {{issuerURL: "http://localhost:{free_port()}", clientID: pgwarden}}
""")
    yield env
    output = env.up.stop()
    env.peer.stop()
    assert_no_secrets([output], [OIDC_CLIENT_SECRET])


async def sign_in(sso: SsoCluster, login: str) -> tuple[aiohttp.ClientSession, str]:
    """A fresh browser at /login, clicking 'Sign in with Corp' and signing in as `login`; returns pgwarden's page."""
    browser = aiohttp.ClientSession()
    try:
        async with browser.get(f"{sso.base}/login") as response:
            page = await response.text()
        assert response.status == 200 and "Sign in with Corp" in page
        link = re.search(r"href='(/login/idp/corp\?flow=[^']+)'", page)
        assert link, page
        callback = f"{sso.base}/login/oidc/callback"
        outcome = await follow_login(browser, sso.base + link.group(1), login=login, redirect_prefix=callback)
        async with browser.get(outcome.url) as response:
            return browser, await response.text()
    except BaseException:
        await browser.close()
        raise


def wait_logged(sso: SsoCluster, text: str, timeout_s: float = 10) -> None:
    """`pgwarden up` logged `text` (its output is read by a thread, so give it a moment)."""
    deadline = time.monotonic() + timeout_s
    while not any(text in line for line in sso.up.output):
        assert time.monotonic() < deadline, f"not logged: {text!r}"
        time.sleep(0.05)


def web_token(browser: aiohttp.ClientSession) -> str | None:
    cookie = next((c for c in browser.cookie_jar if c.key == "pgw_web"), None)
    return cookie.value if cookie else None


def session_claims(sso: SsoCluster, user: str) -> dict[str, Any]:
    with sqlite3.connect(f"file:{sso.data_dir / 'state.db'}?mode=ro", uri=True) as db:
        row = db.execute("SELECT attrs FROM sessions WHERE user_name = ? ORDER BY created_at DESC LIMIT 1",
                         (user,)).fetchone()
    return dict(json.loads(row[0])["claims"])


async def test_alice_signs_in_with_oidc_and_lands_as_full_access(sso: SsoCluster) -> None:
    browser, page = await sign_in(sso, "alice")
    async with browser:
        assert "Signed in as <b>alice</b> (oidc, AAL1)" in page
        token = web_token(browser)
        assert token
        async with browser.get(f"{sso.base}/v1/auth/whoami", headers={"Authorization": f"Bearer {token}"}) as r:
            who = await r.json()
    assert who["user"] == "alice" and who["method"] == "oidc" and who["identityProvider"] == "corp"
    # oidc-provider puts profile claims only in userinfo: `groups` and `email` on the session prove the merge.
    claims = session_claims(sso, "alice")
    assert claims["sub"] == "alice" and claims["groups"] == ["admins"] and claims["email"] == "alice@example.com"
    with psycopg.connect(f"host=127.0.0.1 port={sso.up.port} dbname=my-db user=alice sslmode=require "
                         f"password={token}") as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("full_access",)
    assert_no_secrets([*sso.up.output, (sso.data_dir / "access.log").read_text()], [token])


async def test_bob_is_found_by_the_verified_email_from_userinfo(sso: SsoCluster) -> None:
    browser, page = await sign_in(sso, "bob")
    async with browser:
        assert "Signed in as <b>bob</b>" in page
    assert session_claims(sso, "bob")["email_verified"] is True


async def test_an_identity_linked_to_no_user_is_refused_with_a_clear_page_and_logged(sso: SsoCluster) -> None:
    # carol's address is unverified at the provider and no User lists her identity: no email match allowed.
    browser, page = await sign_in(sso, "carol")
    async with browser:
        assert "Sign-in refused" in page and "(carol) is not linked to any pgwarden user" in page
        assert web_token(browser) is None
    wait_logged(sso, "identity 'carol' of corp maps to no User")


async def test_a_callback_carried_into_another_browser_is_refused(sso: SsoCluster) -> None:
    callback = f"{sso.base}/login/oidc/callback"
    async with aiohttp.ClientSession() as attacker, aiohttp.ClientSession() as victim:
        async with attacker.get(f"{sso.base}/login?idp=corp", allow_redirects=False) as r:
            start = r.headers["Location"]
        outcome = await follow_login(attacker, sso.base + start, login="alice", redirect_prefix=callback)
        assert outcome.url.startswith(callback + "?")
        # The victim has a login of their own in progress; the attacker's callback must not finish it.
        async with victim.get(f"{sso.base}/login?idp=corp", allow_redirects=False) as r:
            async with victim.get(sso.base + r.headers["Location"], allow_redirects=False) as to_provider:
                assert to_provider.headers["Location"].startswith(sso.peer.url)
        async with victim.get(outcome.url, allow_redirects=False) as r:
            page = await r.text()
        assert r.status == 403 and "does not match this login" in page
        assert web_token(victim) is None
        async with aiohttp.ClientSession() as stranger:  # no login in progress at all
            async with stranger.get(outcome.url, allow_redirects=False) as r:
                assert r.status == 403 and "expired or is unknown" in await r.text()


async def test_the_provider_saying_no_shows_a_clear_page(sso: SsoCluster) -> None:
    async with aiohttp.ClientSession() as browser:
        async with browser.get(f"{sso.base}/login?idp=corp", allow_redirects=False) as r:
            start = r.headers["Location"]
        async with browser.get(sso.base + start, allow_redirects=False) as r:
            authorize = parse_qs(urlsplit(r.headers["Location"]).query)
        denied = urlencode({"error": "access_denied", "error_description": "The user said no",
                            "state": authorize["state"][0], "iss": sso.peer.url})
        async with browser.get(f"{sso.base}/login/oidc/callback?{denied}") as r:
            page = await r.text()
    assert r.status == 403 and "authorization refused: access_denied (The user said no)" in page
    wait_logged(sso, "OIDC login through corp refused: identity provider 'corp': authorization refused")


async def test_an_unreachable_provider_shows_a_clear_page(sso: SsoCluster) -> None:
    async with aiohttp.ClientSession() as browser:
        async with browser.get(f"{sso.base}/login?idp=gone") as r:
            page = html.unescape(await r.text())
    assert r.status == 403 and "'gone': discovery could not be fetched" in page
    assert "check that the provider is reachable" in page
    wait_logged(sso, "OIDC login through gone cannot start")


def cli_login(cluster: str, tmp_path: Path, login: str, *args: str) -> tuple[subprocess.CompletedProcess[str], str]:
    """`pgwarden login --cluster CLUSTER` with $BROWSER signing in as `login`; the result and the browser's log."""
    browser = tmp_path / "browser.py"
    browser.write_text(BROWSER_SCRIPT.format(python=sys.executable, repo=str(REPO)))
    browser.chmod(0o700)
    log = tmp_path / "browser.log"
    env = {**os.environ, "BROWSER": str(browser), "TEST_LOGIN": login, "TEST_BROWSER_LOG": str(log),
           "XDG_CONFIG_HOME": str(tmp_path / "config")}
    out = subprocess.run([*PGWARDEN, "login", "--cluster", cluster, "--timeout", "60s", *args],
                         capture_output=True, text=True, timeout=90, env=env)
    return out, log.read_text() if log.exists() else ""


def test_pgwarden_login_opens_the_browser_and_saves_a_credential_psql_can_use(sso: SsoCluster,
                                                                              tmp_path: Path) -> None:
    out, browser_log = cli_login(sso.cluster, tmp_path, "alice")
    assert out.returncode == 0, out.stderr + browser_log
    assert re.match(r"Logged in as alice \(oidc, AAL1\) until \d{4}-\d\d-\d\d \d\d:\d\d UTC; "
                    r"next: pgwarden connect -p SERVICE:PORT", out.stdout), out.stdout
    assert "/login?redirect_uri=http%3A%2F%2F127.0.0.1%3A" in out.stderr  # the URL is printed for the user
    assert "You can close this window" in browser_log
    credentials = tmp_path / "config" / "pgwarden" / "credentials.json"
    assert credentials.stat().st_mode & 0o777 == 0o600
    saved = json.loads(credentials.read_text())
    assert saved["user"] == "alice" and saved["proxyPort"] == sso.up.port and saved["cluster"] == sso.cluster
    ca_file = Path(saved["caFile"])
    assert ca_file.read_text().startswith("-----BEGIN CERTIFICATE-----") and ca_file.stat().st_mode & 0o077 == 0
    # verify-full with the saved CA: the CLI learned the proxy's address and CA from the cluster alone.
    with psycopg.connect(host=saved["proxyHost"], port=saved["proxyPort"], dbname="my-db", user="alice",
                         sslmode="verify-full", sslrootcert=str(ca_file), password=saved["token"]) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("full_access",)
    logs = [out.stdout, out.stderr, browser_log, *sso.up.output, (sso.data_dir / "access.log").read_text()]
    assert_no_secrets(logs, [saved["token"], OIDC_CLIENT_SECRET])


def test_pgwarden_login_idp_goes_straight_to_the_provider(sso: SsoCluster, tmp_path: Path) -> None:
    out, browser_log = cli_login(sso.cluster, tmp_path, "bob", "--idp", "corp", "--ttl", "15m")
    assert out.returncode == 0, out.stderr + browser_log
    assert out.stdout.startswith("Logged in as bob (oidc, AAL1)")
    saved = json.loads((tmp_path / "config" / "pgwarden" / "credentials.json").read_text())
    with psycopg.connect(host=saved["proxyHost"], port=saved["proxyPort"], dbname="my-db", user="bob",
                         sslmode="require", password=saved["token"]) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("read_only",)


def test_pgwarden_login_reports_a_refused_sign_in_and_gives_up_clearly(sso: SsoCluster, tmp_path: Path) -> None:
    # carol's sign-in ends on the refusal page; the CLI never gets a code and says so when its wait ends.
    out, _ = cli_login(sso.cluster, tmp_path, "carol", "--idp", "corp", "--timeout", "3s")
    assert out.returncode == 1
    assert "pgwarden: error: no sign-in arrived within 3 s" in out.stderr and "HINT:" in out.stderr
    assert not (tmp_path / "config" / "pgwarden" / "credentials.json").exists()


def test_the_demo_brings_its_own_provider_so_login_can_be_tried_locally(tmp_path: Path) -> None:
    http_port = free_port()
    wait_for_demo_ports()
    proc = subprocess.Popen([*PGWARDEN, "up", "--demo", "--data-dir", str(tmp_path / "data"), "--listen",
                             "127.0.0.1:0", "--http-listen", f"127.0.0.1:{http_port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            if "Neither alice nor bob" in line:
                break
        text = "".join(output)
        provider = f"local OpenID Provider (pick alice or bob, no password) on http://localhost:{DEMO_OIDC_PORT}"
        assert provider in text, text
        assert f"pgwarden login --cluster http://127.0.0.1:{http_port}" in text
        out, browser_log = cli_login(f"http://127.0.0.1:{http_port}", tmp_path, "alice")
        assert out.returncode == 0, out.stderr + browser_log
        assert out.stdout.startswith("Logged in as alice (oidc, AAL1)")
        saved = json.loads((tmp_path / "config" / "pgwarden" / "credentials.json").read_text())
        with psycopg.connect(host="localhost", port=saved["proxyPort"], dbname="my-db", user="alice",
                             sslmode="verify-full", sslrootcert=saved["caFile"], password=saved["token"]) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("full_access",)
    finally:
        proc.terminate()
        rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, "".join(output) + rest
    assert_no_secrets(["".join(output), rest, out.stderr], [saved["token"], OIDC_CLIENT_SECRET])


def test_aal_rules_decide_the_assurance_level_from_the_provider_claims() -> None:
    rules = [{"aal": "AAL2", "condition": {"match": 'ctx.claims.amr.exists(m, m == "hwk")'}},
             {"aal": "AAL2", "condition": {"match": "ctx.claims.no_such_claim == 1 +"}},  # broken: skipped
             {"aal": "AAL1", "condition": {"matchAny": True}}]
    provider = IdentityProvider(name="corp", type="oidc", manifest={"spec": {"aalRules": rules}})
    assert assurance_level(provider, {"sub": "alice", "amr": ["pwd", "hwk"]}) == AssuranceLevel.AAL2
    assert assurance_level(provider, {"sub": "alice", "amr": ["pwd"]}) == AssuranceLevel.AAL1
    assert assurance_level(IdentityProvider(name="x", type="oidc"), {"sub": "a"}) == AssuranceLevel.AAL1


async def test_login_pages_opened_at_127_0_0_1_move_to_the_public_localhost_url(sso: SsoCluster) -> None:
    # Cookies are per host name: a flow started on 127.0.0.1 would never see the callback on localhost.
    async with aiohttp.ClientSession() as browser:
        async with browser.get(f"{sso.cluster}/login?idp=corp", allow_redirects=False) as r:
            assert r.status == 302 and r.headers["Location"] == f"{sso.base}/login?idp=corp"
        async with browser.get(f"{sso.cluster}/v1/auth/cluster") as r:  # the CLI's API stays where it is
            assert r.status == 200 and (await r.json())["publicURL"] == sso.base

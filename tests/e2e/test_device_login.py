"""`pgwarden login --device` on a machine without a browser: the person types the code at /device elsewhere,
signs in through the OpenID Provider (npm oidc-provider), and the CLI's polling gets the token (RFC 8628)."""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest

from tests.support.peers import OIDC_CLIENT_SECRET, follow_login
from tests.support.sso import SsoCluster, assert_no_secrets, start_sso_cluster

PGWARDEN = [sys.executable, "-m", "pgwarden"]


@pytest.fixture(scope="module")
def sso(pg: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SsoCluster]:
    env, _ = start_sso_cluster(pg, tmp_path_factory.mktemp("sso-device"))
    yield env
    output = env.up.stop()
    env.peer.stop()
    assert_no_secrets([output], [OIDC_CLIENT_SECRET])


class DeviceCli:
    """`pgwarden login --device` running; `user_code` is what it printed for the person."""

    def __init__(self, sso: SsoCluster, tmp_path: Path, *args: str) -> None:
        self.config = tmp_path / "config"
        env = {**os.environ, "XDG_CONFIG_HOME": str(self.config), "BROWSER": "/bin/false"}
        self.proc = subprocess.Popen([*PGWARDEN, "login", "--cluster", sso.cluster, "--device", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        assert self.proc.stderr is not None
        self.first_lines = self.proc.stderr.readline() + self.proc.stderr.readline()
        found = re.search(r"open (http\S+) on any device and enter the code ([A-Z]{4}-[A-Z]{4})", self.first_lines)
        assert found, self.first_lines
        self.verification_uri, self.user_code = found.group(1), found.group(2)

    def finish(self) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=90)
        return self.proc.returncode, out, self.first_lines + err

    def saved(self) -> dict[str, Any]:
        return dict(json.loads((self.config / "pgwarden" / "credentials.json").read_text()))


async def enter_code(browser: aiohttp.ClientSession, sso: SsoCluster, user_code: str, action: str) -> str:
    """The person opens /device?user_code=…, presses `action` (continue | deny); returns the page they see."""
    async with browser.get(f"{sso.base}/device", params={"user_code": user_code}) as r:
        form = await r.text()
    assert r.status == 200 and f"value='{user_code}'" in form  # prefilled from verification_uri_complete
    csrf = re.search(r"name=csrf value='([^']+)'", form)
    assert csrf, form
    async with browser.post(f"{sso.base}/device", data={"user_code": user_code, "csrf": csrf.group(1),
                                                         "action": action}) as r:
        return html.unescape(await r.text())


async def test_device_login_gets_a_token_once_the_person_signs_in_elsewhere(sso: SsoCluster, tmp_path: Path) -> None:
    cli = DeviceCli(sso, tmp_path)
    assert cli.verification_uri == f"{sso.base}/device"
    async with aiohttp.ClientSession() as browser:
        page = await enter_code(browser, sso, cli.user_code, "continue")
        assert f"Approving the device showing <b>{cli.user_code}</b>" in page
        link = re.search(r"href='(/login/idp/corp\?flow=[^']+)'", page)
        assert link, page
        outcome = await follow_login(browser, sso.base + link.group(1), login="bob")
    assert "Device signed in" in outcome.html and "Return to your terminal" in outcome.html
    code, out, err = cli.finish()
    assert code == 0, err
    assert out.startswith("Logged in as bob (oidc, AAL1) until "), out
    saved = cli.saved()
    assert (cli.config / "pgwarden" / "credentials.json").stat().st_mode & 0o777 == 0o600
    with psycopg.connect(host=saved["proxyHost"], port=saved["proxyPort"], dbname="my-db", user="bob",
                         sslmode="verify-full", sslrootcert=saved["caFile"], password=saved["token"]) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("read_only",)
    logs = [out, err, *sso.up.output, (sso.data_dir / "access.log").read_text()]
    assert_no_secrets(logs, [saved["token"], OIDC_CLIENT_SECRET])


async def test_a_denied_device_login_says_so(sso: SsoCluster, tmp_path: Path) -> None:
    cli = DeviceCli(sso, tmp_path)
    async with aiohttp.ClientSession() as browser:
        page = await enter_code(browser, sso, cli.user_code, "deny")
    assert "Device denied" in page
    code, out, err = cli.finish()
    assert code == 1 and f"the sign-in for code {cli.user_code} was denied at the verification page" in err
    assert not (cli.config / "pgwarden" / "credentials.json").exists()


async def test_an_expired_device_code_says_so_and_cannot_be_approved(sso: SsoCluster, tmp_path: Path) -> None:
    cli = DeviceCli(sso, tmp_path, "--timeout", "1s")
    code, out, err = cli.finish()
    assert code == 1 and f"the code {cli.user_code} expired before anyone signed in" in err
    assert "HINT:  run pgwarden login --device again" in err
    async with aiohttp.ClientSession() as browser:
        page = await enter_code(browser, sso, cli.user_code, "continue")
    assert "that code is unknown, expired or already used" in page


async def test_the_device_endpoints_speak_rfc_8628(sso: SsoCluster) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{sso.cluster}/v1/auth/device/code", json={}) as r:
            device = await r.json()
        assert r.status == 200 and device["interval"] >= 1 and device["expires_in"] == 600
        assert device["verification_uri_complete"] == f"{sso.base}/device?user_code={device['user_code']}"
        token_url = f"{sso.cluster}/v1/auth/device/token"
        async with http.post(token_url, json={"device_code": device["device_code"]}) as r:
            assert r.status == 400 and (await r.json())["error"] == "authorization_pending"
        async with http.post(token_url, json={"device_code": device["device_code"]}) as r:
            assert r.status == 400 and (await r.json())["error"] == "slow_down"  # polled faster than `interval`
        async with http.post(token_url, json={"device_code": "not-a-code"}) as r:
            assert r.status == 400 and (await r.json())["error"] == "invalid_grant"
        async with http.post(token_url, data="nonsense") as r:
            assert r.status == 400 and (await r.json())["error"] == "invalid_request"


async def test_the_verification_form_refuses_a_post_from_another_site(sso: SsoCluster) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{sso.cluster}/v1/auth/device/code", json={}) as r:
            user_code = (await r.json())["user_code"]
        # No csrf field and cookie: what a form on another site would send, trying to get its device approved.
        async with http.post(f"{sso.base}/device", data={"user_code": user_code, "action": "continue"}) as r:
            page = await r.text()
        assert r.status == 403 and "this form expired or came from another site" in page
        assert "pgw_flow" not in {c.key for c in http.cookie_jar}

"""Issue 4's flagship scenario, lived as people live it: `pgwarden login` in a browser, `pgwarden connect -p`,
then plain psql with no password, against a real `pgwarden up` and a real OpenID Provider (npm oidc-provider).

alice (group admins) writes as full_access; bob lands as read_only; an admin revoking bob's session ends his
open psql and the next one is told to log in again; prod-db wants AAL2, which alice reaches with `--aal2` and an
authenticator app (TOTP) she enrols at /account. Each person has their own HOME, so nothing is shared between
them but the cluster. Every output is checked for the tokens, the OIDC client secret and the TOTP seed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pyotp
import pytest

from pgwarden.credentials import token_expires_at
from tests.support.peers import OIDC_CLIENT_SECRET, REPO, follow_login
from tests.support.pgcluster import free_port
from tests.support.sso import BROWSER_SCRIPT, SsoCluster, assert_no_secrets, start_sso_cluster

PGWARDEN = [sys.executable, "-m", "pgwarden"]
SESSION_ENDED = "your pgwarden session has ended: run pgwarden login"

# prod-db serves AAL2 sessions only: its one rule asks for it (docs/second-factors.md).
PROD_DB = """\
---
kind: Service
metadata: {{name: prod-db}}
spec:
  mode: POSTGRES
  dynamicConfig:
    configs:
      - name: full-access
        upstream: {{url: "postgres://{host}:{port}"}}
        postgres: {{user: full_access, database: my_db, auth: {{password: {{fromSecret: full-access-password}}}}}}
    rules:
      - condition: {{match: 'ctx.session.status.authentication.info.aal == "AAL2"'}}
        configName: full-access
"""


class Outputs:
    """Everything the people and their tools printed, and every secret that must appear in none of it."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.secrets: set[str] = {OIDC_CLIENT_SECRET}


@pytest.fixture(scope="module")
def seen() -> Outputs:
    return Outputs()


@pytest.fixture(scope="module")
def sso(pg: Any, tmp_path_factory: pytest.TempPathFactory, seen: Outputs) -> Iterator[SsoCluster]:
    env, _ = start_sso_cluster(pg, tmp_path_factory.mktemp("sso-e2e"),
                               extra_manifests=PROD_DB.format(host=pg.host, port=pg.port))
    yield env
    output = env.up.stop()
    env.peer.stop()
    access_log = env.data_dir / "access.log"
    assert_no_secrets([output, access_log.read_text() if access_log.exists() else "", *seen.texts], seen.secrets)


class Agent:
    """`pgwarden connect -p SERVICE:PORT …` in the foreground, as the person runs it in a terminal."""

    def __init__(self, person: Person, *mappings: str) -> None:
        args = [a for mapping in mappings for a in ("-p", mapping)]
        self.proc = subprocess.Popen([*PGWARDEN, "connect", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=person.env)
        self.output: list[str] = []
        self.person = person
        ready = threading.Event()

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.output.append(line)
                if sum("→ localhost:" in seen for seen in self.output) == len(mappings):
                    ready.set()
            ready.set()

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        assert ready.wait(30) and self.proc.poll() is None, "agent not ready:\n" + "".join(self.output)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(15)
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.person.seen.texts.append("".join(self.output))


class Person:
    """One person at their own machine: a HOME of their own, a browser that signs in as `login`, the CLI."""

    def __init__(self, sso: SsoCluster, seen: Outputs, home: Path, login: str) -> None:
        self.sso, self.seen, self.home = sso, seen, home
        home.mkdir(parents=True, exist_ok=True)
        browser = home / "browser.py"
        browser.write_text(BROWSER_SCRIPT.format(python=sys.executable, repo=str(REPO)))
        browser.chmod(0o700)
        self.browser_log = home / "browser.log"
        # Nothing from the test runner's PG* environment helps psql: only what pgwarden sets up.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PG")} | {
            "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "BROWSER": str(browser),
            "TEST_LOGIN": login, "TEST_BROWSER_LOG": str(self.browser_log)}
        self.credentials = home / ".config" / "pgwarden" / "credentials.json"

    def pgwarden(self, *args: str) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([*PGWARDEN, *args], capture_output=True, text=True, timeout=90, env=self.env)
        self.seen.texts.append(out.stdout + out.stderr)
        return out

    def login(self, *args: str) -> subprocess.CompletedProcess[str]:
        out = self.pgwarden("login", "--cluster", self.sso.cluster, "--timeout", "60s", *args)
        if self.browser_log.exists():
            self.seen.texts.append(self.browser_log.read_text())
        assert out.returncode == 0, out.stderr + (self.browser_log.read_text() if self.browser_log.exists() else "")
        self.seen.secrets.add(self.saved()["token"])
        return out

    def saved(self) -> dict[str, Any]:
        return dict(json.loads(self.credentials.read_text()))

    def psql(self, port: int, sql: str) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(["psql", "-h", "localhost", "-p", str(port), "-X", "-At", "-v", "ON_ERROR_STOP=1",
                              "-c", sql], capture_output=True, text=True, timeout=60, env=self.env)
        self.seen.texts.append(out.stdout + out.stderr)
        return out

    def done(self) -> None:
        """Remember the token the agent may have refreshed into the file, for the leak checks at the end."""
        if self.credentials.exists():
            self.seen.secrets.add(self.saved()["token"])


@pytest.fixture
def person(sso: SsoCluster, seen: Outputs, tmp_path: Path) -> Iterator[Callable[[str], Person]]:
    people: list[Person] = []

    def make(login: str) -> Person:
        people.append(Person(sso, seen, tmp_path / login, login))
        return people[-1]

    yield make
    for p in people:
        p.done()


def test_alice_of_admins_logs_in_connects_and_writes_as_full_access(
        sso: SsoCluster, person: Callable[[str], Person]) -> None:
    alice = person("alice")
    out = alice.login()
    assert out.stdout.startswith("Logged in as alice (oidc, AAL1)"), out.stdout
    assert alice.credentials.stat().st_mode & 0o777 == 0o600
    port = free_port()
    agent = Agent(alice, f"my-db:{port}")
    try:
        assert f"my-db → localhost:{port}" in "".join(agent.output)
        wrote = alice.psql(port, "INSERT INTO items (name) VALUES ('sso-e2e alice') RETURNING current_user, name; "
                                 "DELETE FROM items WHERE name = 'sso-e2e alice'")
        assert wrote.returncode == 0, wrote.stderr
        assert wrote.stdout.splitlines()[0] == "full_access|sso-e2e alice"
    finally:
        agent.stop()


def test_bob_lands_as_read_only_and_revoking_his_session_ends_his_open_psql(
        sso: SsoCluster, person: Callable[[str], Person], pg: Any) -> None:
    bob = person("bob")
    assert bob.login().stdout.startswith("Logged in as bob (oidc, AAL1)")
    port = free_port()
    agent = Agent(bob, f"my-db:{port}")
    try:
        who = bob.psql(port, "SELECT current_user")
        assert who.returncode == 0 and who.stdout.strip() == "read_only", who.stderr
        refused = bob.psql(port, "INSERT INTO items (name) VALUES ('sso-e2e bob')")
        assert refused.returncode != 0 and "permission denied for table items" in refused.stderr, refused.stderr

        # A long-running psql session through the agent, busy in a query when the admin revokes the session.
        open_psql = subprocess.Popen(["psql", "-h", "localhost", "-p", str(port), "-X", "-At", "-c",
                                      "SELECT pg_sleep(120) -- sso-e2e"], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=bob.env)
        deadline = time.monotonic() + 20
        while "1" not in pg.psql("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                                 "AND query = 'SELECT pg_sleep(120) -- sso-e2e'"):
            assert time.monotonic() < deadline and open_psql.poll() is None, "psql never got going"
            time.sleep(0.1)
        revoked = sso.up.cli("sessions", "revoke", bob.saved()["session"])
        assert revoked.returncode == 0 and "ended 1 database connection" in revoked.stdout, revoked.stderr
        _, stderr = open_psql.communicate(timeout=30)  # ends long before pg_sleep would
        bob.seen.texts.append(stderr)
        assert open_psql.returncode != 0 and "session revoked" in stderr, stderr
        refused = bob.psql(port, "SELECT 1")
        assert refused.returncode != 0 and SESSION_ENDED in refused.stderr, refused.stderr
    finally:
        agent.stop()
    # The saved credential is dead now: each command says, in one line, what to run.
    login_again = f"run pgwarden login --cluster {sso.cluster}"
    for args in (["whoami"], ["connect", "-p", f"my-db:{free_port()}"], ["cert"]):
        out = bob.pgwarden(*args)
        assert out.returncode == 1, (args, out.stdout, out.stderr)
        assert out.stderr.count("\n") == 1 and login_again in out.stderr and "revoked" in out.stderr, (args, out)


def test_an_expired_credential_says_which_command_to_run(sso: SsoCluster, person: Callable[[str], Person]) -> None:
    bob = person("bob")
    bob.login()
    saved = bob.saved()

    # What the file holds once its token ran out with no agent refreshing it: a token of the same session
    # that lives one second.
    request = urllib.request.Request(f"{sso.cluster}/v1/auth/refresh", data=b'{"ttlSeconds": 1}', headers={
        "Authorization": f"Bearer {saved['token']}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        token = str(json.loads(response.read())["token"])
    bob.seen.secrets.add(token)
    bob.credentials.write_text(json.dumps(saved | {"token": token}))
    while time.time() <= token_expires_at(token):  # wait until it has run out
        time.sleep(0.1)
    login_again = f"run pgwarden login --cluster {sso.cluster}"
    for args in (["whoami"], ["cert"], ["connect", "-p", f"my-db:{free_port()}"]):
        out = bob.pgwarden(*args)
        assert out.returncode == 1, (args, out.stdout, out.stderr)
        assert out.stderr.count("\n") == 1 and login_again in out.stderr and "expired" in out.stderr, (args, out)


async def enrol_totp(sso: SsoCluster) -> str:
    """alice signs in at /account in her browser and sets up an authenticator app; returns its secret."""
    account = f"{sso.base}/account"
    async with aiohttp.ClientSession() as browser:
        start = f"{sso.base}/login?{urlencode({'idp': 'corp', 'next': '/account'})}"
        outcome = await follow_login(browser, start, login="alice", redirect_prefix=account)
        async with browser.get(outcome.url) as r:
            page = await r.text()
        assert "No authenticator app yet" in page, page

        def csrf(html: str) -> str:
            match = re.search(r"name=csrf value=([0-9a-f]{64})", html)
            assert match, html
            return match.group(1)

        async with browser.post(f"{account}/totp", data={"csrf": csrf(page)}) as r:
            shown = await r.text()
        match = re.search(r"<code id=totp-secret>([A-Z2-7]{32})</code>", shown)
        assert match, shown
        secret = match.group(1)
        if time.time() % 30 > 27:  # confirm with a code that is still current when it arrives
            time.sleep(30.2 - time.time() % 30)
        # The previous step's code confirms, leaving the current one for the sign-in that follows.
        previous = pyotp.TOTP(secret).generate_otp(int(time.time()) // 30 - 1)
        async with browser.post(f"{account}/totp/confirm", data={"csrf": csrf(shown), "code": previous}) as r:
            done = await r.text()
        assert "An authenticator app is set up." in done, done
        return secret


async def test_prod_db_wants_aal2_which_alice_reaches_with_login_aal2_and_totp(
        sso: SsoCluster, person: Callable[[str], Person]) -> None:
    alice = person("alice")
    alice.login()
    port = free_port()
    agent = Agent(alice, f"prod-db:{port}")
    try:
        refused = alice.psql(port, "SELECT current_user")
        assert refused.returncode != 0 and 'access to service "prod-db" denied' in refused.stderr, refused.stderr
        secret = await enrol_totp(sso)
        alice.seen.secrets.add(secret)
        alice.env["TEST_TOTP_SECRET"] = secret
        out = alice.login("--aal2")
        assert out.stdout.startswith("Logged in as alice (oidc, AAL2)"), out.stdout
        who = alice.pgwarden("whoami")
        assert who.returncode == 0 and "(oidc, AAL2)" in who.stdout, who.stdout + who.stderr
        # The running agent picks up the new login by itself.
        allowed = alice.psql(port, "SELECT current_user")
        assert allowed.returncode == 0 and allowed.stdout.strip() == "full_access", allowed.stderr
    finally:
        agent.stop()

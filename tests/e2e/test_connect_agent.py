"""`pgwarden connect -p SERVICE:PORT`: plain psql on a local port, no password, as the session's role.

A real proxy (harness) with its auth HTTP routes, the real agent as a subprocess, real psql and psycopg.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp import web

from identity.web.exchange import add_exchange_routes
from pgwarden.credentials import token_expires_at
from tests.support.gitops import ManifestRepo, UpProcess
from tests.support.peers import WORKLOAD_AUDIENCE, start_workload_issuer
from tests.support.pgcluster import free_port
from tests.support.proxy_harness import ProxyHarness

PGWARDEN = [sys.executable, "-m", "pgwarden"]
SESSION_ENDED = "your pgwarden session has ended: run pgwarden login"


@pytest.fixture(scope="module")
def cluster(proxy: ProxyHarness) -> Iterator[str]:
    """The auth HTTP routes (`pgwarden up`'s --http-listen) on the proxy's loop; yields the cluster URL."""
    async def start() -> tuple[web.AppRunner, int]:
        app = web.Application()
        add_exchange_routes(app, proxy.running.server)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner, port

    runner, port = proxy.run(start())
    yield f"http://127.0.0.1:{port}"
    proxy.run(runner.cleanup())


def save_login(proxy: ProxyHarness, cluster: str, path: Path, user: str, *, ttl_s: int = 600,
               token: str | None = None, proxy_port: int | None = None) -> tuple[Any, str]:
    """Write credentials.json as `pgwarden login` does (token, session, cluster info); returns (session, token)."""
    session, issued = proxy.issue(user, ttl_s)
    assert proxy.running.ca_path is not None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "token": token or issued, "user": user, "session": session.id, "expiresAt": session.expires_at.isoformat(),
        "cluster": cluster, "proxyHost": "127.0.0.1", "proxyPort": proxy_port or proxy.port,
        "caCertificate": proxy.running.ca_path.read_text(),
    }))
    path.chmod(0o600)
    return session, token or issued


class AgentProcess:
    """`pgwarden connect` in the foreground, as a user runs it; output kept for leak checks."""

    def __init__(self, credentials: Path, *mappings: str, extra: tuple[str, ...] = ()) -> None:
        args = [a for mapping in mappings for a in ("-p", mapping)]
        self.proc = subprocess.Popen([*PGWARDEN, "connect", *args, "--credentials", str(credentials), *extra],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.output: list[str] = []
        self.ports: dict[str, int] = {}
        ready = threading.Event()

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.output.append(line)
                match = re.match(r"(\S+) → localhost:(\d+) \(psql -h localhost -p \d+\)", line)
                if match:
                    self.ports[match.group(1)] = int(match.group(2))
                    if len(self.ports) == len(mappings):
                        ready.set()
            ready.set()

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        assert ready.wait(30) and len(self.ports) == len(mappings), "agent not ready:\n" + self.text()

    def text(self) -> str:
        return "".join(self.output)

    def wait_output(self, needle: str, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while needle not in self.text():
            assert time.monotonic() < deadline, f"{needle!r} not in agent output:\n{self.text()}"
            time.sleep(0.05)

    def stop(self) -> str:
        self.proc.terminate()
        self.proc.wait(15)
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.text()


def psql(port: int, sql: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """psql -h localhost -p PORT, with no password and nothing from the environment to help it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    return subprocess.run(["psql", "-h", "localhost", "-p", str(port), "-X", "-At", "-c", sql, *extra],
                          capture_output=True, text=True, timeout=60, env=env)


def revoke(proxy: ProxyHarness, session_id: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PGWARDEN, "sessions", "revoke", session_id, "--admin-socket",
                           str(proxy.running.admin_socket)], capture_output=True, text=True, timeout=60)


def post(url: str, token: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=json.dumps(body or {}).encode(), method="POST", headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_psql_without_password_lands_as_the_role_chosen_for_the_user(
        proxy: ProxyHarness, cluster: str, tmp_path: Path) -> None:
    alice_file, bob_file = tmp_path / "alice.json", tmp_path / "bob.json"
    _, alice_token = save_login(proxy, cluster, alice_file, "alice")
    _, bob_token = save_login(proxy, cluster, bob_file, "bob")
    alice, bob = AgentProcess(alice_file, "my-db:0", "legacy-plain:0"), AgentProcess(bob_file, "my-db:0")
    try:
        out = psql(alice.ports["my-db"], "CREATE TEMP TABLE t(x int); INSERT INTO t VALUES (1); "
                                         "SELECT current_user, count(*) FROM t")
        assert out.returncode == 0 and out.stdout.splitlines()[-1] == "full_access|1", out.stderr
        assert psql(alice.ports["legacy-plain"], "SELECT current_user").stdout.strip() == "plain_user"
        big = psql(alice.ports["my-db"], "SELECT repeat('x', 1000) FROM generate_series(1, 5000)")
        assert big.returncode == 0 and big.stdout.splitlines() == ["x" * 1000] * 5000, big.stderr
        out = psql(bob.ports["my-db"], "SELECT current_user")
        assert out.returncode == 0 and out.stdout.strip() == "read_only", out.stderr
        # psycopg with sslmode=prefer (its default) and an explicit database on the mapped service
        with psycopg.connect(f"host=localhost port={bob.ports['my-db']} dbname=my_db user=whoever") as conn:
            assert conn.execute("SELECT current_user, current_database()").fetchone() == ("read_only", "my_db")
    finally:
        outputs = alice.stop() + bob.stop()
    for secret in (alice_token, bob_token):
        assert secret not in outputs
    assert "→ localhost:" in outputs


def test_revoking_the_session_ends_the_connection_and_later_ones_get_a_clear_message(
        proxy: ProxyHarness, cluster: str, tmp_path: Path) -> None:
    credentials = tmp_path / "credentials.json"
    session, token = save_login(proxy, cluster, credentials, "bob")
    agent = AgentProcess(credentials, "my-db:0")
    try:
        port = agent.ports["my-db"]
        with psycopg.connect(f"host=localhost port={port}", autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            out = revoke(proxy, session.id)
            assert out.returncode == 0 and "ended 1 database connection" in out.stdout, out.stdout + out.stderr
            proxy.wait_for(lambda: not any(s["identitySession"] == session.id
                                           for s in proxy.running.server.session_list()))
            with pytest.raises(psycopg.Error, match="session revoked"):
                conn.execute("SELECT 1")
        refused = psql(port, "SELECT 1")
        assert refused.returncode != 0 and SESSION_ENDED in refused.stderr, refused.stderr
        assert "FATAL" in refused.stderr
        agent.wait_output(SESSION_ENDED)
        assert agent.proc.poll() is None  # still listening, ready for a new login
        # and the refresh endpoint refuses the revoked session's token too
        status, body = post(f"{cluster}/v1/auth/refresh", token)
        assert status == 401 and "revoked" in body["error"]
    finally:
        output = agent.stop()
    assert token not in output


def test_the_agent_refreshes_a_short_lived_token_before_it_expires(
        proxy: ProxyHarness, cluster: str, tmp_path: Path) -> None:
    session, long_token = proxy.issue("alice", 600)
    status, body = post(f"{cluster}/v1/auth/refresh", long_token, {"ttlSeconds": 10})
    assert status == 200 and body["session"] == session.id, body
    short = body["token"]
    assert token_expires_at(short) - time.time() <= 10
    status, capped = post(f"{cluster}/v1/auth/refresh", long_token, {"ttlSeconds": 10 ** 6})
    assert status == 200 and token_expires_at(capped["token"]) <= session.expires_at.timestamp() + 1

    credentials = tmp_path / "credentials.json"
    credentials.write_text(json.dumps({
        "token": short, "user": "alice", "session": session.id, "expiresAt": session.expires_at.isoformat(),
        "cluster": cluster, "proxyHost": "127.0.0.1", "proxyPort": proxy.port,
        "caCertificate": proxy.running.ca_path.read_text() if proxy.running.ca_path else ""}))
    credentials.chmod(0o600)
    agent = AgentProcess(credentials, "my-db:0")
    try:
        deadline = token_expires_at(short) + 1.5
        while time.time() < deadline:  # wait past the first token's expiry
            time.sleep(0.2)
        out = psql(agent.ports["my-db"], "SELECT current_user")
        assert out.returncode == 0 and out.stdout.strip() == "full_access", out.stderr + agent.text()
        saved = json.loads(credentials.read_text())
        assert saved["token"] != short and saved["session"] == session.id
        assert token_expires_at(saved["token"]) > time.time()
        assert credentials.stat().st_mode & 0o077 == 0
    finally:
        output = agent.stop()
    for secret in (short, long_token, saved["token"]):
        assert secret not in output


def test_an_unreachable_proxy_gets_a_clear_error_and_the_agent_keeps_listening(
        proxy: ProxyHarness, cluster: str, tmp_path: Path) -> None:
    credentials = tmp_path / "credentials.json"
    _, token = save_login(proxy, cluster, credentials, "bob", proxy_port=free_port())
    agent = AgentProcess(credentials, "my-db:0")
    try:
        for _ in range(2):
            out = psql(agent.ports["my-db"], "SELECT 1")
            assert out.returncode != 0 and "cannot reach the pgwarden proxy at 127.0.0.1:" in out.stderr, out.stderr
        assert agent.proc.poll() is None
        agent.wait_output("cannot reach the pgwarden proxy")
    finally:
        output = agent.stop()
    assert token not in output


def test_connect_without_a_login_says_what_to_run(tmp_path: Path) -> None:
    out = subprocess.run([*PGWARDEN, "connect", "-p", "my-db:0", "--credentials", str(tmp_path / "none.json")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "not logged in" in out.stderr and "pgwarden login" in out.stderr
    bad = subprocess.run([*PGWARDEN, "connect", "-p", "my-db"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "SERVICE:LOCALPORT" in bad.stderr


def test_after_pgwarden_login_against_pgwarden_up(pg: Any, tmp_path: Path) -> None:
    """The whole path a user takes: `pgwarden up`, `pgwarden login`, `pgwarden connect`, plain psql.

    The agent learns the proxy's address and CA from the saved login / GET /v1/auth/cluster.
    """
    issuer = start_workload_issuer(audience=WORKLOAD_AUDIENCE)
    repo = ManifestRepo(tmp_path, pg)
    repo.write_defaults()
    repo.write("workloads.yaml", f"""\
kind: IdentityProvider
metadata: {{name: github-actions}}
spec:
  oidcIdentityToken: {{issuerURL: "{issuer.url}", issuer: "{issuer.url}", audience: "{WORKLOAD_AUDIENCE}"}}
---
kind: User
metadata: {{name: ci-bot}}
spec:
  type: WORKLOAD
  authentication:
    identities: [{{identityProvider: github-actions, identifier: "repo:acme/app:ref:refs/heads/main"}}]
""")
    repo.commit("workload identity")
    up = UpProcess(repo.url, tmp_path / "data", "--age-key-file", str(repo.key_file), "--poll-interval", "3600")
    agent: AgentProcess | None = None
    try:
        data = urllib.parse.urlencode({"grant_type": "client_credentials"}).encode()
        with urllib.request.urlopen(urllib.request.Request(f"{issuer.url}/token", data=data), timeout=10) as resp:
            (tmp_path / "id.jwt").write_text(json.loads(resp.read())["access_token"])
        env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config")}
        login = subprocess.run([*PGWARDEN, "login", "--cluster", f"http://127.0.0.1:{up.http_port}", "--idp",
                                "github-actions", "--assertion-file", str(tmp_path / "id.jwt")],
                               capture_output=True, text=True, timeout=60, env=env)
        assert login.returncode == 0, login.stderr
        credentials = tmp_path / "config" / "pgwarden" / "credentials.json"
        agent = AgentProcess(credentials, "my-db:0")
        out = psql(agent.ports["my-db"], "SELECT current_user")
        assert out.returncode == 0 and out.stdout.strip() == "read_only", out.stderr + agent.text()
        token = json.loads(credentials.read_text())["token"]
    finally:
        output = agent.stop() if agent is not None else ""
        up.stop()
        issuer.stop()
    assert token not in output


def test_a_cancel_request_through_the_agent_cancels_the_query(pg: Any, proxy: ProxyHarness, cluster: str,
                                                              tmp_path: Path) -> None:
    credentials = tmp_path / "credentials.json"
    _, token = save_login(proxy, cluster, credentials, "bob")
    agent = AgentProcess(credentials, "my-db:0")
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        sleeper = subprocess.Popen(["psql", "-h", "localhost", "-p", str(agent.ports["my-db"]), "-X", "-c",
                                    "SELECT pg_sleep(30)"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, env=env)
        proxy.wait_for(lambda: "1" in pg.psql("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                                              "AND query = 'SELECT pg_sleep(30)'"), timeout_s=20)
        sleeper.send_signal(signal.SIGINT)  # psql sends a CancelRequest, to the agent's port
        _, stderr = sleeper.communicate(timeout=20)
        assert "canceling statement due to user request" in stderr, stderr
    finally:
        output = agent.stop()
    assert token not in output

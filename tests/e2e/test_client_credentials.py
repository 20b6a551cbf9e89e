"""A workload logs in with an OAuth2 client (a Credential in Git, its secret sops-encrypted) and uses psycopg:
the secret is checked as a hash, refused when wrong, disabled or expired, and shows up nowhere."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgwarden.adminclient import call
from tests.support.gitops import ManifestRepo, UpProcess

PGWARDEN = [sys.executable, "-m", "pgwarden"]
SECRET = "5f0c2d9a7b41e8c3f6a2d1b0e9c8a7f6e5d4c3b2a1f0e9d8"  # as `openssl rand -hex 24` makes them
OLD_SECRET = "0d1c2b3a4f5e6d7c8b9a0f1e2d3c4b5a6f7e8d9c0b1a2f3e"
ROTATED_SECRET = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718"

WORKLOADS = """\
kind: User
metadata: {name: ci-bot}
spec: {type: WORKLOAD}
---
kind: Credential
metadata: {name: ci-bot-deploy}
spec: {user: ci-bot, type: OAUTH2, secret: {fromSecret: ci-bot-client-secret}, sessionTTL: 15m}
---
kind: Credential
metadata: {name: ci-bot-retired}
spec: {user: ci-bot, secret: {fromSecret: ci-bot-old-secret}, isDisabled: true}
---
kind: Credential
metadata: {name: ci-bot-expired}
spec: {user: ci-bot, secret: {fromSecret: ci-bot-old-secret}, expiresAt: 2021-06-30T00:00:00Z}
---
kind: User
metadata: {name: retired-bot}
spec: {type: WORKLOAD, isDisabled: true}
---
kind: Credential
metadata: {name: retired-bot-client}
spec: {user: retired-bot, secret: {fromSecret: ci-bot-old-secret}}
"""


@pytest.fixture(scope="module")
def repo(pg: Any, tmp_path_factory: pytest.TempPathFactory) -> ManifestRepo:
    repo = ManifestRepo(tmp_path_factory.mktemp("client-credentials"), pg)
    repo.write_defaults()
    repo.write("workloads.yaml", WORKLOADS)
    repo.write_secret("ci-bot-client-secret", SECRET)
    repo.write_secret("ci-bot-old-secret", OLD_SECRET)
    repo.commit("a CI client")
    return repo


@pytest.fixture(scope="module")
def up(repo: ManifestRepo) -> Iterator[UpProcess]:
    process = UpProcess(repo.url, repo.root.parent / "data", "--age-key-file", str(repo.key_file),
                        "--poll-interval", "3600")
    yield process
    process.stop()


def login(up: UpProcess, home: Path, client_id: str, secret: str, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_CONFIG_HOME": str(home), "PGWARDEN_CLIENT_ID": client_id,
           "PGWARDEN_CLIENT_SECRET": secret}
    out = subprocess.run([*PGWARDEN, "login", "--cluster", f"http://127.0.0.1:{up.http_port}", "--client-credentials",
                          *extra], capture_output=True, text=True, timeout=60, env=env)
    up.output.append(out.stdout + out.stderr)
    return out


def token_request(up: UpProcess, form: dict[str, str], headers: dict[str, str] | None = None,
                  ) -> tuple[int, dict[str, Any], dict[str, str]]:
    request = urllib.request.Request(f"http://127.0.0.1:{up.http_port}/v1/auth/token",
                                     data=urllib.parse.urlencode(form).encode(), headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


def basic(client_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


def test_client_credentials_login_gets_a_token_that_psql_drivers_use(up: UpProcess, tmp_path: Path) -> None:
    out = login(up, tmp_path, "ci-bot-deploy", SECRET)
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    credentials = tmp_path / "pgwarden" / "credentials.json"
    assert credentials.stat().st_mode & 0o077 == 0
    assert SECRET not in credentials.read_text()
    with psycopg.connect(f"host=127.0.0.1 port={up.port} dbname=my-db user=ci-bot sslmode=require "
                         f"password={token}") as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("read_only",)
    who = subprocess.run([*PGWARDEN, "whoami", "-o", "json"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "XDG_CONFIG_HOME": str(tmp_path)})
    assert who.returncode == 0, who.stderr
    shown = json.loads(who.stdout)
    assert (shown["user"], shown["method"], shown["identityProvider"]) == ("ci-bot", "client_credentials",
                                                                           "ci-bot-deploy")
    assert "client_credentials" in up.cli("sessions", "list", "--user", "ci-bot").stdout


def test_the_secret_file_and_form_authentication_work_too(up: UpProcess, tmp_path: Path) -> None:
    secret_file = tmp_path / "client-secret"
    secret_file.write_text(SECRET + "\n")
    out = login(up, tmp_path, "ci-bot-deploy", "not-this-one", "--client-secret-file", str(secret_file))
    assert out.returncode == 0, out.stderr
    status, body, headers = token_request(up, {"grant_type": "client_credentials", "client_id": "ci-bot-deploy",
                                               "client_secret": SECRET})
    assert status == 200 and body["token_type"] == "Bearer" and body["expires_in"] == 900, body
    assert headers["Cache-Control"] == "no-store"


def test_a_wrong_secret_is_an_invalid_client(up: UpProcess, tmp_path: Path) -> None:
    out = login(up, tmp_path, "ci-bot-deploy", SECRET[:-1] + "0")
    assert out.returncode == 1 and "invalid_client" in out.stderr, out.stderr
    assert not (tmp_path / "pgwarden" / "credentials.json").exists()
    status, body, headers = token_request(up, {"grant_type": "client_credentials"}, basic("nobody", SECRET))
    assert status == 401 and body["error"] == "invalid_client"
    assert headers["WWW-Authenticate"].startswith("Basic ")


@pytest.mark.parametrize("form, headers, status, error", [
    ({"grant_type": "password"}, basic("ci-bot-deploy", SECRET), 400, "unsupported_grant_type"),
    ({}, basic("ci-bot-deploy", SECRET), 400, "invalid_request"),
    ({"grant_type": "client_credentials", "client_id": "ci-bot-deploy", "client_secret": SECRET},
     basic("ci-bot-deploy", SECRET), 400, "invalid_request"),  # two ways of authenticating at once
    ({"grant_type": "client_credentials"}, {}, 401, "invalid_client"),
])
def test_malformed_token_requests_get_oauth_errors(up: UpProcess, form: dict[str, str], headers: dict[str, str],
                                                   status: int, error: str) -> None:
    got_status, body, _ = token_request(up, form, headers)
    assert (got_status, body["error"]) == (status, error), body


@pytest.mark.parametrize("client_id, message", [
    ("ci-bot-retired", "client ci-bot-retired is disabled"),
    ("ci-bot-expired", "client ci-bot-expired expired at 2021-06-30T00:00:00+00:00"),
    ("retired-bot-client", "client retired-bot-client belongs to user retired-bot, who is disabled"),
])
def test_disabled_and_expired_credentials_are_refused(up: UpProcess, tmp_path: Path, client_id: str,
                                                      message: str) -> None:
    out = login(up, tmp_path, client_id, OLD_SECRET)
    assert out.returncode == 1 and "unauthorized_client" in out.stderr and message in out.stderr, out.stderr
    assert message in "".join(up.output)  # logged by the server, too


def test_the_secret_is_shown_nowhere(up: UpProcess, repo: ManifestRepo, tmp_path: Path) -> None:
    login(up, tmp_path, "ci-bot-deploy", SECRET)
    login(up, tmp_path, "ci-bot-deploy", SECRET + "x")
    code, state = call(up.data_dir / "admin.sock", "GET", "/v1/state")
    assert code == 200 and "ci-bot-deploy" in state["credentials"]
    status = up.cli("status", "-o", "json")
    assert json.loads(status.stdout)["objects"]["Credential"] == ["ci-bot-deploy", "ci-bot-expired", "ci-bot-retired",
                                                                  "retired-bot-client"]
    # A rotation through Git: the new secret works, the old one stops, and the diff says only "changed".
    repo.write_secret("ci-bot-client-secret", ROTATED_SECRET)
    commit = repo.commit("rotate the CI client's secret")
    diff = subprocess.run([*PGWARDEN, "diff", "--against", "HEAD~1", str(repo.root)], capture_output=True,
                          text=True, timeout=60)
    assert diff.returncode == 1 and "ci-bot-client-secret" in diff.stdout, diff.stdout + diff.stderr
    up.cli("reconcile", "--with-source")
    up.wait_applied(commit)
    assert login(up, tmp_path, "ci-bot-deploy", ROTATED_SECRET).returncode == 0
    assert login(up, tmp_path, "ci-bot-deploy", SECRET).returncode == 1
    code, state_after = call(up.data_dir / "admin.sock", "GET", "/v1/state")
    assert state_after["credentials"]["ci-bot-deploy"]["secretFingerprint"] != \
        state["credentials"]["ci-bot-deploy"]["secretFingerprint"]
    access_log = (up.data_dir / "access.log").read_text() if (up.data_dir / "access.log").exists() else ""
    seen = "\n".join([json.dumps(state), json.dumps(state_after), status.stdout, status.stderr, diff.stdout,
                      diff.stderr, json.dumps(up.status()), access_log, *up.output])
    for secret in (SECRET, OLD_SECRET, ROTATED_SECRET):
        assert secret not in seen

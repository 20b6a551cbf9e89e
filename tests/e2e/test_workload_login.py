"""A workload logs in with a platform-signed identity token and uses plain psql drivers: no DB secret."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.gitops import ManifestRepo, UpProcess
from tests.support.peers import WORKLOAD_AUDIENCE, Peer, start_workload_issuer

PGWARDEN = [sys.executable, "-m", "pgwarden"]


@pytest.fixture(scope="module")
def issuer() -> Iterator[Peer]:
    peer = start_workload_issuer(audience=WORKLOAD_AUDIENCE)
    try:
        yield peer
    finally:
        peer.stop()


def mint(issuer: Peer, **fields: str) -> str:
    data = urllib.parse.urlencode({"grant_type": "client_credentials", **fields}).encode()
    with urllib.request.urlopen(urllib.request.Request(f"{issuer.url}/token", data=data), timeout=10) as resp:
        import json

        return str(json.loads(resp.read())["access_token"])


@pytest.fixture
def up(pg: Any, tmp_path: Path, issuer: Peer) -> Iterator[UpProcess]:
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
    process = UpProcess(repo.url, tmp_path / "data", "--age-key-file", str(repo.key_file), "--poll-interval", "3600")
    yield process
    process.stop()


def login(up: UpProcess, tmp_path: Path, assertion: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "id-token.jwt"
    path.write_text(assertion)
    return subprocess.run([*PGWARDEN, "login", "--cluster", f"http://127.0.0.1:{up.http_port}", "--idp",
                           "github-actions", "--assertion-file", str(path)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config")})


def test_workload_assertion_gets_a_session_and_psql_access(up: UpProcess, issuer: Peer, tmp_path: Path) -> None:
    out = login(up, tmp_path, mint(issuer))
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    credentials = tmp_path / "config" / "pgwarden" / "credentials.json"
    assert credentials.stat().st_mode & 0o077 == 0
    with psycopg.connect(f"host=127.0.0.1 port={up.port} dbname=my-db user=ci-bot sslmode=require "
                         f"password={token}") as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("read_only",)
    listing = up.cli("sessions", "list", "--user", "ci-bot")
    assert "assertion" in listing.stdout
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config")}
    who = subprocess.run([*PGWARDEN, "whoami", "-o", "json"], capture_output=True, text=True, timeout=60, env=env)
    assert who.returncode == 0, who.stderr
    assert '"user": "ci-bot"' in who.stdout and '"method": "assertion"' in who.stdout
    with psycopg.connect(f"host=127.0.0.1 port={up.port} dbname=my-db user=ci-bot sslmode=require "
                         f"password={token}") as conn:
        out = subprocess.run([*PGWARDEN, "logout"], capture_output=True, text=True, timeout=60, env=env)
        assert out.returncode == 0 and "1 connection(s) ended" in out.stdout, out.stdout + out.stderr
        with pytest.raises(psycopg.Error, match="logged out"):
            time.sleep(0.3)
            conn.execute("SELECT 1")
    assert not credentials.exists()
    again = subprocess.run([*PGWARDEN, "whoami"], capture_output=True, text=True, timeout=60, env=env)
    assert again.returncode == 1 and "not logged in" in again.stderr


@pytest.mark.parametrize("fields, status, message", [
    ({"repository": "evil/app"}, 1, "maps to no enabled WORKLOAD User"),
    ({"aud": "someone-else"}, 1, "assertion refused"),
    ({"expires_in_s": "-600"}, 1, "assertion refused"),
])
def test_foreign_or_invalid_assertions_are_refused(
    up: UpProcess, issuer: Peer, tmp_path: Path, fields: dict[str, str], status: int, message: str
) -> None:
    out = login(up, tmp_path, mint(issuer, **fields))
    assert out.returncode == status and message in out.stderr, out.stderr

"""Workload identity tokens map to WORKLOAD Users by CEL over their claims (IdentityProvider
spec.oidcIdentityToken.users), after exact identities; tokens from oauth2-mock-server shaped like GitHub Actions'."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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

MANIFESTS = """\
kind: IdentityProvider
metadata: {{name: github-actions}}
spec:
  oidcIdentityToken:
    issuerURL: "{issuer}"
    audience: "{audience}"
    users:
      - user: ci-bot
        condition: {{match: 'claims.repository == "acme/api" && claims.ref == "refs/heads/main"'}}
      - user: retired-bot
        condition: {{match: 'claims.repository == "acme/legacy"'}}
---
kind: User
metadata: {{name: ci-bot}}
spec: {{type: WORKLOAD}}
---
kind: User
metadata: {{name: app-bot}}
spec:
  type: WORKLOAD
  authentication:
    identities: [{{identityProvider: github-actions, identifier: "repo:acme/app:ref:refs/heads/main"}}]
---
kind: User
metadata: {{name: retired-bot}}
spec: {{type: WORKLOAD, isDisabled: true}}
"""


@pytest.fixture(scope="module")
def issuer() -> Iterator[Peer]:
    peer = start_workload_issuer(audience=WORKLOAD_AUDIENCE)
    try:
        yield peer
    finally:
        peer.stop()


@pytest.fixture(scope="module")
def up(pg: Any, tmp_path_factory: pytest.TempPathFactory, issuer: Peer) -> Iterator[UpProcess]:
    repo = ManifestRepo(tmp_path_factory.mktemp("claims-mapping"), pg)
    repo.write_defaults()
    repo.write("workloads.yaml", MANIFESTS.format(issuer=issuer.url, audience=WORKLOAD_AUDIENCE))
    repo.commit("map GitHub Actions tokens by their claims")
    process = UpProcess(repo.url, repo.root.parent / "data", "--age-key-file", str(repo.key_file),
                        "--poll-interval", "3600")
    yield process
    process.stop()


def mint(issuer: Peer, **fields: str) -> str:
    data = urllib.parse.urlencode({"grant_type": "client_credentials", **fields}).encode()
    with urllib.request.urlopen(urllib.request.Request(f"{issuer.url}/token", data=data), timeout=10) as resp:
        return str(json.loads(resp.read())["access_token"])


def login(up: UpProcess, issuer: Peer, home: Path, **fields: str) -> subprocess.CompletedProcess[str]:
    path = home / "id-token.jwt"
    path.write_text(mint(issuer, **fields))
    return subprocess.run([*PGWARDEN, "login", "--cluster", f"http://127.0.0.1:{up.http_port}", "--idp",
                           "github-actions", "--assertion-file", str(path)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "XDG_CONFIG_HOME": str(home)})


def whoami(home: Path) -> str:
    out = subprocess.run([*PGWARDEN, "whoami", "-o", "json"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "XDG_CONFIG_HOME": str(home)})
    assert out.returncode == 0, out.stderr
    return str(json.loads(out.stdout)["user"])


def test_the_right_repository_and_branch_map_to_ci_bot(up: UpProcess, issuer: Peer, tmp_path: Path) -> None:
    out = login(up, issuer, tmp_path, repository="acme/api", ref="refs/heads/main")
    assert out.returncode == 0, out.stderr
    assert whoami(tmp_path) == "ci-bot"
    with psycopg.connect(f"host=127.0.0.1 port={up.port} dbname=my-db user=ci-bot sslmode=require "
                         f"password={out.stdout.strip()}") as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("read_only",)


def test_an_exact_identity_wins_over_the_rules(up: UpProcess, issuer: Peer, tmp_path: Path) -> None:
    out = login(up, issuer, tmp_path, repository="acme/app", ref="refs/heads/main")
    assert out.returncode == 0, out.stderr
    assert whoami(tmp_path) == "app-bot"


@pytest.mark.parametrize("fields, message", [
    ({"repository": "acme/api", "ref": "refs/heads/feature"},
     "identity 'repo:acme/api:ref:refs/heads/feature' of github-actions maps to no enabled WORKLOAD User"),
    ({"repository": "evil/api", "ref": "refs/heads/main"},
     "identity 'repo:evil/api:ref:refs/heads/main' of github-actions maps to no enabled WORKLOAD User"),
    ({"repository": "acme/legacy"}, "it maps to User retired-bot, which is disabled"),
])
def test_other_repositories_and_branches_are_refused(up: UpProcess, issuer: Peer, tmp_path: Path,
                                                     fields: dict[str, str], message: str) -> None:
    out = login(up, issuer, tmp_path, **fields)
    assert out.returncode == 1 and message in out.stderr, out.stderr
    assert "spec.oidcIdentityToken.users" in out.stderr  # says where the fix goes
    assert not (tmp_path / "pgwarden" / "credentials.json").exists()

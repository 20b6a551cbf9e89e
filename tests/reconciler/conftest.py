"""Fixtures for reconciler tests: the seed example from the issue, written to a temporary directory."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

SEED_SERVICE = """\
kind: Service
metadata: {name: my-db}
spec:
  mode: POSTGRES
  port: 5432
  dynamicConfig:
    configs:
      - name: read-only
        upstream: {url: postgres://my-pg:5432}
        postgres:
          {user: read_only, database: my_db, auth: {password: {fromSecret: read-only-password}}, sslMode: REQUIRE}
      - name: full-access
        upstream: {url: postgres://my-pg:5432}
        postgres: {user: full_access, database: my_db, auth: {password: {fromSecret: full-access-password}}}
    rules:
      - condition: {match: 'ctx.user.spec.groups.hasAny(["engineering", "admins"])'}
        configName: full-access
      - condition: {matchAny: true}
        configName: read-only
"""

SEED_PEOPLE = """\
kind: Group
metadata: {name: engineering}
spec: {attrs: {tier: 2}}
---
kind: Group
metadata: {name: admins}
---
kind: User
metadata: {name: alice}
spec: {type: HUMAN, email: alice@example.com, groups: [engineering], attrs: {team: payments}}
---
kind: User
metadata: {name: ci-bot}
spec: {type: WORKLOAD}
"""

# Plain-text Secrets are allowed in a local directory (development only).
RO_PASSWORD = "ro-pw-7f3a9c"
FULL_PASSWORD = "full-pw-b81d2e"
SEED_SECRETS = f"""\
kind: Secret
metadata: {{name: read-only-password}}
data: {{value: "{RO_PASSWORD}"}}
---
kind: Secret
metadata: {{name: full-access-password}}
data: {{value: "{FULL_PASSWORD}"}}
"""

WriteTree = Callable[[dict[str, str]], Path]


@pytest.fixture
def write_tree(tmp_path: Path) -> WriteTree:
    """Write {relative path: text} under a fresh root and return the root."""

    def write(files: dict[str, str]) -> Path:
        root = tmp_path / "manifests"
        root.mkdir(exist_ok=True)
        for rel, text in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text), encoding="utf-8")
        return root

    return write


@pytest.fixture
def seed_root(write_tree: WriteTree) -> Path:
    """The issue's example: one Service with two configs, Users, Groups and the two Secrets."""
    return write_tree({"db.yaml": SEED_SERVICE, "people/team.yaml": SEED_PEOPLE, "secrets.yml": SEED_SECRETS})


@pytest.fixture
def seed_secret_values() -> tuple[str, str]:
    """The plaintext of the seed's two Secrets, for leak checks."""
    return RO_PASSWORD, FULL_PASSWORD

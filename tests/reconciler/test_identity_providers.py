"""IdentityProvider manifests: built into the snapshot, references checked, one identity per User."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.snapshot_wire import from_wire, to_wire
from reconciler.directory import load_snapshot
from reconciler.errors import ManifestErrors

PROVIDERS = """\
kind: IdentityProvider
metadata: {name: corp}
spec:
  displayName: Corp SSO
  oidc: {issuerURL: "https://sso.example.com", clientID: pgwarden, clientSecret: {fromSecret: corp-oidc}}
---
kind: IdentityProvider
metadata: {name: gha}
spec:
  oidcIdentityToken: {issuerURL: "https://token.actions.githubusercontent.com",
                      issuer: "https://token.actions.githubusercontent.com", audience: pgwarden}
---
kind: Secret
metadata: {name: corp-oidc}
data: {value: "oidc-client-secret-value"}
"""

USERS = """\
kind: User
metadata: {name: alice}
spec:
  type: HUMAN
  authentication:
    identities: [{identityProvider: corp, identifier: alice@example.com}]
---
kind: User
metadata: {name: mallory}
spec:
  type: HUMAN
  authentication:
    identities: [{identityProvider: {provider}, identifier: {identifier}}]
"""


def write(root: Path, provider: str = "corp", identifier: str = "mallory@example.com") -> Path:
    (root / "providers.yaml").write_text(PROVIDERS)
    (root / "users.yaml").write_text(USERS.replace("{provider}", provider).replace("{identifier}", identifier))
    return root


def test_providers_are_built_and_survive_the_wire(tmp_path: Path) -> None:
    snapshot = load_snapshot(write(tmp_path))
    assert {n: p.type for n, p in snapshot.identity_providers.items()} == {"corp": "oidc", "gha": "oidcIdentityToken"}
    assert snapshot.identity_providers["corp"].display_name == "Corp SSO"
    wire = to_wire(snapshot, fingerprint_key=b"k", include_secrets=True)
    assert from_wire(wire).identity_providers == snapshot.identity_providers
    assert "oidc-client-secret-value" not in str(to_wire(snapshot, fingerprint_key=b"k"))


def test_identity_naming_an_unknown_provider_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ManifestErrors) as err:
        load_snapshot(write(tmp_path, provider="corpp"))
    assert "users.yaml, document 2, spec.authentication.identities[0].identityProvider" in str(err.value)
    assert "did you mean 'corp'" in str(err.value)


def test_one_identity_cannot_belong_to_two_users(tmp_path: Path) -> None:
    with pytest.raises(ManifestErrors) as err:
        load_snapshot(write(tmp_path, identifier="alice@example.com"))
    assert "already belongs to User 'alice'" in str(err.value)


def test_client_secret_must_exist(tmp_path: Path) -> None:
    write(tmp_path)
    (tmp_path / "providers.yaml").write_text(PROVIDERS.replace("fromSecret: corp-oidc", "fromSecret: nope"))
    with pytest.raises(ManifestErrors, match=r"spec\.oidc\.clientSecret\.fromSecret: no Secret named 'nope'"):
        load_snapshot(tmp_path)

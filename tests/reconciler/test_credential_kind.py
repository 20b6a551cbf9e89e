"""Credential manifests and oidcIdentityToken user mappings: checked, built with the secret hashed, never shown."""

from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path

import pytest

from proxy.snapshot import Snapshot
from proxy.snapshot_wire import from_wire, to_wire
from reconciler.apply import plan
from reconciler.diff import diff_snapshots
from reconciler.diff_report import render_text
from reconciler.directory import load_snapshot
from reconciler.errors import ManifestErrors
from reconciler.review import load_for_review
from reconciler.status import Status

CLIENT_SECRET = "Zq3s9VbPq7Xw2LmN8rT4yH6uJ1kE5oAc"  # 32 bytes

USERS = """\
kind: User
metadata: {name: ci-bot}
spec: {type: WORKLOAD}
---
kind: User
metadata: {name: alice}
spec: {type: HUMAN}
---
kind: User
metadata: {name: bob}
"""

CREDENTIAL = """\
kind: Credential
metadata: {name: ci-bot-deploy}
spec:
  user: USER
  type: OAUTH2
  secret: {fromSecret: ci-bot-client-secret}
  sessionTTL: 15m
  expiresAt: 2099-01-31T00:00:00Z
"""

PROVIDER = """\
kind: IdentityProvider
metadata: {name: github-actions}
spec:
  oidcIdentityToken:
    issuerURL: "https://token.actions.githubusercontent.com"
    audience: pgwarden
    users:
      - user: USER
        condition: {match: 'claims.repository == "acme/api" && claims.ref == "refs/heads/main"'}
      - user: ci-bot
        condition:
          all:
            of:
              - {match: 'EXPR'}
              - {not: 'claims.ref_type == "tag"'}
"""


def write(root: Path, *, user: str = "ci-bot", secret: str = CLIENT_SECRET, provider_user: str = "ci-bot",
          expression: str = 'claims.repository_owner == "acme"', credential: str = CREDENTIAL) -> Path:
    (root / "users.yaml").write_text(USERS)
    (root / "credential.yaml").write_text(credential.replace("USER", user))
    (root / "providers.yaml").write_text(PROVIDER.replace("USER", provider_user).replace("EXPR", expression))
    (root / "secret.yaml").write_text(f"kind: Secret\nmetadata: {{name: ci-bot-client-secret}}\n"
                                      f"data: {{value: {json.dumps(secret)}}}\n")
    return root


def problems(root: Path) -> list[str]:
    with pytest.raises(ManifestErrors) as caught:
        load_snapshot(root)
    return [str(e) for e in caught.value.errors]


def test_credential_is_built_with_only_a_hash_of_its_secret(tmp_path: Path) -> None:
    snapshot = load_snapshot(write(tmp_path))
    credential = snapshot.credentials["ci-bot-deploy"]
    assert credential.user == "ci-bot" and credential.session_ttl_s == 900 and not credential.is_disabled
    assert credential.secret_hash == "sha256:" + hashlib.sha256(CLIENT_SECRET.encode()).hexdigest()
    assert credential.expires_at == datetime.datetime(2099, 1, 31, tzinfo=datetime.UTC)
    assert CLIENT_SECRET not in repr(credential)

    shown = json.dumps(to_wire(snapshot, fingerprint_key=b"k"))  # what GET /v1/state serves
    assert CLIENT_SECRET not in shown and credential.secret_hash not in shown
    assert '"ci-bot-deploy"' in shown and "secretFingerprint" in shown
    assert from_wire(to_wire(snapshot, fingerprint_key=b"k", include_secrets=True)).credentials == snapshot.credentials


def test_credentials_are_in_status_and_pruned_when_gone(tmp_path: Path) -> None:
    snapshot = load_snapshot(write(tmp_path))
    status = Status()
    first = plan(snapshot, Snapshot(), [])
    status.succeeded("r1", 0.0, first.snapshot, 2, first.inventory)
    assert status.objects["Credential"] == ["ci-bot-deploy"] and "Credential/ci-bot-deploy" in first.inventory
    assert CLIENT_SECRET not in json.dumps(status.to_dict(), default=str)

    (tmp_path / "credential.yaml").unlink()
    second = plan(load_snapshot(tmp_path), first.snapshot, first.inventory)
    assert second.pruned == ["Credential/ci-bot-deploy"] and not second.snapshot.credentials


def test_rotating_the_secret_shows_in_a_live_diff_without_the_value(tmp_path: Path) -> None:
    before = load_snapshot(write(tmp_path))
    after = load_snapshot(write(tmp_path, secret="A" * 8 + CLIENT_SECRET))
    live = json.loads(json.dumps(to_wire(before, fingerprint_key=b"k")))
    text = render_text(diff_snapshots(live, after, fingerprint_key=b"k"))
    assert "Credential/ci-bot-deploy" in text or "Credential ci-bot-deploy" in text, text
    assert CLIENT_SECRET not in text and "sha256:" not in text


@pytest.mark.parametrize("user, expected", [
    ("alice", "credential.yaml, document 1, spec.user: User 'alice' is HUMAN, but a Credential may only name a "
              "WORKLOAD User"),
    ("bob", "credential.yaml, document 1, spec.user: User 'bob' is HUMAN"),
    ("ci-bott", "credential.yaml, document 1, spec.user: no User named 'ci-bott' (did you mean 'ci-bot'?)"),
])
def test_a_credential_must_name_an_existing_workload_user(tmp_path: Path, user: str, expected: str) -> None:
    found = problems(write(tmp_path, user=user))
    assert any(expected in p for p in found), found


def test_a_short_client_secret_is_refused_without_showing_it(tmp_path: Path) -> None:
    short = "only-23-bytes-of-secret"
    assert len(short) == 23
    found = problems(write(tmp_path, secret=short))
    assert len(found) == 1 and found[0].startswith("credential.yaml, document 1, spec.secret.fromSecret: the client "
                                                   "secret in Secret 'ci-bot-client-secret' is shorter than 24 bytes")
    assert short not in "\n".join(found)


def test_dangling_secret_bad_ttl_and_expiry_are_placed(tmp_path: Path) -> None:
    credential = CREDENTIAL.replace("ci-bot-client-secret", "nope").replace("15m", "13h").replace(
        "2099-01-31T00:00:00Z", '"next tuesday"')
    found = problems(write(tmp_path, credential=credential))
    assert any("spec.secret.fromSecret: no Secret named 'nope'" in p for p in found), found
    assert any("spec.sessionTTL: must be at most 12h" in p for p in found), found
    assert any("spec.expiresAt: must be an RFC 3339 timestamp" in p for p in found), found


def test_identity_token_user_mappings_are_checked(tmp_path: Path) -> None:
    found = problems(write(tmp_path, provider_user="alice", expression="claims.repository =="))
    assert any("providers.yaml, document 1, spec.oidcIdentityToken.users[0].user: User 'alice' is HUMAN" in p
               for p in found), found
    assert any("providers.yaml, document 1, spec.oidcIdentityToken.users[1].condition.all.of[0].match: invalid CEL"
               in p for p in found), found
    found = problems(write(tmp_path, expression='request.repository == "x"'))
    assert any("undeclared reference to 'request'" in p for p in found), found


def test_review_without_keys_accepts_credentials(tmp_path: Path) -> None:
    """`pgwarden validate` never sees the secret's value, so only the build can count its bytes."""
    write(tmp_path, secret="short")
    assert load_for_review(tmp_path, allow_plaintext_secrets=True)

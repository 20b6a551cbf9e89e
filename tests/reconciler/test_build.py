"""Building the Snapshot: parent merge, the default config, the seed example, wire round trip, load_snapshot."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from proxy.snapshot import (
    AuthMechanism,
    AuthorizationMode,
    Condition,
    PostgresSettings,
    RoutingRule,
    SecretValue,
    ServiceConfig,
    SSLMode,
    Upstream,
    UserType,
)
from proxy.snapshot_wire import from_wire, to_wire
from reconciler.build import build_snapshot, merged_configs
from reconciler.directory import load_snapshot
from reconciler.errors import DecryptionFailed, ManifestErrors
from reconciler.load import Document, load_directory
from reconciler.validate import validate_all

WriteTree = Callable[[dict[str, str]], Path]  # the `write_tree` fixture in conftest.py

INHERITING = """\
kind: Service
metadata: {name: pg-prod}
spec:
  port: 6432
  isDisabled: true
  attrs: {env: prod}
  config:
    upstream: {url: postgres://pg.internal}
    postgres:
      user: readonly
      database: app
      auth: {password: {fromSecret: ro}}
      sslMode: VERIFY_FULL
      tls: {ca: {file: /etc/pg/ca.pem}}
      authorization: {mode: ALL}
  dynamicConfig:
    configs:
      - name: admin
        parent: default
        postgres: {user: app_admin, auth: {password: {fromSecret: admin}}, tls: {ca: {fromSecret: ca}}}
      - name: admin-replica
        parent: admin
        upstream: {url: postgresql://replica.internal:5433}
        postgres: {database: ""}
    rules:
      - condition: {all: {of: [{match: 'ctx.user.spec.groups.hasAny(["admins"])'}, {not: 'ctx.user.spec.isDisabled'}]}}
        configName: admin
---
kind: Secret
metadata: {name: ro}
data: {value: ro-pw}
---
kind: Secret
metadata: {name: admin}
data: {value: admin-pw}
---
kind: Secret
metadata: {name: ca}
data: {value: "-----BEGIN CERTIFICATE-----"}
"""


def build(root: Path) -> Any:
    documents = load_directory(root)
    validate_all(documents)
    return build_snapshot(documents, revision="r1", source="test")


def test_seed_example_snapshot(seed_root: Path, seed_secret_values: tuple[str, str]) -> None:
    snapshot = build(seed_root)
    assert (snapshot.revision, snapshot.source) == ("r1", "test")
    service = snapshot.services["my-db"]
    assert (service.port, service.is_disabled, service.default_config) == (5432, False, None)
    assert service.configs == {
        "read-only": ServiceConfig(
            name="read-only",
            upstream=Upstream(url="postgres://my-pg:5432", host="my-pg", port=5432),
            postgres=PostgresSettings(
                user="read_only", database="my_db", password_secret="read-only-password", ssl_mode=SSLMode.REQUIRE
            ),
        ),
        "full-access": ServiceConfig(
            name="full-access",
            upstream=Upstream(url="postgres://my-pg:5432", host="my-pg", port=5432),
            postgres=PostgresSettings(
                user="full_access", database="my_db", password_secret="full-access-password", ssl_mode=SSLMode.PREFER
            ),
        ),
    }
    assert service.rules == (
        RoutingRule(
            condition=Condition(match='ctx.user.spec.groups.hasAny(["engineering", "admins"])'),
            config_name="full-access",
        ),
        RoutingRule(condition=Condition(match_any=True), config_name="read-only"),
    )
    assert service.manifest["metadata"] == {"name": "my-db"} and service.manifest["spec"]["mode"] == "POSTGRES"

    alice, bot = snapshot.users["alice"], snapshot.users["ci-bot"]
    assert (alice.type, alice.groups, alice.email, alice.is_disabled) == (
        UserType.HUMAN,
        ("engineering",),
        "alice@example.com",
        False,
    )
    assert alice.manifest["spec"]["attrs"] == {"team": "payments"}
    # Defaults are filled in so CEL sees what the proxy uses.
    assert (bot.type, bot.groups, bot.manifest["spec"]) == (UserType.WORKLOAD, (), {"type": "WORKLOAD", "groups": []})
    assert snapshot.groups["engineering"].manifest == {
        "metadata": {"name": "engineering"},
        "spec": {"attrs": {"tier": 2}},
    }
    assert snapshot.groups["admins"].manifest == {"metadata": {"name": "admins"}, "spec": {}}

    ro, full = seed_secret_values
    assert snapshot.secrets["read-only-password"].value == SecretValue(ro)
    assert snapshot.secrets["full-access-password"].value.reveal() == full
    assert ro not in repr(snapshot) and full not in repr(snapshot)


def test_parent_chains_merge_field_by_field(write_tree: WriteTree) -> None:
    service = build(write_tree({"prod.yaml": INHERITING})).services["pg-prod"]
    assert (service.port, service.is_disabled, service.default_config) == (6432, True, "default")
    assert list(service.configs) == ["default", "admin", "admin-replica"]
    default, admin, replica = service.configs.values()
    assert default.postgres == PostgresSettings(
        user="readonly",
        database="app",
        password_secret="ro",
        ssl_mode=SSLMode.VERIFY_FULL,
        ca_file="/etc/pg/ca.pem",
        authorization_mode=AuthorizationMode.ALL,
    )
    # admin: its own user, password and CA; the rest from default. The CA is replaced whole, not
    # merged: a parent's `file` next to a child's `fromSecret` would be two CAs.
    assert admin.upstream == default.upstream == Upstream(url="postgres://pg.internal", host="pg.internal", port=5432)
    assert admin.postgres == PostgresSettings(
        user="app_admin",
        database="app",
        password_secret="admin",
        ssl_mode=SSLMode.VERIFY_FULL,
        ca_secret="ca",
        authorization_mode=AuthorizationMode.ALL,
    )
    # admin-replica: a grandchild; empty database means "forward what the client asked for".
    assert replica.upstream == Upstream(url="postgresql://replica.internal:5433", host="replica.internal", port=5433)
    assert (replica.postgres.user, replica.postgres.database, replica.postgres.password_secret) == (
        "app_admin",
        "",
        "admin",
    )
    assert service.rules[0].condition.all_of is not None and service.rules[0].condition.all_of[1].not_ is not None


def test_merged_configs_leave_the_manifest_alone() -> None:
    spec = {
        "config": {"upstream": {"url": "postgres://a"}, "postgres": {"auth": {"password": {"fromSecret": "p"}}}},
        "dynamicConfig": {"configs": [{"name": "c", "parent": "default", "postgres": {"user": "u"}}]},
    }
    before = json.dumps(spec)
    merged = merged_configs(spec)
    assert merged["c"] == {
        "upstream": {"url": "postgres://a"},
        "postgres": {"auth": {"password": {"fromSecret": "p"}}, "user": "u"},
    }
    assert json.dumps(spec) == before


def test_wire_round_trip(seed_root: Path, write_tree: WriteTree) -> None:
    for root in (seed_root, write_tree({"prod.yaml": INHERITING})):
        snapshot = build(root)
        wire = json.loads(json.dumps(to_wire(snapshot, fingerprint_key=b"k", include_secrets=True)))
        assert from_wire(wire) == snapshot


def test_yaml_timestamps_become_strings_in_manifests(write_tree: WriteTree) -> None:
    root = write_tree(
        {"u.yaml": "kind: User\nmetadata: {name: u}\nspec: {attrs: {since: 2024-05-01, at: 2024-05-01T10:00:00Z}}\n"}
    )
    attrs = build(root).users["u"].manifest["spec"]["attrs"]
    assert attrs == {"since": "2024-05-01", "at": "2024-05-01T10:00:00+00:00"}


def test_build_refuses_a_still_encrypted_secret() -> None:
    doc = Document(
        file="s.yaml",
        index=1,
        line=1,
        kind="Secret",
        name="s",
        body={"kind": "Secret", "data": {"value": "ENC[...]"}, "sops": {}},
    )
    with pytest.raises(ManifestErrors) as info:
        build_snapshot([doc], revision="r", source="t")
    [error] = info.value.errors
    assert isinstance(error, DecryptionFailed) and str(error).startswith("s.yaml, document 1, sops: ")


# --- load_snapshot ----------------------------------------------------------------------------


def test_load_snapshot_revision_is_a_content_digest(seed_root: Path) -> None:
    first = load_snapshot(seed_root)
    assert first.revision.startswith("dir:") and len(first.revision) == len("dir:") + 12
    assert load_snapshot(seed_root).revision == first.revision
    assert load_snapshot(seed_root, revision="abc123").revision == "abc123"
    (seed_root / "db.yaml").write_text((seed_root / "db.yaml").read_text() + "# a comment\n")
    assert load_snapshot(seed_root).revision != first.revision
    assert first.services["my-db"].configs["read-only"].postgres.password_secret == "read-only-password"


SOPS_SECRET = """\
kind: Secret
metadata: {name: pw}
data: {value: "ENC[AES256_GCM,data:abc,iv:def,tag:ghi,type:str]"}
sops: {mac: "ENC[...]", version: 3.9.0}
"""
SERVICE_USING_PW = """\
kind: Service
metadata: {name: db}
spec: {config: {upstream: {url: postgres://pg}, postgres: {auth: {password: {fromSecret: pw}}}}}
"""


def test_encrypted_secret_without_keys_is_a_clear_error(write_tree: WriteTree) -> None:
    root = write_tree({"db.yaml": SERVICE_USING_PW, "secret.yaml": SOPS_SECRET})
    with pytest.raises(ManifestErrors) as info:
        load_snapshot(root)
    [error] = info.value.errors
    assert isinstance(error, DecryptionFailed)
    assert str(error) == "secret.yaml, document 1, sops: encrypted Secret but no decryption keys configured"


def test_decrypt_hook_sees_encrypted_documents_only(write_tree: WriteTree) -> None:
    root = write_tree({"db.yaml": SERVICE_USING_PW, "secret.yaml": SOPS_SECRET})
    seen: list[str] = []

    def decrypt(doc: Document) -> Document:
        seen.append(doc.file)
        body = {k: v for k, v in doc.body.items() if k != "sops"}
        return Document(
            file=doc.file, index=doc.index, line=doc.line, kind="", name="", body={**body, "data": {"value": "plain"}}
        )

    snapshot = load_snapshot(root, decrypt=decrypt)
    assert seen == ["secret.yaml"]
    assert snapshot.secrets["pw"].value.reveal() == "plain"


def test_decrypt_failures_are_collected(write_tree: WriteTree) -> None:
    root = write_tree({"a.yaml": SOPS_SECRET, "b.yaml": SOPS_SECRET.replace("name: pw", "name: pw2")})

    def decrypt(doc: Document) -> Document:
        if doc.file == "a.yaml":
            raise DecryptionFailed("MAC mismatch", source=doc.source("sops.mac"))
        raise RuntimeError("no age identity opened the data key")

    with pytest.raises(ManifestErrors) as info:
        load_snapshot(root, decrypt=decrypt)
    assert [str(e) for e in info.value.errors] == [
        "a.yaml, document 1, sops.mac: MAC mismatch",
        "b.yaml, document 1, sops: cannot decrypt Secret: no age identity opened the data key",
    ]


def test_auth_mechanisms_are_built_inherited_and_carried_over_the_wire(write_tree: WriteTree) -> None:
    root = write_tree({"db.yaml": """\
kind: Service
metadata: {name: db}
spec:
  config:
    upstream: {url: postgres://pg}
    postgres:
      auth: {password: {fromSecret: pw}, mechanisms: [SCRAM_SHA_256, MD5]}
      sslMode: VERIFY_FULL
  dynamicConfig:
    configs:
      - {name: child, parent: default}
      - {name: plain, upstream: {url: postgres://pg}, postgres: {auth: {password: {fromSecret: pw}}}}
---
kind: Secret
metadata: {name: pw}
data: {value: "x"}
"""})
    snapshot = load_snapshot(root)
    configs = snapshot.services["db"].configs
    assert configs["default"].postgres.auth_mechanisms == (AuthMechanism.SCRAM_SHA_256, AuthMechanism.MD5)
    assert configs["child"].postgres.auth_mechanisms == (AuthMechanism.SCRAM_SHA_256, AuthMechanism.MD5)
    assert configs["plain"].postgres.auth_mechanisms == (AuthMechanism.SCRAM_SHA_256,)  # the default
    again = from_wire(json.loads(json.dumps(to_wire(snapshot, fingerprint_key=b"k" * 32, include_secrets=True))))
    assert again.services["db"].configs == configs

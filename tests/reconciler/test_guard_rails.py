"""postgres.guardRails in manifests: built into milliseconds, merged from parents, validated with file:path errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from proxy.snapshot import NO_GUARD_RAILS, GuardRails, Snapshot
from proxy.snapshot_wire import from_wire, to_wire
from reconciler.build import build_snapshot
from reconciler.diff import diff_snapshots
from reconciler.errors import ConfigError, ManifestErrors
from reconciler.load import load_directory
from reconciler.validate import validate_all

WriteTree = Callable[[dict[str, str]], Path]

SERVICE = """\
kind: Service
metadata: {{name: db}}
spec:
  config:
    upstream: {{url: postgres://pg}}
    postgres:
      authorization: {{mode: {mode}}}
      guardRails: {rails}
  dynamicConfig:
    configs:
{configs}
"""


def service(rails: str, *, mode: str = "ALL", configs: str = "      - {name: plain, upstream: {url: postgres://pg}}"
            ) -> dict[str, str]:
    return {"db.yaml": SERVICE.format(mode=mode, rails=rails, configs=configs)}


def build(root: Path) -> Snapshot:
    documents = load_directory(root)
    validate_all(documents)
    return build_snapshot(documents, revision="r1", source="test")


def problems(root: Path) -> list[tuple[str, int | None, str, str]]:
    with pytest.raises(ManifestErrors) as info:
        validate_all(load_directory(root))
    errors: list[ConfigError] = info.value.errors
    return [(e.source.file, e.source.document, e.source.path, e.message) for e in errors]


def test_rails_are_built_in_milliseconds_and_inherited_field_by_field(write_tree: WriteTree) -> None:
    configs = ("      - {name: child, parent: default, postgres: {guardRails: {statementTimeout: 5min}}}\n"
               "      - {name: loose, parent: default, postgres: {guardRails: {readOnly: false}}}\n"
               "      - {name: plain, upstream: {url: postgres://pg}}")
    snapshot = build(write_tree(service(
        "{readOnly: true, statementTimeout: 30s, idleInTransactionTimeout: 1h, lockTimeout: 500ms, "
        "searchPath: [public, My Schema], maxConnectionsPerUser: 20}", configs=configs)))
    configs_built = snapshot.services["db"].configs
    expected = GuardRails(read_only=True, statement_timeout_ms=30_000, idle_in_transaction_timeout_ms=3_600_000,
                          lock_timeout_ms=500, search_path=("public", "My Schema"), max_connections_per_user=20)
    assert configs_built["default"].postgres.guard_rails == expected
    assert configs_built["child"].postgres.guard_rails.statement_timeout_ms == 300_000
    assert configs_built["child"].postgres.guard_rails.search_path == ("public", "My Schema")
    assert configs_built["loose"].postgres.guard_rails.read_only is False
    assert configs_built["plain"].postgres.guard_rails == NO_GUARD_RAILS
    wire = json.loads(json.dumps(to_wire(snapshot, fingerprint_key=b"k", include_secrets=True)))
    assert from_wire(wire) == snapshot
    shown = {c["name"]: c["postgres"] for c in wire["services"]["db"]["configs"]}
    assert shown["default"]["guardRails"]["statementTimeoutMs"] == 30_000
    assert "guardRails" not in shown["plain"]  # configs without rails look as they always did


def test_changed_rails_show_in_the_diff(write_tree: WriteTree) -> None:
    before = build(write_tree(service("{readOnly: true, statementTimeout: 30s}")))
    after = build(write_tree(service("{readOnly: true, statementTimeout: 5s}")))
    live = json.loads(json.dumps(to_wire(before, fingerprint_key=b"k")))
    changes = diff_snapshots(live, after, fingerprint_key=b"k")
    paths = [(f.path, f.before, f.after) for change in changes for f in change.fields]
    assert ("spec.config.postgres.guardRails.statementTimeout", "30s", "5s") in paths, paths
    # A state put by hand (same manifest, other rails) shows in the derived routing view.
    by_hand = json.loads(json.dumps(to_wire(after, fingerprint_key=b"k")))
    by_hand["services"]["db"]["configs"][0]["postgres"]["guardRails"]["statementTimeoutMs"] = 0
    changes = diff_snapshots(by_hand, after, fingerprint_key=b"k")
    paths = [(f.path, f.before, f.after) for change in changes for f in change.fields]
    assert any(p.endswith("guardRails.statementTimeoutMs") and (b, a) == (0, 5_000) for p, b, a in paths), paths


def test_rails_that_lock_a_setting_need_mode_all(write_tree: WriteTree) -> None:
    found = problems(write_tree(service("{statementTimeout: 30s}", mode="NONE")))
    assert [(f, d, p) for f, d, p, _ in found] == [("db.yaml", 1, "spec.config.postgres.guardRails")]
    assert "need postgres.authorization.mode: ALL" in found[0][3] and "set_config" in found[0][3]


def test_inherited_rails_with_a_child_in_mode_none_are_placed_at_the_child(write_tree: WriteTree) -> None:
    configs = "      - {name: child, parent: default, postgres: {authorization: {mode: NONE}}}"
    found = problems(write_tree(service("{readOnly: true}", configs=configs)))
    assert [(p, "inherited" in msg) for _, _, p, msg in found] == [
        ("spec.dynamicConfig.configs[0].postgres.authorization.mode", True)]


def test_a_connection_cap_alone_needs_no_gate(write_tree: WriteTree) -> None:
    snapshot = build(write_tree(service("{maxConnectionsPerUser: 1, readOnly: false}", mode="NONE")))
    assert snapshot.services["db"].configs["default"].postgres.guard_rails.max_connections_per_user == 1


@pytest.mark.parametrize(("rails", "path", "message"), [
    ("{statementTimeout: 30 s}", "statementTimeout", "must match"),
    ("{statementTimeout: 30}", "statementTimeout", "must be a string"),
    ("{statementTimeout: 30sec}", "statementTimeout", "must match"),
    ("{lockTimeout: 1d}", "lockTimeout", "must match"),
    ("{idleInTransactionTimeout: 0ms}", "idleInTransactionTimeout", "must be between 1ms"),
    ("{statementTimeout: 600h}", "statementTimeout", "must be between 1ms"),
    ("{statementTimeout: 5}", "statementTimeout", "must be a string"),
    ("{searchPath: []}", "searchPath", "must not be empty"),
    ("{searchPath: public}", "searchPath", "must be a list"),
    ("{searchPath: [public, public]}", "searchPath", "must not list an item twice"),
    ('{searchPath: ["a\\tb"]}', "searchPath[0]", "must match"),
    ("{searchPath: ['']}", "searchPath[0]", "must not be empty"),
    (f"{{searchPath: [{'é' * 32}]}}", "searchPath[0]", "at most 63 bytes"),
    ("{maxConnectionsPerUser: 0}", "maxConnectionsPerUser", "must be at least 1"),
    ("{readonly: true}", "readonly", "unknown field (did you mean 'readOnly'?)"),
])
def test_bad_rails_are_errors_naming_file_and_path(write_tree: WriteTree, rails: str, path: str,
                                                   message: str) -> None:
    found = problems(write_tree(service(rails)))
    assert [(f, d, p) for f, d, p, _ in found] == [("db.yaml", 1, f"spec.config.postgres.guardRails.{path}")], found
    assert message in found[0][3]

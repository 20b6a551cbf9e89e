"""Policy manifests through the reconciler: valid ones build and apply; every mistake is placed at file and path."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from proxy.routing import LiveSnapshot
from proxy.snapshot import PolicyEffect
from proxy.snapshot_wire import from_wire, to_wire
from reconciler.apply import InMemoryTarget, plan
from reconciler.directory import load_snapshot
from reconciler.errors import ConfigError, DanglingReference, DuplicateName, InvalidExpression, ManifestErrors

BASE = """\
kind: Service
metadata: {name: db}
spec:
  authorization: {policies: [read-only-juniors]}
  config:
    upstream: {url: "postgres://127.0.0.1:5432"}
    postgres: {authorization: {mode: ALL}}
---
kind: Group
metadata: {name: juniors}
spec:
  authorization:
    inlinePolicies:
      - name: juniors-inline
        spec:
          rules:
            - {name: connect, effect: ALLOW, condition: {match: 'has(ctx.request.postgres.connect)'}}
---
kind: User
metadata: {name: alice}
spec: {groups: [juniors], authorization: {policies: [read-only-juniors]}}
"""

POLICY = """\
kind: Policy
metadata: {name: read-only-juniors}
spec:
  attrs: {since: 2026-01-01}
  rules:
    - name: no-writes
      effect: DENY
      priority: -1
      condition: {match: '!ctx.request.postgres.statement.readOnly'}
    - name: reads
      effect: ALLOW
      condition: {matchAny: true}
"""


def write(root: Path, **files: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / f"{name}.yaml").write_text(textwrap.dedent(text), encoding="utf-8")
    return root


def problems(root: Path) -> list[ConfigError]:
    with pytest.raises(ManifestErrors) as info:
        load_snapshot(root)
    return list(info.value.errors)


def test_policy_builds_round_trips_and_decides(tmp_path: Path) -> None:
    snapshot = load_snapshot(write(tmp_path, base=BASE, policy=POLICY))
    policy = snapshot.policies["read-only-juniors"]
    assert [(r.name, r.effect, r.priority) for r in policy.rules] == [
        ("no-writes", PolicyEffect.DENY, -1), ("reads", PolicyEffect.ALLOW, 0)]
    assert policy.attrs == {"since": "2026-01-01"}  # YAML dates become strings, as CEL sees them
    assert snapshot.groups["juniors"].authorization.inline_policies[0].name == "juniors-inline"
    assert from_wire(to_wire(snapshot, fingerprint_key=b"k", include_secrets=True)) == snapshot
    live = LiveSnapshot(snapshot, generation=2)
    sp = live.connection_policy(live.user("alice"), live.service("db"), None)
    assert sp is not None and not sp.decide_query("DELETE FROM t").allowed and sp.decide_query("TABLE t").allowed


def test_policies_are_an_inventory_kind(tmp_path: Path) -> None:
    snapshot = load_snapshot(write(tmp_path, base=BASE, policy=POLICY))
    the_plan = plan(snapshot, InMemoryTarget().current(), [])
    assert "Policy/read-only-juniors" in the_plan.inventory
    assert "read-only-juniors" in the_plan.snapshot.policies


def test_bad_cel_in_a_policy_rule_is_placed(tmp_path: Path) -> None:
    bad = POLICY.replace("'!ctx.request.postgres.statement.readOnly'", "'ctx.request.postgres.statement.kinds.hasAny('")
    [error] = problems(write(tmp_path, base=BASE, policy=bad))
    assert isinstance(error, InvalidExpression)
    assert (error.source.file, error.source.document, error.source.path) == ("policy.yaml", 1,
                                                                             "spec.rules[0].condition.match")
    assert "invalid CEL" in error.message


def test_bad_cel_in_an_inline_policy_is_placed(tmp_path: Path) -> None:
    bad = BASE.replace("'has(ctx.request.postgres.connect)'", "'unknownVar == 1'")
    [error] = problems(write(tmp_path, base=bad, policy=POLICY))
    assert isinstance(error, InvalidExpression)
    assert (error.source.file, error.source.path) == (
        "base.yaml", "spec.authorization.inlinePolicies[0].spec.rules[0].condition.match")
    assert "undeclared reference to 'unknownVar'" in error.message


def test_unknown_policy_reference_is_placed_with_a_suggestion(tmp_path: Path) -> None:
    errors = problems(write(tmp_path, base=BASE.replace("policies: [read-only-juniors]}\n  config",
                                                         "policies: [read-only-junior]}\n  config"), policy=POLICY))
    [error] = errors
    assert isinstance(error, DanglingReference)
    assert (error.source.file, error.source.document, error.source.path) == ("base.yaml", 1,
                                                                             "spec.authorization.policies[0]")
    assert "no Policy named 'read-only-junior' (did you mean 'read-only-juniors'?)" in error.message


def test_too_deep_condition_is_refused(tmp_path: Path) -> None:
    condition = "{matchAny: true}"
    for _ in range(17):
        condition = f"{{all: {{of: [{condition}]}}}}"
    deep = POLICY.replace("condition: {matchAny: true}", f"condition: {condition}")
    errors = problems(write(tmp_path, base=BASE, policy=deep))
    assert [e.message for e in errors] == ["conditions nest more than 16 levels"]
    assert errors[0].source.file == "policy.yaml" and errors[0].source.path.startswith("spec.rules[1].condition.all")


def test_schema_errors_priority_effect_and_duplicate_rule_names(tmp_path: Path) -> None:
    bad = POLICY.replace("priority: -1", "priority: 9").replace("effect: ALLOW", "effect: PERMIT")
    bad += "    - {name: reads, effect: DENY, condition: {matchAny: true}}\n"
    errors = problems(write(tmp_path, base=BASE, policy=bad))
    found = {(e.source.path, e.message) for e in errors}
    assert ("spec.rules[0].priority", "must be at most 4") in found
    assert ("spec.rules[1].effect", "must be one of: ALLOW, DENY") in found
    assert any(isinstance(e, DuplicateName) and e.source.path == "spec.rules[2].name" for e in errors)

"""Grant windows offline: schema and validation, the snapshot at an instant, explain --at, the access diff and
`pgwarden validate`'s warning about expired grants."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from pathlib import Path

import pytest

from proxy import grants
from proxy.errors import AccessDenied
from proxy.grant_timer import name_lapsed_grants
from proxy.policy.cel import CelCompileError
from proxy.routing import ConnectRequest, LiveSnapshot
from proxy.snapshot import Condition, Policy, PolicyEffect, PolicyRule, Snapshot, Validity
from proxy.snapshot_wire import from_wire, to_wire
from reconciler import load
from reconciler.access import keyless_snapshot
from reconciler.access_report import diff_access
from reconciler.errors import ManifestErrors
from reconciler.explain import explain
from reconciler.load import Document
from reconciler.review import review_documents

ROOT = Path(__file__).resolve().parents[2]
UTC = datetime.UTC
UNTIL = datetime.datetime(2026, 12, 8, 18, 0, tzinfo=UTC)
SERVICE = """\
kind: Service
metadata: {name: my-db}
spec:
  dynamicConfig:
    configs:
      - {name: read-only, upstream: {url: "postgres://db:5432"}, postgres: {user: read_only}}
      - name: full-access
        upstream: {url: "postgres://db:5432"}
        postgres: {user: full_access, authorization: {mode: ALL}}
    rules:
      - condition: {match: 'ctx.user.spec.groups.hasAny(["oncall"])'}
        configName: full-access
      - condition: {matchAny: true}
        configName: read-only
  authorization: {policies: [freeze]}
---
kind: Group
metadata: {name: oncall}
---
kind: Policy
metadata: {name: freeze}
spec:
  rules:
    - name: no-writes-during-migration
      effect: DENY
      validFrom: 2026-12-10T00:00:00+01:00
      validUntil: 2026-12-11T00:00:00+01:00
      condition: {match: ctx.request.postgres.statement.readOnly == false}
    - {name: everything-else, effect: ALLOW, priority: 4, condition: {matchAny: true}}
"""
BOB = """\
kind: User
metadata: {name: bob}
spec:
  groups: [GROUPS]
"""


def documents(tmp_path: Path, groups: str = '{name: oncall, validUntil: "2026-12-08T18:00:00Z"}') -> list[Document]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "service.yaml").write_text(SERVICE)
    (tmp_path / "bob.yaml").write_text(BOB.replace("GROUPS", groups))
    return review_documents(load.load_directory(tmp_path), allow_plaintext_secrets=True)


def problems(tmp_path: Path, groups: str) -> list[str]:
    with pytest.raises(ManifestErrors) as err:
        documents(tmp_path, groups)
    return [f"{e.source.path}: {e.message}" for e in err.value.errors]


def test_membership_windows_are_built_and_cel_sees_names(tmp_path: Path) -> None:
    snapshot = keyless_snapshot(documents(tmp_path))
    bob = snapshot.users["bob"]
    assert bob.groups == ("oncall",)
    assert bob.manifest["spec"]["groups"] == ["oncall"]  # names only: hasAny([...]) reads as before
    assert bob.group_windows["oncall"].valid_until == UNTIL
    rule = snapshot.policies["freeze"].rules[0]
    assert rule.validity is not None and rule.validity.valid_from == datetime.datetime(2026, 12, 9, 23, tzinfo=UTC)
    again = from_wire(to_wire(snapshot, fingerprint_key=b"k", include_secrets=True))
    assert again.users["bob"].group_windows == bob.group_windows
    assert again.policies["freeze"] == snapshot.policies["freeze"]


def test_the_snapshot_at_an_instant_leaves_out_what_is_outside_its_window(tmp_path: Path) -> None:
    snapshot = keyless_snapshot(documents(tmp_path))
    found = grants.windowed(snapshot)
    assert [g.label() for g in found] == ['group "oncall" of user "bob"',
                                          'rule "no-writes-during-migration" of policy "freeze"']
    before = grants.effective(snapshot, found, UNTIL - datetime.timedelta(seconds=1))
    assert before.users["bob"].groups == ("oncall",) and len(before.policies["freeze"].rules) == 1
    after = grants.effective(snapshot, found, UNTIL)  # validUntil is exclusive
    assert after.users["bob"].groups == () and after.users["bob"].manifest["spec"]["groups"] == []
    during = grants.effective(snapshot, found, datetime.datetime(2026, 12, 10, 12, tzinfo=UTC))
    assert [r.name for r in during.policies["freeze"].rules] == ["no-writes-during-migration", "everything-else"]
    live = LiveSnapshot(snapshot, 1, at=UNTIL - datetime.timedelta(hours=1))
    assert live.next_boundary == UNTIL
    assert grants.next_boundary(found, UNTIL) == datetime.datetime(2026, 12, 9, 23, tzinfo=UTC)
    assert LiveSnapshot(Snapshot(), 1).next_boundary is None


def test_explain_at_an_instant_honours_windows(tmp_path: Path) -> None:
    snapshot = keyless_snapshot(documents(tmp_path))
    inside = explain(snapshot, user="bob", service="my-db", at=UNTIL - datetime.timedelta(minutes=1))
    assert 'grant group "oncall" of user "bob" until 2026-12-08T18:00:00Z: active' in inside.lines
    assert any(line.startswith("config full-access") for line in inside.lines)
    after = explain(snapshot, user="bob", service="my-db", at=UNTIL, query="DELETE FROM t")
    assert ('grant group "oncall" of user "bob" until 2026-12-08T18:00:00Z: expired (left out: outside its window '
            "at this instant)") in after.lines
    assert any(line.startswith("config read-only") for line in after.lines)
    frozen = explain(snapshot, user="bob", service="my-db", at=datetime.datetime(2026, 12, 10, 9, tzinfo=UTC),
                     query="DELETE FROM t")
    assert "config read-only has authorization mode NONE" in frozen.lines[-1]  # the freeze needs full-access
    snapshot = keyless_snapshot(documents(tmp_path / "forever", "oncall"))
    frozen = explain(snapshot, user="bob", service="my-db", at=datetime.datetime(2026, 12, 10, 9, tzinfo=UTC),
                     query="DELETE FROM t")
    assert frozen.is_allowed is False and frozen.lines[-1] == "DENY (freeze/no-writes-during-migration)"
    outside = explain(snapshot, user="bob", service="my-db", at=datetime.datetime(2026, 12, 11, 9, tzinfo=UTC),
                      query="DELETE FROM t")
    assert outside.is_allowed is True


def test_the_access_diff_shows_an_expiry_change(tmp_path: Path) -> None:
    later = '{name: oncall, validUntil: "2030-01-01T00:00:00Z"}'
    before = documents(tmp_path / "a", '{name: oncall, validUntil: "2029-01-01T00:00:00Z"}')
    lines = diff_access(before, documents(tmp_path / "b", later))
    assert lines == ['bob · my-db · grant group "oncall" of user "bob": until 2029-01-01T00:00:00Z (active) → '
                     'until 2030-01-01T00:00:00Z (active)']
    gone = diff_access(before, documents(tmp_path / "c", '{name: oncall, validUntil: "2026-01-01T00:00:00Z"}'))
    assert len(gone) == 1 and gone[0].startswith("bob · my-db · connects as full_access → read_only")
    assert 'until 2029-01-01T00:00:00Z (active) → until 2026-01-01T00:00:00Z (expired)' in gone[0]


@pytest.mark.parametrize(("groups", "expected"), [
    ('{name: oncall, validUntil: "2026-12-08T18:00:00"}',
     "spec.groups[0].validUntil: must be an RFC 3339 timestamp with a time zone"),
    ('{name: oncall, validUntil: "tomorrow"}', "spec.groups[0].validUntil: must be an RFC 3339 timestamp"),
    ('{name: oncall, validFrom: "2026-12-09T00:00:00Z", validUntil: "2026-12-08T00:00:00Z"}',
     "spec.groups[0].validUntil: validUntil must be later than validFrom"),
    ('oncall, {name: oncall, validUntil: "2026-12-08T18:00:00Z"}', "spec.groups[1]: group 'oncall' is listed twice"),
    ('{name: on-call, validUntil: "2026-12-08T18:00:00Z"}', "spec.groups[0].name: no Group named 'on-call'"),
    ('{name: oncall, until: "2026-12-08T18:00:00Z"}', "spec.groups[0]"),
])
def test_bad_windows_are_refused_at_their_place(tmp_path: Path, groups: str, expected: str) -> None:
    assert any(p.startswith(expected) for p in problems(tmp_path, groups)), problems(tmp_path, groups)


def test_validate_warns_about_expired_grants_but_passes(tmp_path: Path) -> None:
    documents(tmp_path, '{name: oncall, validUntil: "2026-01-02T03:04:05Z"}')
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "pgwarden", "validate", "--allow-plaintext-secrets", str(tmp_path)],
                         capture_output=True, text=True, timeout=60, env=env, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (f"warning: {tmp_path}/bob.yaml, document 1, spec.groups[0].validUntil: group 'oncall' expired at "
            "2026-01-02T03:04:05Z: it grants nothing any more") in out.stdout.splitlines()
    assert out.stdout.splitlines()[-1].startswith("✓ 4 documents valid")
    assert out.stdout.splitlines()[-1].endswith(", 1 warning")


def test_access_at_an_instant_decides_with_the_windows_of_that_instant(tmp_path: Path) -> None:
    documents(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def access(at: str) -> list[str]:
        out = subprocess.run([sys.executable, "-m", "pgwarden", "access", "--user", "bob", "--service", "my-db",
                              "--at", at, "--allow-plaintext-secrets", str(tmp_path)],
                             capture_output=True, text=True, timeout=60, env=env, check=False)
        assert out.returncode == 0, out.stderr
        return out.stdout.splitlines()

    inside = access("2026-12-08T18:59:59+01:00")
    assert inside[0].startswith("bob · my-db · connects as full_access")
    assert inside[1] == '    grant          group "oncall" of user "bob" until 2026-12-08T18:00:00Z: active'
    after = access("2026-12-08T19:00:00+01:00")  # the same instant as validUntil: the grant is gone
    assert after[0].startswith("bob · my-db · connects as read_only")
    assert after[1] == '    grant          group "oncall" of user "bob" until 2026-12-08T18:00:00Z: expired'


def test_a_session_ended_by_a_rule_taking_effect_is_told_which_rule(tmp_path: Path) -> None:
    text = SERVICE.replace("validFrom: 2026-12-10T00:00:00+01:00\n      validUntil: 2026-12-11T00:00:00+01:00\n"
                           "      condition: {match: ctx.request.postgres.statement.readOnly == false}",
                           "validFrom: 2026-12-10T00:00:00+01:00\n      condition: {matchAny: true}")
    assert text != SERVICE
    (tmp_path / "service.yaml").write_text(text)
    (tmp_path / "bob.yaml").write_text(BOB.replace("GROUPS", "oncall"))
    snapshot = keyless_snapshot(review_documents(load.load_directory(tmp_path), allow_plaintext_secrets=True))
    start = datetime.datetime(2026, 12, 9, 23, tzinfo=UTC)
    before, after = (LiveSnapshot(snapshot, 1, at=start - datetime.timedelta(seconds=1)),
                     LiveSnapshot(snapshot, 2, at=start))
    request = ConnectRequest(user="bob", database="")
    assert before.route("bob", "my-db", request).config.name == "full-access"
    with pytest.raises(AccessDenied) as err:
        after.route("bob", "my-db", request)
    reason = AccessDenied(f"access revoked by configuration change: {err.value.message}")
    named = name_lapsed_grants(reason, "bob", "my-db", before, after)
    assert named.message.startswith('access revoked: the grant rule "no-writes-during-migration" of policy "freeze" '
                                    "took effect at 2026-12-09T23:00:00Z; ")
    assert name_lapsed_grants(reason, "alice", "my-db", before, after) is reason  # not alice's grant


def test_a_rule_outside_its_window_that_does_not_compile_rejects_the_snapshot_now() -> None:
    rule = PolicyRule(name="later", effect=PolicyEffect.DENY, condition=Condition(match="ctx.user.("),
                      validity=Validity(valid_from=datetime.datetime(2030, 1, 1, tzinfo=UTC)))
    snapshot = Snapshot(policies={"p": Policy(name="p", rules=(rule,))})
    with pytest.raises(CelCompileError, match="unexpected '\\('"):
        LiveSnapshot(snapshot, 1, at=datetime.datetime(2026, 12, 7, tzinfo=UTC))

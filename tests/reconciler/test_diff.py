"""diff: objects by (kind, name), fields by path, named lists by name; Secrets never shown; Markdown shape."""

from __future__ import annotations

import re
import textwrap

import pyrage
import pytest

from proxy.snapshot_wire import to_wire
from reconciler.build import build_snapshot
from reconciler.diff import (
    ABSENT,
    HIDDEN,
    Action,
    ChangeSet,
    FieldChange,
    diff_documents,
    diff_snapshots,
)
from reconciler.diff_report import MAX_MARKDOWN_CHARS, render_markdown, render_text
from reconciler.load import Document, ManifestFile, parse_file
from reconciler.sops import encrypt_secret_manifest

SERVICE = """\
kind: Service
metadata: {name: my-db}
spec:
  port: 5432
  dynamicConfig:
    configs:
      - name: read-only
        upstream: {url: postgres://my-pg:5432}
        postgres: {user: read_only, auth: {password: {fromSecret: pw}}}
      - name: full-access
        upstream: {url: postgres://my-pg:5432}
        postgres: {user: full_access, auth: {password: {fromSecret: pw}}}
    rules:
      - condition: {match: 'ctx.user.spec.groups.hasAny(["admins"])'}
        configName: full-access
      - condition: {matchAny: true}
        configName: read-only
"""
PEOPLE = """\
kind: Group
metadata: {name: admins}
---
kind: User
metadata: {name: alice}
spec: {groups: [admins], email: alice@example.com}
"""
OLD_VALUE, NEW_VALUE = "old-pw-4d1f9a", "new-pw-88c2e0"


def docs(text: str, file: str = "m.yaml") -> list[Document]:
    return parse_file(ManifestFile(path=file, data=textwrap.dedent(text).encode()))


def plain_secret(value: str, name: str = "pw") -> str:
    return f"kind: Secret\nmetadata: {{name: {name}}}\ndata: {{value: {value}}}\n"


@pytest.fixture(scope="module")
def recipient() -> str:
    return str(pyrage.x25519.Identity.generate().to_public())


def ciphertexts(manifest: str) -> list[str]:
    """Every ENC[...] string in an encrypted manifest (the value and the MAC)."""
    return re.findall(r"ENC\[[^\]]+\]", manifest)


def assert_hides(changes: ChangeSet, *secrets: str) -> None:
    shown = render_text(changes) + render_markdown(changes) + repr(changes)
    assert "ENC[" not in shown
    for secret in secrets:
        assert secret not in shown


def test_identical_revisions_have_no_changes() -> None:
    changes = diff_documents(docs(SERVICE + "---\n" + PEOPLE), docs(SERVICE + "---\n" + PEOPLE))
    assert changes.is_empty and len(changes) == 0 and changes.summary() == {}
    assert render_text(changes) == "no changes\n"
    assert "no changes" in render_markdown(changes)


def test_added_removed_and_changed_objects_in_apply_order() -> None:
    before = docs(SERVICE + "---\n" + PEOPLE)
    after = docs(SERVICE.replace("port: 5432", "port: 6432") + "---\n" + PEOPLE.split("---\n")[1]
                 + "---\nkind: Group\nmetadata: {name: dba}\n")
    changes = diff_documents(before, after)
    assert [(c.kind, c.name, c.action) for c in changes] == [
        ("Group", "admins", Action.REMOVED),
        ("Group", "dba", Action.ADDED),
        ("Service", "my-db", Action.CHANGED),
    ]
    assert changes.summary() == {
        "Group": {"added": 1, "removed": 1, "changed": 0},
        "Service": {"added": 0, "removed": 0, "changed": 1},
    }
    service = changes.changes[2]
    assert service.fields == [FieldChange(path="spec.port", before=5432, after=6432)]
    assert changes.changes[1].fields == [FieldChange(path="metadata.name", before=ABSENT, after="dba")]
    text = render_text(changes)
    assert "- Group admins (removed)" in text
    assert "+ Group dba (added)\n    + metadata.name: dba" in text
    assert "~ Service my-db (changed)\n    ~ spec.port: 5432 -> 6432" in text
    assert text.endswith("1 changed, 1 added, 1 removed (Group: 1 added, 1 removed; Service: 1 changed)\n")


def test_field_paths_use_dots_and_indexes() -> None:
    after = SERVICE.replace("user: full_access", "user: admin")
    (change,) = diff_documents(docs(SERVICE), docs(after))
    assert change.fields == [
        FieldChange(path="spec.dynamicConfig.configs[1].postgres.user", before="full_access", after="admin")
    ]


def test_named_lists_match_by_name_not_position() -> None:
    # A new config first: without matching by name, every config after it would read as changed.
    extra = ("      - name: audit\n        upstream: {url: postgres://audit:5432}\n"
             "        postgres: {user: auditor, auth: {password: {fromSecret: pw}}}\n")
    after = SERVICE.replace("    configs:\n", "    configs:\n" + extra).replace("user: full_access", "user: admin")
    (change,) = diff_documents(docs(SERVICE), docs(after))
    paths = [(f.path, f.before, f.after) for f in change.fields]
    assert paths == [
        ("spec.dynamicConfig.configs[0].name", ABSENT, "audit"),
        ("spec.dynamicConfig.configs[0].upstream.url", ABSENT, "postgres://audit:5432"),
        ("spec.dynamicConfig.configs[0].postgres.user", ABSENT, "auditor"),
        ("spec.dynamicConfig.configs[0].postgres.auth.password.fromSecret", ABSENT, "pw"),
        ("spec.dynamicConfig.configs[2].postgres.user", "full_access", "admin"),
    ]


def test_removed_named_item_uses_its_old_index() -> None:
    after = SERVICE.replace(
        "      - name: read-only\n        upstream: {url: postgres://my-pg:5432}\n"
        "        postgres: {user: read_only, auth: {password: {fromSecret: pw}}}\n", "")
    (change,) = diff_documents(docs(SERVICE), docs(after))
    assert {f.path for f in change.fields} >= {"spec.dynamicConfig.configs[0].name"}
    assert all(f.after is ABSENT for f in change.fields if f.path.startswith("spec.dynamicConfig.configs"))


def test_unnamed_lists_compare_by_position_and_scalar_lists_whole() -> None:
    before = docs(SERVICE + "---\n" + PEOPLE)
    after_text = SERVICE.replace('hasAny(["admins"])', 'hasAny(["admins", "dba"])') + "---\n" + PEOPLE.replace(
        "groups: [admins]", "groups: [admins, dba]")
    changes = diff_documents(before, docs(after_text + "---\nkind: Group\nmetadata: {name: dba}\n"))
    by_name = {c.name: c for c in changes}
    assert by_name["my-db"].fields == [FieldChange(
        path="spec.dynamicConfig.rules[0].condition.match",
        before='ctx.user.spec.groups.hasAny(["admins"])',
        after='ctx.user.spec.groups.hasAny(["admins", "dba"])',
    )]
    assert by_name["alice"].fields == [FieldChange(path="spec.groups", before=["admins"], after=["admins", "dba"])]
    assert '~ spec.groups: [admins] -> [admins, dba]' in render_text(changes)


def test_added_and_removed_fields_and_types_kept_apart() -> None:
    before = docs("kind: User\nmetadata: {name: bob}\nspec: {isDisabled: 1, email: b@x.io}\n")
    after = docs("kind: User\nmetadata: {name: bob, labels: {team: ops}}\nspec: {isDisabled: true}\n")
    (change,) = diff_documents(before, after)
    assert change.fields == [
        FieldChange(path="metadata.labels.team", before=ABSENT, after="ops"),
        FieldChange(path="spec.isDisabled", before=1, after=True),
        FieldChange(path="spec.email", before="b@x.io", after=ABSENT),
    ]
    text = render_text(diff_documents(before, after))
    assert "+ metadata.labels.team: ops" in text and "- spec.email: b@x.io" in text
    assert "~ spec.isDisabled: 1 -> true" in text


def test_plaintext_secret_value_is_only_ever_hidden() -> None:
    changes = diff_documents(docs(plain_secret(OLD_VALUE)), docs(plain_secret(NEW_VALUE)))
    (change,) = changes
    assert change.fields == [FieldChange(path="data.value", before=HIDDEN, after=HIDDEN)]
    assert "~ data.value: (changed, value hidden)" in render_text(changes)
    assert_hides(changes, OLD_VALUE, NEW_VALUE)
    assert diff_documents(docs(plain_secret(OLD_VALUE)), docs(plain_secret(OLD_VALUE))).is_empty


def test_added_and_removed_secrets_hide_their_value() -> None:
    added = diff_documents([], docs(plain_secret(NEW_VALUE)))
    removed = diff_documents(docs(plain_secret(OLD_VALUE)), [])
    assert added.changes[0].fields[-1] == FieldChange(path="data.value", before=ABSENT, after=HIDDEN)
    assert removed.changes[0].fields[-1] == FieldChange(path="data.value", before=HIDDEN, after=ABSENT)
    assert "+ data.value: (value hidden)" in render_text(added)
    assert_hides(added, NEW_VALUE)
    assert_hides(removed, OLD_VALUE)


def test_rotated_encrypted_secret_shows_a_hidden_change_only(recipient: str) -> None:
    old = encrypt_secret_manifest("pw", OLD_VALUE, age_recipients=[recipient])
    new = encrypt_secret_manifest("pw", NEW_VALUE, age_recipients=[recipient])
    changes = diff_documents(docs(old), docs(new))
    (change,) = changes
    assert change.fields == [FieldChange(path="data.value", before=HIDDEN, after=HIDDEN)]
    assert "data.value: (changed, value hidden)" in render_markdown(changes)
    assert_hides(changes, OLD_VALUE, NEW_VALUE, *ciphertexts(old), *ciphertexts(new))
    assert diff_documents(docs(old), docs(old)).is_empty


def test_encrypted_secret_recipients_are_reviewable(recipient: str) -> None:
    other = str(pyrage.x25519.Identity.generate().to_public())
    old = encrypt_secret_manifest("pw", OLD_VALUE, age_recipients=[recipient])
    new = encrypt_secret_manifest("pw", OLD_VALUE, age_recipients=[recipient, other])
    (change,) = diff_documents(docs(old), docs(new))
    # Re-encrypted: without keys nobody can tell whether the value moved, so it reads as changed.
    assert change.fields == [
        FieldChange(path="data.value", before=HIDDEN, after=HIDDEN),
        FieldChange(path="sops.recipients", before=[f"age:{recipient}"],
                    after=sorted([f"age:{recipient}", f"age:{other}"])),
    ]


def test_plaintext_to_encrypted_is_a_hidden_change(recipient: str) -> None:
    new = encrypt_secret_manifest("pw", OLD_VALUE, age_recipients=[recipient])
    changes = diff_documents(docs(plain_secret(OLD_VALUE)), docs(new))
    assert changes.changes[0].fields[0] == FieldChange(path="data.value", before=HIDDEN, after=HIDDEN)
    assert changes.changes[0].fields[1].path == "sops.recipients"
    assert_hides(changes, OLD_VALUE, *ciphertexts(new))


def test_data_is_hidden_whatever_the_kind_and_ciphertext_anywhere() -> None:
    # An invalid base revision may hold a Secret with a mistyped kind, or ENC[...] in any field.
    enc = "ENC[AES256_GCM,data:AAAA,iv:" + "B" * 43 + "=,tag:" + "C" * 22 + "==,type:str]"
    before = docs(f"kind: Secrte\nmetadata: {{name: pw}}\ndata: {{value: {OLD_VALUE}}}\n---\n"
                  f"kind: Group\nmetadata: {{name: g, description: '{enc}'}}\n")
    changes = diff_documents(before, [])
    assert_hides(changes, OLD_VALUE, enc)
    assert "metadata.description: (value hidden)" in render_text(changes)


def test_markdown_has_heading_table_per_kind_and_yaml_details() -> None:
    before = docs(SERVICE + "---\n" + PEOPLE + "---\n" + plain_secret(OLD_VALUE))
    after = docs(SERVICE.replace("user: full_access", "user: admin") + "---\n" + PEOPLE + "---\n"
                 + plain_secret(NEW_VALUE) + "---\nkind: Group\nmetadata: {name: dba}\n")
    markdown = render_markdown(diff_documents(before, after), subtitle="`m` at `origin/main` → working tree")
    lines = markdown.splitlines()
    assert lines[0] == "### pgwarden diff: 2 changed, 1 added (Secret: 1 changed; Group: 1 added; Service: 1 changed)"
    assert lines[2] == "`m` at `origin/main` → working tree"
    assert [line for line in lines if line.startswith("#### ")] == ["#### Secret", "#### Group", "#### Service"]
    assert markdown.count("| | Name | Fields |") == 3
    assert "| ~ changed | `my-db` | 1 |" in markdown
    assert markdown.count("<details>") == markdown.count("</details>") == 3
    assert markdown.count("```yaml") == 3
    assert "spec.dynamicConfig.configs[1].postgres.user: {before: full_access, after: admin}" in markdown
    assert "data.value: (changed, value hidden)" in markdown
    assert "metadata.name: dba" in markdown
    assert OLD_VALUE not in markdown and NEW_VALUE not in markdown


def test_markdown_escapes_names_and_fences() -> None:
    before = docs("kind: Group\nmetadata: {name: 'a|b', description: 'x'}\n")
    after = docs("kind: Group\nmetadata: {name: 'a|b', description: '```` and <b>'}\n")
    markdown = render_markdown(diff_documents(before, after))
    assert "`a\\|b`" in markdown  # a pipe would end the table cell
    assert "<code>a|b</code>" in markdown
    assert "`````yaml" in markdown  # longer than the value's backtick run, so the fence holds
    assert 'metadata.description: {before: x, after: "```` and <b>"}' in markdown


@pytest.mark.parametrize(("objects", "description_chars"), [(300, 500), (5000, 10)])
def test_markdown_stays_under_githubs_comment_limit(objects: int, description_chars: int) -> None:
    many = [
        Document(file="m.yaml", index=i + 1, line=1, kind="Group", name=f"g{i}",
                 body={"kind": "Group", "metadata": {"name": f"g{i}", "description": "x" * description_chars}})
        for i in range(objects)
    ]
    markdown = render_markdown(diff_documents([], many), subtitle="`m` at `origin/main` → working tree")
    assert len(markdown) <= MAX_MARKDOWN_CHARS  # GitHub refuses comments over 65,536 characters
    assert "not detailed to stay under GitHub's comment size limit" in markdown
    assert markdown.rstrip().endswith("(changed, value hidden)`._")
    if objects == 5000:
        assert re.search(r"\| \| _and \d+ more_ \| \|", markdown)


def test_diff_snapshots_compares_manifests_and_secret_fingerprints() -> None:
    key = b"k" * 32
    live = build_snapshot(docs(SERVICE + "---\n" + PEOPLE + "---\n" + plain_secret(OLD_VALUE)), revision="a", source="")
    desired_docs = docs(SERVICE.replace("user: full_access", "user: admin") + "---\n" + PEOPLE + "---\n"
                        + plain_secret(NEW_VALUE))
    desired = build_snapshot(desired_docs, revision="b", source="")
    wire = to_wire(live, fingerprint_key=key)
    assert diff_snapshots(to_wire(desired, fingerprint_key=key), desired, fingerprint_key=key).is_empty
    changes = diff_snapshots(wire, desired, fingerprint_key=key)
    assert [(c.kind, c.name) for c in changes] == [("Secret", "pw"), ("Service", "my-db")]
    assert changes.changes[0].fields == [FieldChange(path="data.value", before=HIDDEN, after=HIDDEN)]
    assert changes.changes[1].fields == [
        FieldChange(path="spec.dynamicConfig.configs[1].postgres.user", before="full_access", after="admin")
    ]
    assert_hides(changes, OLD_VALUE, NEW_VALUE, live.secrets["pw"].value.fingerprint(key))


def test_diff_snapshots_sees_routing_changed_behind_an_equal_manifest() -> None:
    key = b"k" * 32
    snapshot = build_snapshot(docs(SERVICE + "---\n" + plain_secret(OLD_VALUE)), revision="a", source="")
    wire = to_wire(snapshot, fingerprint_key=key)
    wire["services"]["my-db"]["port"] = 7000  # put by hand: the manifest still says 5432
    (change,) = diff_snapshots(wire, snapshot, fingerprint_key=key)
    assert change.fields == [FieldChange(path="port", before=7000, after=5432)]

"""The access matrix and the Access lines of a diff, on small in-memory repositories (no proxy, no keys)."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler import load, validate
from reconciler.access import access_matrix, keyless_snapshot
from reconciler.access_report import access_changes, diff_access, render_markdown, render_text, to_json
from reconciler.load import Document

REPO = Path(__file__).resolve().parents[2]
SECRET_VALUE = "s3cr3t-value-that-must-never-show-up"

BASE = f"""\
kind: Service
metadata: {{name: shop}}
spec:
  authorization: {{policies: [shop-default]}}
  dynamicConfig:
    configs:
      - name: reader
        upstream: {{url: "postgres://127.0.0.1:5432"}}
        postgres: {{user: read_only, database: shop, auth: {{password: {{fromSecret: pw}}}},
                   authorization: {{mode: ALL}}}}
      - name: writer
        parent: reader
        postgres: {{user: full_access}}
    rules:
      - condition: {{match: 'ctx.user.spec.groups.hasAny(["engineering"])'}}
        configName: writer
      - condition: {{matchAny: true}}
        configName: reader
---
kind: Policy
metadata: {{name: shop-default}}
spec:
  rules:
    - {{name: everything-else, effect: ALLOW, priority: 4, condition: {{matchAny: true}}}}
---
kind: Policy
metadata: {{name: no-writes}}
spec:
  rules:
    - name: writes
      effect: DENY
      priority: -1
      condition: {{match: ctx.request.postgres.statement.readOnly == false}}
---
kind: Group
metadata: {{name: juniors}}
spec: {{authorization: {{policies: [no-writes]}}}}
---
kind: Group
metadata: {{name: engineering}}
---
kind: User
metadata: {{name: bob}}
spec: {{groups: [juniors]}}
---
kind: User
metadata: {{name: erin}}
spec: {{groups: [engineering]}}
---
kind: User
metadata: {{name: fay}}
spec: {{groups: [engineering]}}
---
kind: Secret
metadata: {{name: pw}}
data: {{value: "{SECRET_VALUE}"}}
"""


def documents(text: str) -> list[Document]:
    docs = load.parse_files([load.ManifestFile(path="repo.yaml", data=text.encode())])
    validate.validate_all(docs)
    return docs


def changes(after: str, before: str = BASE) -> list[str]:
    return access_changes(access_matrix(keyless_snapshot(documents(before))),
                          access_matrix(keyless_snapshot(documents(after))))


def test_a_user_change_shows_the_new_role_and_the_lifted_denial() -> None:
    after = BASE.replace("metadata: {name: bob}\nspec: {groups: [juniors]}",
                         "metadata: {name: bob}\nspec: {groups: [engineering]}")
    lines = changes(after)
    assert len(lines) == 1
    line = lines[0]
    assert line.startswith("bob · shop · connects as read_only → full_access (rule 1 (configName writer);")
    assert "write: DENY (no-writes/writes) → ALLOW (shop-default/everything-else)" in line
    assert "DDL: DENY (no-writes/writes) → ALLOW (shop-default/everything-else)" in line
    assert "read:" not in line  # unchanged classes are not listed


def test_a_group_change_expands_to_every_member() -> None:
    after = BASE.replace("metadata: {name: engineering}\n",
                         "metadata: {name: engineering}\nspec: {authorization: {policies: [no-writes]}}\n")
    lines = changes(after)
    assert [line.split(" · ")[0] for line in lines] == ["erin", "fay"]
    assert all("write: ALLOW (shop-default/everything-else) → DENY (no-writes/writes)" in line for line in lines)


def test_a_policy_change_shows_for_the_users_it_is_attached_to() -> None:
    after = BASE.replace("condition: {match: ctx.request.postgres.statement.readOnly == false}",
                         """condition: {match: 'ctx.request.postgres.statement.kinds.exists(k, k == "INSERT")'}""")
    lines = changes(after)
    assert len(lines) == 1 and lines[0].startswith("bob · shop · ")
    # INSERT is still denied, UPDATE/DELETE/MERGE are not: write becomes conditional on the statement text
    assert "write: DENY (no-writes/writes) → CONDITIONAL (DENY (no-writes/writes) for `INSERT" in lines[0]
    assert "ALLOW (shop-default/everything-else) for `DELETE FROM access_probe`" in lines[0]
    assert "DDL: DENY (no-writes/writes) → ALLOW (shop-default/everything-else)" in lines[0]


def test_a_routing_rule_change_moves_users_between_configs() -> None:
    after = BASE.replace('hasAny(["engineering"])', 'hasAny(["engineering", "juniors"])')
    assert changes(after) == ["bob · shop · connects as read_only → full_access (rule 1 (configName writer); "
                              'allowed by policy "shop-default" rule "everything-else")']


def test_users_gain_and_lose_a_service_entirely() -> None:
    after = BASE.replace("metadata: {name: fay}\nspec: {groups: [engineering]}",
                         "metadata: {name: fay}\nspec: {groups: [engineering], isDisabled: true}")
    after += "---\nkind: User\nmetadata: {name: gus}\nspec: {groups: [juniors]}\n"
    lines = changes(after)
    assert lines[0] == 'fay · shop · loses access (user "fay" is disabled)'
    assert lines[1].startswith("gus · shop · gains access: connects as read_only (config reader, database shop;")
    assert "write: DENY (no-writes/writes)" in lines[1]
    assert len(lines) == 2


def test_session_and_clock_conditions_are_named_not_guessed() -> None:
    extra = """---
kind: Policy
metadata: {name: window}
spec:
  attrs: {zone: Europe/Berlin}
  rules:
    - name: ddl-needs-aal2
      effect: DENY
      condition:
        all:
          of:
            - match: ctx.request.postgres.statement.kinds.exists(k, k.startsWith("CREATE") || k.startsWith("ALTER"))
            - not: ctx.session.status.authentication.info.aal == "AAL2"
    - name: drop-outside-window
      effect: DENY
      condition:
        all:
          of:
            - match: ctx.request.postgres.statement.kinds.exists(k, k.startsWith("DROP") || k == "TRUNCATE")
            - not: now().weekdayIn(attrs.zone) in ["TUE", "THU"] && now().isBetweenHoursIn(9, 11, attrs.zone)
"""
    text = BASE.replace("policies: [shop-default]", "policies: [shop-default, window]") + extra
    matrix = access_matrix(keyless_snapshot(documents(text)), users=["erin"], reference=datetime.date(2026, 12, 7))
    cell = matrix.cells[0]
    assert cell.statements["ddl"].condition == "needs AAL2 (at AAL1: DENY (window/ddl-needs-aal2))"
    assert cell.statements["drop"].condition == (
        "ALLOW (shop-default/everything-else) Tue/Thu 09:00–11:00 Europe/Berlin, "
        "else DENY (window/drop-outside-window)")
    assert cell.statements["read"].condition == "" and cell.statements["read"].decision == "ALLOW"
    assert matrix.zone == "Europe/Berlin"


def test_no_output_holds_a_secret_value() -> None:
    matrix = access_matrix(keyless_snapshot(documents(BASE)))
    shown = render_text(matrix) + render_markdown(matrix) + repr(to_json(matrix)) + repr(matrix)
    assert SECRET_VALUE not in shown
    assert SECRET_VALUE not in repr(keyless_snapshot(documents(BASE)).secrets)


def test_pgwarden_access_on_examples_repo_json() -> None:
    out = subprocess.run([sys.executable, "-m", "pgwarden", "access", "-o", "json", "--user", "bob",
                          "examples-repo/"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    cells = {c["service"]: c for c in json.loads(out.stdout)["cells"]}
    assert cells["my-db"]["connect"] == {"decision": "ALLOW", "by": "rule everyone-else (configName read-only)",
                                         "config": "read-only", "role": "read_only", "database": "my_db"}
    assert cells["my-postgres"]["statements"]["write"]["decision"] == "ALLOW"


def test_pgwarden_access_names_an_unknown_user() -> None:
    out = subprocess.run([sys.executable, "-m", "pgwarden", "access", "--user", "nobody", "examples-repo/"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith('pgwarden: error: no user named "nobody" in examples-repo\n')


@pytest.mark.parametrize("after", [
    BASE.replace("metadata: {name: bob}\nspec: {groups: [juniors]}", "metadata: {name: bob}\nspec: {groups: []}"),
    BASE.replace("metadata: {name: engineering}\n", "metadata: {name: engineering}\nspec: {attrs: {x: 1}}\n"),
    BASE.replace("readOnly == false", "readOnly == false || true"),
    BASE.replace('hasAny(["engineering"])', 'hasAny(["juniors"])'),
    BASE + "---\nkind: User\nmetadata: {name: gus}\nspec: {groups: [juniors]}\n",
], ids=["user", "group", "policy", "routing", "new-user"])
def test_the_diff_decides_only_changed_pairs_and_misses_nothing(after: str) -> None:
    """diff_access prunes to the rows and columns whose inputs changed: same lines as the whole matrices."""
    assert diff_access(documents(BASE), documents(after)) == changes(after)

"""`pgwarden explain` and `pgwarden test` from the command line, on the cookbook and examples-repo."""

from __future__ import annotations

import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
COOKBOOK_USERS = """\
kind: User
metadata: {name: jo}
spec: {type: HUMAN, groups: [juniors]}
---
kind: User
metadata: {name: ada}
spec: {type: HUMAN, groups: []}
"""


def pgwarden(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pgwarden", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


@pytest.fixture(scope="module")
def cookbook(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """docs/policies/ as written (its Secret stays encrypted) plus two Users."""
    root = tmp_path_factory.mktemp("explain") / "repo"
    shutil.copytree(REPO / "docs" / "policies", root)
    (root / "users.yaml").write_text(COOKBOOK_USERS)
    return root


def test_explain_a_denied_query_names_every_rule_and_the_one_that_decided(cookbook: Path) -> None:
    out = pgwarden("explain", "--user", "ada", "--service", "production", "--aal", "AAL2",
                   "--at", "2026-12-09T10:00:00+01:00", "--query", "DROP TABLE orders", str(cookbook))
    assert out.returncode == 1, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "user ada · service production · AAL2 (passkey login) · at 2026-12-09T10:00:00+01:00"
    assert "routing: no rules" in lines
    assert ("config default (default config; allowed by policy \"production-default\" rule \"everything-else\"): "
            "upstream role shop_owner, database shop, authorization mode ALL") in lines
    assert "  kinds [DROP TABLE] · tables [orders] · functions [] · readOnly false" in lines
    rules = lines[lines.index("query: DROP TABLE orders") + 3:-1]
    assert rules == [
        "  1. no-drop-outside-change-window/drop-outside-window (DENY, priority 0): matches  ← decides",
        "  2. ddl-needs-passkey/ddl-without-aal2 (DENY, priority 0): does not match (not reached)",
        "  3. production-default/everything-else (ALLOW, priority 4): matches (not reached)",
    ]
    assert lines[-1] == "DENY (no-drop-outside-change-window/drop-outside-window)"


def test_explain_the_same_drop_inside_the_window_is_allowed(cookbook: Path) -> None:
    out = pgwarden("explain", "--user", "ada", "--service", "production", "--aal", "AAL2",
                   "--at", "2026-12-08T10:00:00+01:00", "--query", "DROP TABLE orders", str(cookbook))
    assert out.returncode == 0, out.stderr
    assert "  1. no-drop-outside-change-window/drop-outside-window (DENY, priority 0): does not match" in out.stdout
    assert "everything-else (ALLOW, priority 4): matches  ← decides" in out.stdout
    assert out.stdout.endswith("ALLOW (production-default/everything-else)\n")


def test_explain_routing_rules_in_order(tmp_path: Path) -> None:
    out = pgwarden("explain", "--user", "erin", "--service", "my-db", "--query", "SELECT 1", "examples-repo/")
    assert out.returncode == 0, out.stderr
    assert ('  rule engineering-or-admins → full-access: ctx.user.spec.groups.hasAny(["engineering", "admins"]): MATCH'
            in out.stdout.splitlines())
    assert ("  rule everyone-else → read-only: matchAny: true: not tried (rule engineering-or-admins matched)"
            in out.stdout)
    assert ("config full-access (rule engineering-or-admins (configName full-access)): upstream role full_access"
            in out.stdout)
    assert out.stdout.endswith("ALLOW: not checked per statement (config full-access has authorization mode NONE)\n")


def test_explain_refuses_a_time_without_offset() -> None:
    out = pgwarden("explain", "--user", "bob", "--service", "my-db", "--at", "2026-12-08T10:00:00", "examples-repo/")
    assert out.returncode == 2 and "has no UTC offset" in out.stderr


def test_pgwarden_test_passes_on_examples_repo_and_writes_junit(tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    out = pgwarden("test", "--junit", str(junit), "examples-repo/")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines()[-1] == "✓ 7 cases passed"
    suites = ET.parse(junit).getroot()
    assert (suites.tag, suites.get("tests"), suites.get("failures")) == ("testsuites", "7", "0")
    assert [t.get("name") for t in suites.iter("testcase")][0] == "admins land on my-db as full_access"


def test_pgwarden_test_reports_each_failure_and_exits_1(cookbook: Path, tmp_path: Path) -> None:
    tests = cookbook / ".pgwarden" / "tests"
    tests.mkdir(parents=True, exist_ok=True)
    (tests / "cookbook.yaml").write_text("""\
tests:
  - name: juniors may not write
    user: jo
    service: production
    query: INSERT INTO orders VALUES (1)
    expect: {decision: DENY, rule: read-only-juniors/no-writes}
  - name: a wrong expectation
    user: ada
    service: production
    at: 2026-12-09T10:00:00+01:00
    aal: AAL2
    query: TRUNCATE orders
    expect: {decision: ALLOW, role: shop_owner}
  - name: DDL needs AAL2
    user: ada
    service: production
    query: CREATE TABLE t (x int)
    expect: {decision: DENY, rule: ddl-needs-passkey/ddl-without-aal2}
""")
    junit = tmp_path / "junit.xml"
    out = pgwarden("test", "--junit", str(junit), str(cookbook))
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "✓ juniors may not write"
    assert lines[1] == f"✗ a wrong expectation  ({cookbook}/.pgwarden/tests/cookbook.yaml, tests[1])"
    assert lines[2] == "    decision: expected ALLOW, got DENY (no-drop-outside-change-window/drop-outside-window)"
    assert lines[-1] == "✗ 1 failed, 2 passed"
    failures = list(ET.parse(junit).getroot().iter("failure"))
    assert len(failures) == 1 and failures[0].get("message", "").startswith("decision: expected ALLOW, got DENY")


def test_pgwarden_test_names_the_file_and_path_of_a_bad_case(tmp_path: Path) -> None:
    shutil.copytree(REPO / "examples-repo", tmp_path / "repo")
    (tmp_path / "repo" / ".pgwarden" / "tests" / "bad.yaml").write_text(
        "tests:\n  - user: bob\n    service: my-db\n    expect: {decision: MAYBE}\n")
    out = pgwarden("test", str(tmp_path / "repo"))
    assert out.returncode == 2 and out.stdout == ""
    assert f"{tmp_path}/repo/.pgwarden/tests/bad.yaml, document 1, tests[0].expect.decision: 'MAYBE' is not one of" \
        in out.stderr


def test_pgwarden_test_without_tests_cannot_run(tmp_path: Path) -> None:
    shutil.copytree(REPO / "examples-repo", tmp_path / "repo", ignore=shutil.ignore_patterns(".pgwarden"))
    out = pgwarden("test", str(tmp_path / "repo"))
    assert out.returncode == 2 and "no access tests found in" in out.stderr

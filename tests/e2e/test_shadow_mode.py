"""Shadow mode through a real proxy: an AUDIT Policy never blocks, logs and counts wouldDeny; an ENFORCE one on the
same Service still denies; a denial's HINT names `pgwarden explain`; `pgwarden replay` re-decides the real log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.metrics import render
from tests.support.proxy_harness import MANIFESTS, ProxyHarness, start_harness, write_manifests

REPO = Path(__file__).resolve().parents[2]
SHADOWED = """\
---
kind: Service
metadata: {{name: shadowed}}
spec:
  mode: POSTGRES
  authorization: {{policies: [allow-all, no-truncate, no-deletes-yet]}}
  config:
    upstream: {{url: "postgres://{host}:{port}"}}
    postgres: {{user: full_access, database: my_db, auth: {{password: {{fromSecret: full-access-password}}}},
               authorization: {{mode: ALL}}}}
---
kind: Policy
metadata: {{name: allow-all}}
spec:
  rules:
    - {{name: everything, effect: ALLOW, priority: 4, condition: {{matchAny: true}}}}
---
kind: Policy
metadata: {{name: no-deletes-yet}}
spec:
  enforcement: {enforcement}
  rules:
    - name: deletes
      effect: DENY
      condition: {{match: 'ctx.request.postgres.statement.kinds.exists(k, k == "DELETE")'}}
"""
NO_TRUNCATE = """\
---
kind: Policy
metadata: {{name: no-truncate}}
spec:
  rules:
    - name: truncate
      effect: DENY
      condition: {{match: 'ctx.request.postgres.statement.kinds.exists(k, k == "TRUNCATE")'}}
"""
# What the proxy runs: the DELETE policy in shadow mode, TRUNCATE denied.
LIVE = MANIFESTS + SHADOWED.replace("{enforcement}", "AUDIT") + NO_TRUNCATE
# The pull request under review: DELETE enforced, the TRUNCATE policy dropped (still attached: it names none).
STRICTER = MANIFESTS + SHADOWED.replace("{enforcement}", "ENFORCE") + NO_TRUNCATE.replace(
    "exists(k, k == \"TRUNCATE\")", "exists(k, k == \"NOTHING\")")
HINT = "see which policy rule decided: pgwarden explain --user {user} --service shadowed --query '<your statement>'"


@pytest.fixture(scope="module")
def shadow(pg: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyHarness]:
    pg.psql("CREATE TABLE IF NOT EXISTS shadow_rows (id serial PRIMARY KEY, owner text); "
            "GRANT ALL ON shadow_rows TO full_access; GRANT ALL ON SEQUENCE shadow_rows_id_seq TO full_access;")
    harness, stop = start_harness(pg, tmp_path_factory.mktemp("shadow"), manifests_text=LIVE, name="shadow")
    yield harness
    stop()


def rows(pg: Any, owner: str) -> int:
    return int(pg.psql(f"SELECT count(*) FROM shadow_rows WHERE owner = '{owner}'").strip())


def would_deny_count(proxy: ProxyHarness) -> float:
    text = proxy.call(render, proxy.running.server).decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "pgwarden_policy_would_deny_total" and sample.labels == {
                    "service": "shadowed", "policy": "no-deletes-yet", "rule": "deletes"}:
                return sample.value
    return 0.0


def decisions(proxy: ProxyHarness, user: str, fragment: str) -> list[dict[str, Any]]:
    return [e["entry"]["info"]["postgres"] for e in proxy.log_entries()
            if e["entry"]["common"].get("user") == user and "decision" in e["entry"]["info"]["postgres"]
            and fragment in e["entry"]["info"]["postgres"].get("query", {}).get("query", "")]


def test_an_audit_policy_never_blocks_and_logs_and_counts_would_deny(shadow: ProxyHarness, pg: Any) -> None:
    before = would_deny_count(shadow)
    with psycopg.connect(shadow.dsn("bob", "shadowed"), autocommit=True) as conn:
        conn.execute("INSERT INTO shadow_rows (owner) VALUES ('audit-bob'), ('audit-bob')")
        deleted = conn.execute("DELETE FROM shadow_rows WHERE owner = 'audit-bob'").rowcount
    assert deleted == 2 and rows(pg, "audit-bob") == 0  # the DELETE ran: AUDIT did not block it
    shadow.wait_for(lambda: decisions(shadow, "bob", "DELETE FROM shadow_rows"))
    delete = decisions(shadow, "bob", "DELETE FROM shadow_rows")[0]["decision"]
    assert delete["status"] == "ALLOWED" and (delete["policy"], delete["rule"]) == ("allow-all", "everything")
    assert delete["wouldDeny"] == {"policy": "no-deletes-yet", "rule": "deletes"}
    insert = decisions(shadow, "bob", "INSERT INTO shadow_rows")[0]["decision"]
    assert insert["status"] == "ALLOWED" and "wouldDeny" not in insert
    assert would_deny_count(shadow) == before + 1


def test_an_enforce_deny_on_the_same_service_still_denies_with_an_explain_hint(shadow: ProxyHarness,
                                                                                 pg: Any) -> None:
    with psycopg.connect(shadow.dsn("bob", "shadowed"), autocommit=True) as conn:
        conn.execute("INSERT INTO shadow_rows (owner) VALUES ('enforce-bob')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as denied:
            conn.execute("TRUNCATE shadow_rows")
        assert conn.execute("SELECT 1").fetchone() == (1,)  # the session goes on
    assert rows(pg, "enforce-bob") == 1
    diag = denied.value.diag
    assert diag.message_primary == 'query denied by policy "no-truncate", rule "truncate"'
    assert diag.message_hint == HINT.format(user="bob")


def test_psql_shows_the_explain_hint(shadow: ProxyHarness) -> None:
    env = {**os.environ, "PGPASSWORD": shadow.token("bob")}
    dsn = f"host=127.0.0.1 port={shadow.port} dbname=shadowed sslmode=require user=bob"
    out = subprocess.run(["psql", dsn, "-X", "-c", "TRUNCATE shadow_rows"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1
    assert f"HINT:  {HINT.format(user='bob')}" in out.stderr.splitlines()


def replay(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pgwarden", "replay", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_replay_of_the_real_log_against_a_stricter_repository(shadow: ProxyHarness, pg: Any, tmp_path: Path) -> None:
    # alice's traffic only: 3 statements allowed that the PR denies, 1 TRUNCATE denied that the PR allows.
    with psycopg.connect(shadow.dsn("alice", "shadowed"), autocommit=True) as conn:
        conn.execute("INSERT INTO shadow_rows (owner) VALUES ('replay-alice')")
        conn.execute("SELECT count(*) FROM shadow_rows")
        conn.execute("DELETE FROM shadow_rows WHERE owner = 'replay-alice'")
        conn.execute("DELETE FROM shadow_rows WHERE owner = 'nobody'", prepare=True)  # extended protocol: PARSE
        conn.execute("WITH gone AS (DELETE FROM shadow_rows WHERE owner = 'x' RETURNING 1) SELECT count(*) FROM gone")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("TRUNCATE shadow_rows")
    shadow.wait_for(lambda: decisions(shadow, "alice", "TRUNCATE"))
    stricter = write_manifests(tmp_path / "pr", pg, STRICTER)
    live = shadow.manifests

    out = replay("--access-log", str(shadow.log_path), "--against", str(stricter), "--allow-plaintext-secrets",
                 "-o", "json")
    assert out.returncode == 1, out.stderr
    report = json.loads(out.stdout)
    alice = next(p for p in report["pairs"] if (p["user"], p["service"]) == ("alice", "shadowed"))
    assert (alice["allowToDeny"], alice["denyToAllow"]) == (3, 1)
    assert alice["replayed"] >= 6  # the six statements (psycopg may add its own)
    first = alice["allowToDenyExamples"][0]
    assert first["statement"] == "DELETE FROM shadow_rows WHERE owner = 'replay-alice'"
    assert first["before"] == ("ALLOW (allow-all/everything; would deny (AUDIT): no-deletes-yet/deletes)")
    assert first["after"] == "DENY (no-deletes-yet/deletes)"
    assert alice["denyToAllowExamples"][0]["before"] == "DENY (no-truncate/truncate)"
    for password in pg.passwords.values():
        assert password not in out.stdout

    text = replay("--access-log", str(shadow.log_path), "--against", str(stricter), "--allow-plaintext-secrets")
    assert text.returncode == 1, text.stderr
    assert "alice · shadowed · " in text.stdout and "ALLOW → DENY 3 · DENY → ALLOW 1" in text.stdout
    assert "  ALLOW → DENY  " in text.stdout
    assert "QUERY DELETE FROM shadow_rows WHERE owner = 'replay-alice'" in text.stdout

    # The policies the proxy runs decide every request as it did: nothing changes, exit 0.
    same = replay("--access-log", str(shadow.log_path), "--against", str(live), "--allow-plaintext-secrets")
    assert same.returncode == 0, same.stdout + same.stderr
    assert "no request would be decided differently" in same.stdout


def test_replay_against_a_git_ref(shadow: ProxyHarness, pg: Any, tmp_path: Path) -> None:
    with psycopg.connect(shadow.dsn("ci-bot", "shadowed"), autocommit=True) as conn:
        conn.execute("DELETE FROM shadow_rows WHERE owner = 'ci-bot-ref'")
    shadow.wait_for(lambda: decisions(shadow, "ci-bot", "ci-bot-ref"))
    repo = tmp_path / "repo"
    write_manifests(repo / "m", pg, STRICTER)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "stricter"], check=True)
    write_manifests(repo / "m", pg, LIVE)  # the working tree differs: the ref must be what is read
    out = replay("--access-log", str(shadow.log_path), "--against", "main", "--allow-plaintext-secrets", "-o",
                 "markdown", str(repo / "m"))
    assert out.returncode == 1, out.stderr
    assert "### Replay of the access log" in out.stdout
    assert "| ci-bot | shadowed |" in out.stdout
    assert "at main (" in out.stdout


def test_replay_could_not_run(tmp_path: Path) -> None:
    missing = replay("--access-log", str(tmp_path / "nope.log"), str(tmp_path))
    assert missing.returncode == 2 and "no such access log" in missing.stderr
    log = tmp_path / "a.log"
    log.write_text("")
    no_ref = replay("--access-log", str(log), "--against", "no-such-ref", str(tmp_path))
    assert no_ref.returncode == 2 and "not inside a git repository" in no_ref.stderr

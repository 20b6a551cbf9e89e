"""Review tools and shadow mode: explain and access mark AUDIT rules, name routing rules; replay's skip rules;
the access log and OpenTelemetry record of a wouldDeny."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from proxy.audit.accesslog import AccessLog, AccessLogWriter
from proxy.audit.otel import otel_attributes, summary
from reconciler.access import access_matrix, keyless_snapshot
from reconciler.load import load_directory
from reconciler.replay import GATE, NO_TEXT, RECHECK, replay

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = """\
kind: Service
metadata: {name: shop}
spec:
  mode: POSTGRES
  authorization: {policies: [allow-all, no-deletes-yet]}
  dynamicConfig:
    configs:
      - name: writer
        upstream: {url: "postgres://127.0.0.1:5432"}
        postgres: {user: writer, database: shop, auth: {password: {fromSecret: pw}}, authorization: {mode: ALL}}
      - name: reader
        upstream: {url: "postgres://127.0.0.1:5432"}
        postgres: {user: reader, database: shop, auth: {password: {fromSecret: pw}}, authorization: {mode: ALL}}
    rules:
      - name: admins-write
        condition: {match: '"admins" in ctx.user.spec.groups'}
        configName: writer
      - condition: {matchAny: true}
        configName: reader
---
kind: Policy
metadata: {name: allow-all}
spec:
  rules:
    - {name: everything, effect: ALLOW, priority: 4, condition: {matchAny: true}}
---
kind: Policy
metadata: {name: no-deletes-yet}
spec:
  enforcement: AUDIT
  rules:
    - name: deletes
      effect: DENY
      condition: {match: 'ctx.request.postgres.statement.kinds.exists(k, k == "DELETE")'}
---
kind: Group
metadata: {name: admins}
---
kind: User
metadata: {name: ann}
spec: {type: HUMAN, groups: [admins]}
---
kind: User
metadata: {name: bo}
spec: {type: HUMAN, groups: []}
---
kind: Secret
metadata: {name: pw}
data: {value: not-a-real-password}
"""


def repo(tmp_path: Path) -> Path:
    (tmp_path / "all.yaml").write_text(MANIFESTS)
    return tmp_path


def pgwarden(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pgwarden", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=120, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


def test_explain_marks_the_audit_rule_and_names_the_routing_rule(tmp_path: Path) -> None:
    out = pgwarden("explain", "--user", "ann", "--service", "shop", "--query", "DELETE FROM orders",
                   "--allow-plaintext-secrets", str(repo(tmp_path)))
    assert out.returncode == 0, out.stderr  # allowed: AUDIT never blocks
    lines = out.stdout.splitlines()
    assert "  rule admins-write → writer: \"admins\" in ctx.user.spec.groups: MATCH" in lines
    assert "  rule 2 → reader: matchAny: true: not tried (rule admins-write matched)" in lines
    assert any(line.startswith("config writer (rule admins-write (configName writer)") for line in lines)
    assert "  1. no-deletes-yet/deletes (DENY, priority 0, AUDIT: never blocks): matches  ← would deny (AUDIT)" in lines
    assert "  2. allow-all/everything (ALLOW, priority 4): matches  ← decides" in lines
    assert lines[-1] == "ALLOW (allow-all/everything; would deny (AUDIT): no-deletes-yet/deletes)"
    read = pgwarden("explain", "--user", "bo", "--service", "shop", "--query", "SELECT 1",
                    "--allow-plaintext-secrets", str(repo(tmp_path)))
    assert read.stdout.splitlines()[-1] == "ALLOW (allow-all/everything)"


def test_access_shows_what_an_audit_policy_would_deny(tmp_path: Path) -> None:
    matrix = access_matrix(keyless_snapshot(load_directory(repo(tmp_path))))
    cell = matrix.cell("bo", "shop")
    assert cell is not None
    assert cell.connect.outcome.by.startswith("rule 2 (configName reader);")
    write = cell.statements["write"]
    assert write.decision == "CONDITIONAL"  # INSERT and UPDATE pass; DELETE would be denied, but is allowed
    assert write.outcomes[("AAL1", 0, 2)].by == "allow-all/everything; would deny (AUDIT): no-deletes-yet/deletes"
    assert {o.verdict for o in write.outcomes.values()} == {"ALLOW"}
    ann = matrix.cell("ann", "shop")
    assert ann is not None and ann.connect.outcome.by.startswith("rule admins-write (configName writer);")


def _line(kind: str, postgres: dict[str, Any], common: dict[str, Any] | None = None) -> str:
    return json.dumps({"metadata": {"createdAt": "2026-12-07T10:00:00.000000Z"}, "entry": {
        "common": {"connectionID": "c", "user": "bo", "service": "shop", "aal": "AAL1", "authMethod": "token",
                   **(common or {})}, "info": {"postgres": {"type": kind, **postgres}}}})


def test_replay_skips_what_it_cannot_re_decide_and_says_why(tmp_path: Path) -> None:
    snapshot = keyless_snapshot(load_directory(repo(tmp_path)))
    lines = [
        _line("QUERY", {"query": {"query": None}}),  # --log-queries none
        _line("QUERY", {"query": {"query": "DELETE FROM t WHERE id = $1"}}, {"queryText": "normalized"}),
        _line("EXECUTE", {"execute": {"query": "SELECT 1", "name": ""}}),
        _line("QUERY", {"query": {"query": "SELECT 'é'"}, "decision": {
            "status": "DENIED", "policy": "", "rule": "", "reason": "query text ... cannot be checked"}}),
        "not json",
        _line("QUERY", {"query": {"query": "SELECT 1"}, "decision": {
            "status": "ALLOWED", "policy": "allow-all", "rule": "everything", "reason": "..."}}),
        _line("FUNCTION_CALL", {"functionCall": {"oid": 1299}, "decision": {
            "status": "DENIED", "policy": "", "rule": "", "reason": "no rule matched: denied by default"}}),
    ]
    result = replay(lines, snapshot)
    assert result.skipped == {NO_TEXT: 2, RECHECK: 1, GATE: 1,
                              "not an access-log record (unreadable JSON or another shape)": 1}
    pair = result.pairs[("bo", "shop")]
    assert (pair.replayed, pair.to_deny, pair.to_allow) == (2, 0, 1)  # the FunctionCall: now allowed by allow-all
    assert pair.to_allow_examples[0].text == "FunctionCall OID 1299"


def test_a_would_deny_is_in_the_json_line_and_the_otel_attributes(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    writer = AccessLogWriter(path)
    emitted: list[tuple[str, Any, Any]] = []

    class Sink:
        def emit(self, entry_id: str, common: Any, postgres: Any) -> None:
            emitted.append((entry_id, common, postgres))

        def close(self) -> None:
            pass

    session = AccessLog(writer, sinks=[Sink()]).session("c1", {"user": "bo", "service": "shop"})
    session.decision("QUERY", {"query": "DELETE FROM t"}, is_allowed=True, policy="allow-all", rule="everything",
                     reason="ok", would_deny=("no-deletes-yet", "deletes"))
    session.decision("QUERY", {"query": "SELECT 1"}, is_allowed=True, policy="allow-all", rule="everything",
                     reason="ok")
    writer.close()
    first, second = [json.loads(line)["entry"]["info"]["postgres"]["decision"]
                     for line in path.read_text().splitlines()]
    assert first == {"status": "ALLOWED", "policy": "allow-all", "rule": "everything", "reason": "ok",
                     "wouldDeny": {"policy": "no-deletes-yet", "rule": "deletes"}}
    assert "wouldDeny" not in second
    attributes = otel_attributes(*emitted[0])
    assert attributes["pgwarden.postgres.decision.wouldDeny.policy"] == "no-deletes-yet"
    assert attributes["pgwarden.postgres.decision.wouldDeny.rule"] == "deletes"
    assert attributes["pgwarden.postgres.decision.status"] == "ALLOWED"
    assert summary(emitted[0][1], emitted[0][2], is_denied=False) == (
        "QUERY ALLOWED bo -> shop by policy allow-all, rule everything; AUDIT policy no-deletes-yet, rule deletes "
        "would deny: ok")

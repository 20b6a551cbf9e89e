"""Connect-time Policy decisions through the real proxy: a DENY refuses the connection naming policy and rule,
and a reload that turns a live session's connect decision into DENY ends it with a FATAL naming the policy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from reconciler.directory import load_snapshot
from tests.support.proxy_harness import MANIFESTS, ProxyHarness, start_harness, write_manifests

GUARDED = """
---
kind: Service
metadata:
  name: guarded
spec:
  mode: POSTGRES
  authorization:
    policies: [connect-gate]
  config:
    upstream:
      url: "postgres://{host}:{port}"
    postgres:
      user: read_only
      database: my_db
      sslMode: REQUIRE
      auth:
        password:
          fromSecret: read-only-password
---
kind: Policy
metadata:
  name: connect-gate
spec:
  rules:
    - name: no-workloads
      effect: DENY
      condition:
        match: 'ctx.user.spec.type == "WORKLOAD" || ctx.user.metadata.name == attrs.blocked'
    - name: humans
      effect: ALLOW
      condition:
        matchAny: true
  attrs:
    blocked: nobody
"""


@pytest.fixture(scope="module")
def gated(pg: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyHarness]:
    harness, stop = start_harness(pg, tmp_path_factory.mktemp("policy-connect"), manifests_text=MANIFESTS + GUARDED)
    yield harness
    stop()


def snapshot_blocking(pg: Any, directory: Path, user: str) -> Any:
    text = (MANIFESTS + GUARDED).replace("blocked: nobody", f"blocked: {user}")
    return load_snapshot(write_manifests(directory, pg, text))


def test_deny_at_connect_names_policy_and_rule_and_is_logged(gated: ProxyHarness) -> None:
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(gated.dsn("ci-bot", "guarded"))
    message = str(err.value)
    assert 'access to service "guarded" denied by policy "connect-gate" rule "no-workloads"' in message
    denied = [e["entry"]["common"] for e in gated.log_entries() if e["entry"]["common"].get("status") == "DENIED"]
    assert any(c["user"] == "ci-bot" and 'policy "connect-gate" rule "no-workloads"' in c["reason"] for c in denied)


def test_allowed_connection_records_the_deciding_rule(gated: ProxyHarness) -> None:
    with psycopg.connect(gated.dsn("alice", "guarded")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("read_only",)
    assert any('allowed by policy "connect-gate" rule "humans"' in str(e) for e in gated.log_entries())


def test_services_without_policies_are_unaffected(gated: ProxyHarness) -> None:
    with psycopg.connect(gated.dsn("ci-bot", "my-db")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("full_access",)


def test_reload_that_denies_a_live_session_ends_it_with_fatal_naming_the_policy(
    gated: ProxyHarness, pg: Any, tmp_path: Path
) -> None:
    blocking_alice = snapshot_blocking(pg, tmp_path / "block", "alice")
    try:
        with psycopg.connect(gated.dsn("alice", "guarded")) as alice, \
                psycopg.connect(gated.dsn("bob", "guarded")) as bob:
            alice.execute("BEGIN")
            alice.execute("SELECT 1")
            gated.apply(blocking_alice)
            gated.wait_for(lambda: not any(s["user"] == "alice" for s in gated.running.server.session_list()))
            with pytest.raises(psycopg.Error) as err:
                alice.execute("SELECT 1")
            assert err.value.diag.severity_nonlocalized == "FATAL"
            assert err.value.diag.sqlstate == "42501"
            assert 'policy "connect-gate" rule "no-workloads"' in str(err.value)
            assert bob.execute("SELECT current_user").fetchone() == ("read_only",)  # still allowed, still served
        with pytest.raises(psycopg.OperationalError, match='policy "connect-gate"'):
            psycopg.connect(gated.dsn("alice", "guarded"))
    finally:
        gated.reload_from(gated.manifests)
    with psycopg.connect(gated.dsn("alice", "guarded")) as again:
        assert again.execute("SELECT 1").fetchone() == (1,)

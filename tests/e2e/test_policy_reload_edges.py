"""Reloads that must not leave a live session with less checking than the new configuration asks for.

(a) A Service switched from authorization mode NONE to ALL: sessions opened unchecked are ended with a FATAL
    that says per-query checks were turned on and to reconnect; the new session's queries are checked.
(b) A Credential removed or disabled: the identity Sessions it issued are revoked (their tokens stop
    working) and their database connections end.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from identity.store.base import AuthMethod, utc_now
from tests.support.proxy_harness import MANIFESTS, ProxyHarness, start_harness, write_manifests

CLIENT_SECRET = secrets.token_hex(24)  # never expected in any output

EDGES = MANIFESTS + """\
---
kind: Service
metadata: {{name: reporting}}
spec:
  mode: POSTGRES
  authorization: {{policies: [reads-only]}}
  config:
    upstream: {{url: "postgres://{host}:{port}"}}
    postgres: {{user: full_access, database: my_db, auth: {{password: {{fromSecret: full-access-password}}}},
               authorization: {{mode: NONE}}}}
---
kind: Policy
metadata: {{name: reads-only}}
spec:
  rules:
    - name: no-writes
      effect: DENY
      condition: {{match: 'ctx.request.postgres.statement.readOnly == false'}}
    - name: rest
      effect: ALLOW
      priority: 4
      condition: {{matchAny: true}}
---
kind: Credential
metadata: {{name: deploy-job}}
spec: {{user: ci-bot, secret: {{fromSecret: deploy-job-secret}}}}
---
kind: Credential
metadata: {{name: nightly-job}}
spec: {{user: ci-bot, secret: {{fromSecret: deploy-job-secret}}}}
---
kind: Secret
metadata: {{name: deploy-job-secret}}
data: {{value: "@CLIENT_SECRET@"}}
""".replace("@CLIENT_SECRET@", CLIENT_SECRET)

CHECKED = EDGES.replace("authorization: {{mode: NONE}}", "authorization: {{mode: ALL}}")
DEPLOY_JOB = """---
kind: Credential
metadata: {{name: deploy-job}}
spec: {{user: ci-bot, secret: {{fromSecret: deploy-job-secret}}}}
"""
WITHOUT_DEPLOY_JOB = EDGES.replace(DEPLOY_JOB, "")
DEPLOY_JOB_DISABLED = EDGES.replace(
    "spec: {{user: ci-bot, secret: {{fromSecret: deploy-job-secret}}}}\n---\nkind: Credential\nmetadata: {{name: "
    "nightly-job}}",
    "spec: {{user: ci-bot, secret: {{fromSecret: deploy-job-secret}}, isDisabled: true}}\n---\nkind: Credential\n"
    "metadata: {{name: nightly-job}}")


@pytest.fixture(scope="module")
def edges(pg: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyHarness]:
    assert WITHOUT_DEPLOY_JOB != EDGES and DEPLOY_JOB_DISABLED != EDGES and CHECKED != EDGES
    harness, stop = start_harness(pg, tmp_path_factory.mktemp("reload-edges"), manifests_text=EDGES, name="edges")
    yield harness
    stop()


def reload_text(harness: ProxyHarness, pg: Any, directory: Path, text: str) -> None:
    harness.reload_from(write_manifests(directory, pg, text))


def test_turning_per_query_checks_on_ends_unchecked_sessions(edges: ProxyHarness, pg: Any, tmp_path: Path) -> None:
    try:
        with psycopg.connect(edges.dsn("bob", "reporting"), autocommit=True) as unchecked, \
                psycopg.connect(edges.dsn("bob", "my-db"), autocommit=True) as elsewhere:
            unchecked.execute("CREATE TEMP TABLE scratch (x int)")  # mode NONE: writes pass unchecked
            reload_text(edges, pg, tmp_path / "checked", CHECKED)
            edges.wait_for(lambda: not any(s["service"] == "reporting" for s in edges.running.server.session_list()))
            with pytest.raises(psycopg.Error) as ended:
                unchecked.execute("INSERT INTO scratch VALUES (1)")
            assert ended.value.diag.severity_nonlocalized == "FATAL"
            assert ended.value.diag.sqlstate == "42501"
            message = str(ended.value)
            assert "per-query checks were turned on" in message and "reconnect" in message
            assert elsewhere.execute("SELECT 1").fetchone() == (1,)  # a Service still in mode NONE is untouched
        with psycopg.connect(edges.dsn("bob", "reporting"), autocommit=True) as checked:
            assert checked.execute("SELECT count(*) > 0 FROM items").fetchone() == (True,)
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match='rule "no-writes"'):
                checked.execute("CREATE TEMP TABLE scratch (x int)")
            assert checked.execute("SELECT 1").fetchone() == (1,)
    finally:
        edges.reload_from(edges.manifests)


def client_credentials_session(harness: ProxyHarness, client: str) -> tuple[str, str]:
    """(session id, token) as POST /v1/auth/token issues them for `client` (idp is the client_id)."""
    coro = harness.running.server.identity.issue_token("ci-bot", ttl_s=600, method=AuthMethod.CLIENT_CREDENTIALS,
                                                       idp=client)
    session, token = harness.run(coro)
    return session.id, token


@pytest.mark.parametrize("change", ["removed", "disabled"])
def test_retiring_a_credential_revokes_its_sessions_and_ends_their_connections(
    edges: ProxyHarness, pg: Any, tmp_path: Path, change: str
) -> None:
    deploy_id, deploy_token = client_credentials_session(edges, "deploy-job")
    nightly_id, nightly_token = client_credentials_session(edges, "nightly-job")
    unused_id, unused_token = client_credentials_session(edges, "deploy-job")  # no connection open
    store = edges.running.server.identity.store
    try:
        with psycopg.connect(edges.dsn("ci-bot", token=deploy_token), autocommit=True) as deploy, \
                psycopg.connect(edges.dsn("ci-bot", token=nightly_token), autocommit=True) as nightly:
            assert deploy.execute("SELECT 1").fetchone() == (1,)
            text = WITHOUT_DEPLOY_JOB if change == "removed" else DEPLOY_JOB_DISABLED
            reload_text(edges, pg, tmp_path / change, text)
            edges.wait_for(lambda: edges.run(store.get_session(unused_id)).state(utc_now()) == "REVOKED")
            with pytest.raises(psycopg.OperationalError) as ended:
                deploy.execute("SELECT 2")
            assert f"client deploy-job {'was removed' if change == 'removed' else 'is disabled'}" in str(ended.value)
            assert nightly.execute("SELECT 3").fetchone() == (3,)  # another client's session keeps going
        for token in (deploy_token, unused_token):
            with pytest.raises(psycopg.OperationalError, match="revoked"):
                psycopg.connect(edges.dsn("ci-bot", token=token))
        assert edges.run(store.get_session(nightly_id)).state(utc_now()) == "ACTIVE"
        assert edges.run(store.get_session(deploy_id)).state(utc_now()) == "REVOKED"
    finally:
        edges.reload_from(edges.manifests)
    log_text = edges.log_path.read_text()
    assert CLIENT_SECRET not in log_text and deploy_token not in log_text


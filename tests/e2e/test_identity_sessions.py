"""Every token is bound to an identity Session: revoking it refuses the token and ends its connections."""

from __future__ import annotations

import subprocess
import sys

import psycopg
import pytest

from identity.store.base import utc_now
from tests.support.proxy_harness import ProxyHarness

PGWARDEN = [sys.executable, "-m", "pgwarden"]


def cli(proxy: ProxyHarness, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PGWARDEN, *args, "--admin-socket", str(proxy.running.admin_socket)],
                          capture_output=True, text=True, timeout=60)


def test_token_issue_cli_binds_a_session_and_checks_the_user(proxy: ProxyHarness) -> None:
    out = cli(proxy, "token", "issue", "--user", "bob", "--ttl", "10m")
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    with psycopg.connect(proxy.dsn("bob", token=token)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("read_only",)
    refused = cli(proxy, "token", "issue", "--user", "mallory")
    assert refused.returncode == 1 and 'user "mallory" does not exist' in refused.stderr


def test_revoking_a_session_ends_its_connections_and_refuses_its_token(proxy: ProxyHarness) -> None:
    session, token = proxy.issue("bob")
    _, other_token = proxy.issue("bob")
    with psycopg.connect(proxy.dsn("bob", token=token)) as doomed, \
            psycopg.connect(proxy.dsn("bob", token=other_token)) as unaffected:
        listing = cli(proxy, "sessions", "list", "--user", "bob")
        assert session.id in listing.stdout
        out = cli(proxy, "sessions", "revoke", session.id)
        assert out.returncode == 0 and "ended 1 database connection" in out.stdout, out.stdout + out.stderr
        proxy.wait_for(lambda: not any(s["identitySession"] == session.id
                                       for s in proxy.running.server.session_list()))
        with pytest.raises(psycopg.Error, match="session revoked") as err:
            doomed.execute("SELECT 1")
        assert err.value.diag.severity_nonlocalized == "FATAL"
        assert unaffected.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(psycopg.OperationalError, match="session of this access token is revoked"):
        psycopg.connect(proxy.dsn("bob", token=token))


def test_revoke_all_sessions_of_a_user(proxy: ProxyHarness) -> None:
    _, token = proxy.issue("ci-bot")
    with psycopg.connect(proxy.dsn("ci-bot", token=token)) as conn:
        out = cli(proxy, "sessions", "revoke", "--user", "ci-bot")
        assert out.returncode == 0 and "ended 1" in out.stdout
        proxy.wait_for(lambda: not any(s["user"] == "ci-bot" for s in proxy.running.server.session_list()))
        with pytest.raises(psycopg.Error, match="session revoked"):
            conn.execute("SELECT 1")


def test_token_without_a_session_is_refused(proxy: ProxyHarness) -> None:
    bare = proxy.running.server.identity.tokens.issue("bob", ttl_s=600)
    with pytest.raises(psycopg.OperationalError, match="not bound to a session"):
        psycopg.connect(proxy.dsn("bob", token=bare))


def test_expired_session_refuses_its_token(proxy: ProxyHarness) -> None:
    store = proxy.running.server.identity.store
    session = proxy.run(store.create_session(user="bob", idp="pgwarden", method="token", aal=1, ttl_s=1,
                                             now=utc_now().replace(year=2020)))
    token = proxy.running.server.identity.tokens.issue("bob", ttl_s=600, session_id=session.id)
    with pytest.raises(psycopg.OperationalError, match="session of this access token is expired"):
        psycopg.connect(proxy.dsn("bob", token=token))

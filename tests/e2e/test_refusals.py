"""Refusals: a clear PostgreSQL error, the right SQLSTATE, a DENIED access-log entry, no secret echoed."""

from __future__ import annotations

import psycopg
import pytest

from identity.tokens import TokenAuthority
from tests.support.proxy_harness import ProxyHarness


def refusal(dsn: str) -> psycopg.OperationalError:
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(dsn, connect_timeout=10)
    return err.value


def test_expired_token_refused(proxy: ProxyHarness) -> None:
    token = proxy.running.server.identity.tokens.issue("alice", ttl_s=1, now=0)
    err = refusal(proxy.dsn("alice", token=token))
    assert "access token has expired" in str(err)
    assert token not in str(err)


def test_forged_token_refused(proxy: ProxyHarness, tmp_path) -> None:  # type: ignore[no-untyped-def]
    forged = TokenAuthority.load_or_create(tmp_path).issue("alice", ttl_s=600)
    err = refusal(proxy.dsn("alice", token=forged))
    assert "signature is not valid" in str(err)


def test_garbage_password_refused(proxy: ProxyHarness) -> None:
    err = refusal(proxy.dsn("alice", token="hunter2"))
    assert "not a pgwarden access token" in str(err)


def test_token_refused_over_plaintext(proxy: ProxyHarness) -> None:
    token = proxy.token("alice")
    err = refusal(proxy.dsn("alice", token=token, sslmode="disable"))
    assert "only over TLS" in str(err)


def test_unknown_service(proxy: ProxyHarness) -> None:
    err = refusal(proxy.dsn("alice", "no-such-db"))
    assert 'service "no-such-db" does not exist' in str(err)
    assert "my-db" in str(err)  # the hint lists what exists, to an authenticated user


def test_disabled_user_refused(proxy: ProxyHarness) -> None:
    err = refusal(proxy.dsn("carol"))
    assert 'user "carol" is disabled' in str(err)


def test_unknown_user_refused(proxy: ProxyHarness) -> None:
    err = refusal(proxy.dsn("mallory"))
    assert 'user "mallory" does not exist' in str(err)


def test_refusals_are_logged_denied_without_the_token(proxy: ProxyHarness) -> None:
    token = proxy.running.server.identity.tokens.issue("alice", ttl_s=1, now=0)
    refusal(proxy.dsn("alice", token=token))
    refusal(proxy.dsn("carol"))
    entries = proxy.log_entries()
    denied = [e for e in entries if e["entry"]["common"]["status"] == "DENIED"]
    reasons = " | ".join(e["entry"]["common"]["reason"] for e in denied)
    assert "access token has expired" in reasons and 'user "carol" is disabled' in reasons
    assert all(e["entry"]["info"]["postgres"]["type"] == "SESSION_START" for e in denied)
    assert token not in proxy.log_path.read_text()

"""The admin API on its unix socket: state without secrets, atomic apply, sessions, health."""

from __future__ import annotations

import json
import os
import stat

import psycopg
import pytest

from pgwarden.adminclient import call
from proxy.snapshot_wire import to_wire
from reconciler.directory import load_snapshot
from tests.support.proxy_harness import ProxyHarness


async def admin(proxy: ProxyHarness, method: str, path: str, body: object | None = None) -> tuple[int, dict]:
    # Blocking is fine here: the harness's proxy runs on its own loop in another thread.
    data = None if body is None else (body if isinstance(body, str) else json.dumps(body))
    return call(proxy.running.admin_socket, method, path, body=data)


async def test_socket_is_private(proxy: ProxyHarness) -> None:
    mode = stat.S_IMODE(os.stat(proxy.running.admin_socket).st_mode)
    assert mode == 0o600


async def test_state_shows_fingerprints_never_secret_values(proxy: ProxyHarness, pg) -> None:  # type: ignore[no-untyped-def]
    status, state = await admin(proxy, "GET", "/v1/state")
    assert status == 200
    assert set(state["services"]) >= {"my-db", "legacy-md5"}
    assert state["secrets"]["full-access-password"]["fingerprint"].startswith("hmac-sha256:")
    text = json.dumps(state)
    for password in pg.passwords.values():
        assert password not in text


@pytest.mark.usefixtures("fresh_snapshot")
async def test_put_state_applies_and_bad_body_changes_nothing(proxy: ProxyHarness) -> None:
    _, health = await admin(proxy, "GET", "/healthz")
    before = health["generation"]
    wire = to_wire(load_snapshot(proxy.manifests), fingerprint_key=b"k", include_secrets=True)
    status, applied = await admin(proxy, "PUT", "/v1/state", wire)
    assert status == 200 and applied["generation"] == before + 1
    status, err = await admin(proxy, "PUT", "/v1/state", "{not json")
    assert status == 400 and "malformed snapshot" in err["error"]
    broken = dict(wire, services={"x": {"configs": [{"name": "default", "upstream": {"url": "http://nope"},
                                                      "postgres": {}}]}})
    status, err = await admin(proxy, "PUT", "/v1/state", broken)
    assert status == 400 and "postgres://" in err["error"]
    _, health = await admin(proxy, "GET", "/healthz")
    assert health["generation"] == before + 1


async def test_sessions_lists_live_sessions(proxy: ProxyHarness) -> None:
    async with await psycopg.AsyncConnection.connect(proxy.dsn("ci-bot")) as conn:
        await conn.execute("SELECT 1")
        _, body = await admin(proxy, "GET", "/v1/sessions")
        mine = [s for s in body["sessions"] if s["user"] == "ci-bot"]
        assert mine and mine[0]["config"] == "default" or mine[0]["upstream_user"] == "full_access"

"""Snapshot reload: unrelated changes leave sessions alone; lost access ends them with a FATAL."""

from __future__ import annotations

import psycopg
import pytest

from reconciler.directory import load_snapshot
from tests.support.proxy_harness import MANIFESTS, ProxyHarness, write_manifests


def edited(tmp_path, pg, old: str, new: str):  # type: ignore[no-untyped-def]
    def escaped(text: str) -> str:  # MANIFESTS is a str.format template
        return text.replace("{", "{{").replace("}", "}}")

    assert escaped(old) in MANIFESTS
    return load_snapshot(write_manifests(tmp_path / "m", pg, MANIFESTS.replace(escaped(old), escaped(new))))


@pytest.mark.usefixtures("fresh_snapshot")
def test_session_mid_transaction_survives_50_unrelated_reloads(proxy: ProxyHarness, pg, tmp_path) -> None:  # type: ignore[no-untyped-def]
    a = edited(tmp_path / "a", pg, "mechanisms: [MD5]", "mechanisms: [SCRAM_SHA_256, MD5]")
    b = load_snapshot(proxy.manifests)
    with psycopg.connect(proxy.dsn("alice")) as conn:
        conn.execute("INSERT INTO items(name) VALUES ('during reloads')")
        first = proxy.running.server.live.generation
        for i in range(50):
            proxy.apply(a if i % 2 == 0 else b)
        assert proxy.running.server.live.generation == first + 50
        conn.execute("INSERT INTO items(name) VALUES ('during reloads 2')")
        conn.commit()
        assert conn.execute("SELECT count(*) FROM items WHERE name LIKE 'during reloads%'").fetchone()[0] >= 2  # type: ignore[index]


@pytest.mark.usefixtures("fresh_snapshot")
def test_disabling_the_user_ends_the_session_with_fatal(proxy: ProxyHarness, pg, tmp_path) -> None:  # type: ignore[no-untyped-def]
    disabled = edited(tmp_path, pg, "spec: {type: HUMAN, email: bob@example.com, groups: []}",
                      "spec: {type: HUMAN, email: bob@example.com, groups: [], isDisabled: true}")
    with psycopg.connect(proxy.dsn("bob")) as conn:
        conn.execute("BEGIN")
        conn.execute("SELECT 1")
        proxy.apply(disabled)
        proxy.wait_for(lambda: not any(s["user"] == "bob" for s in proxy.running.server.session_list()))
        with pytest.raises(psycopg.Error) as err:
            conn.execute("SELECT 1")
        assert 'user "bob" is disabled' in str(err.value)
        assert err.value.diag.severity_nonlocalized == "FATAL"
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    assert any(
        e["entry"]["info"]["postgres"]["type"] == "SESSION_END"
        and "disabled" in e["entry"]["info"]["postgres"]["end"]["reason"]
        for e in proxy.log_entries()
    )


@pytest.mark.usefixtures("fresh_snapshot")
def test_group_change_that_changes_routing_ends_the_session(proxy: ProxyHarness, pg, tmp_path) -> None:  # type: ignore[no-untyped-def]
    demoted = edited(tmp_path, pg, "spec: {type: HUMAN, email: alice@example.com, groups: [admins]}",
                     "spec: {type: HUMAN, email: alice@example.com, groups: []}")
    with psycopg.connect(proxy.dsn("alice")) as admin, psycopg.connect(proxy.dsn("bob")) as bystander:
        proxy.apply(demoted)
        proxy.wait_for(lambda: not any(s["user"] == "alice" for s in proxy.running.server.session_list()))
        with pytest.raises(psycopg.Error, match="routing changed") as err:
            admin.execute("SELECT 1")
        assert err.value.diag.severity_nonlocalized == "FATAL"
        assert bystander.execute("SELECT current_user").fetchone() == ("read_only",)
    with psycopg.connect(proxy.dsn("alice")) as again:
        assert again.execute("SELECT current_user").fetchone() == ("read_only",)

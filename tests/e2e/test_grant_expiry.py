"""Grant windows are enforced by the running proxy at the boundary, with no commit and no reload asked for.

The clock is the proxy's own (proxy.policy.timefns): a test moves it, and either lets the real timer fire a
second or two later or fires it at once. No sleeps: every wait polls for the outcome with a deadline.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from proxy.policy import timefns
from reconciler.directory import load_snapshot
from tests.support.gitops import ManifestRepo, UpProcess
from tests.support.proxy_harness import MANIFESTS, ProxyHarness, write_manifests

BOB = "spec: {type: HUMAN, email: bob@example.com, groups: []}"
UTC = datetime.UTC


def with_bob_groups(tmp_path: Any, pg: Any, groups: str) -> Any:
    """The fixture manifests with bob's spec.groups replaced (MANIFESTS is a str.format template)."""
    new = f"spec: {{type: HUMAN, email: bob@example.com, groups: {groups}}}"
    text = MANIFESTS.replace(BOB.replace("{", "{{").replace("}", "}}"), new.replace("{", "{{").replace("}", "}}"))
    assert text != MANIFESTS
    return load_snapshot(write_manifests(tmp_path / "m", pg, text))


def whole_second(delta: datetime.timedelta) -> datetime.datetime:
    return (datetime.datetime.now(UTC) + delta).replace(microsecond=0)


@pytest.fixture
def clock() -> Iterator[Callable[[datetime.datetime], None]]:
    """`clock(at)`: the proxy's clock reads `at` now and runs on from there in real time."""
    def move(at: datetime.datetime) -> None:
        offset = at - datetime.datetime.now(UTC)
        timefns.set_clock(lambda: datetime.datetime.now(UTC) + offset)

    yield move
    timefns.set_clock(None)


def current_user(proxy: ProxyHarness, user: str) -> str:
    with psycopg.connect(proxy.dsn(user)) as conn:
        return str(conn.execute("SELECT current_user").fetchone()[0])  # type: ignore[index]


def ended(proxy: ProxyHarness, user: str) -> Callable[[], bool]:
    return lambda: not any(s["user"] == user for s in proxy.running.server.session_list())


@pytest.mark.usefixtures("fresh_snapshot")
def test_expiry_ends_the_session_at_the_boundary_and_the_next_connection_routes_lower(
        proxy: ProxyHarness, pg: Any, tmp_path: Any, clock: Callable[[datetime.datetime], None]) -> None:
    until = whole_second(datetime.timedelta(hours=1))
    proxy.apply(with_bob_groups(tmp_path, pg, f'[{{name: engineering, validUntil: "{until.isoformat()}"}}]'))
    server = proxy.running.server
    generation = server.live.generation
    with psycopg.connect(proxy.dsn("bob")) as conn, psycopg.connect(proxy.dsn("alice")) as bystander:
        assert conn.execute("SELECT current_user").fetchone() == ("full_access",)
        clock(until - datetime.timedelta(seconds=1.5))
        proxy.call(server.grant_timer.arm, server.live)  # the capped wait, re-armed under the moved clock
        assert server.live.generation == generation  # nothing happens before the boundary
        proxy.wait_for(ended(proxy, "bob"), timeout_s=30)
        assert timefns.current_time() >= until
        assert server.live.generation == generation + 1  # re-evaluated exactly once, as a reload is
        with pytest.raises(psycopg.Error) as err:
            conn.execute("SELECT 1")
        assert err.value.diag.severity_nonlocalized == "FATAL"
        message = str(err.value)
        assert f'the grant group "engineering" of user "bob" expired at {until.isoformat().replace("+00:00", "Z")}' \
            in message
        assert 'routing changed (now config "read-only")' in message
        assert bystander.execute("SELECT current_user").fetchone() == ("full_access",)  # alice keeps admins
    assert current_user(proxy, "bob") == "read_only"
    ends = [e["entry"]["info"]["postgres"]["end"]["reason"] for e in proxy.log_entries()
            if e["entry"]["info"]["postgres"]["type"] == "SESSION_END" and e["entry"]["info"]["postgres"].get("end")]
    assert any('group "engineering" of user "bob" expired' in reason for reason in ends)


@pytest.mark.usefixtures("fresh_snapshot")
def test_a_membership_from_the_future_routes_low_until_it_starts(
        proxy: ProxyHarness, pg: Any, tmp_path: Any) -> None:
    start = whole_second(datetime.timedelta(days=2))
    proxy.apply(with_bob_groups(tmp_path, pg, f'[{{name: engineering, validFrom: "{start.isoformat()}"}}]'))
    server = proxy.running.server
    assert server.live.next_boundary == start
    with psycopg.connect(proxy.dsn("bob")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("read_only",)
        with timefns.fixed_clock(start):
            proxy.call(server.grant_timer.fire, server.live)
            proxy.wait_for(ended(proxy, "bob"), timeout_s=30)
            with pytest.raises(psycopg.Error, match='group "engineering" of user "bob" took effect'):
                conn.execute("SELECT 1")
            assert current_user(proxy, "bob") == "full_access"
            assert server.live.next_boundary is None
    # Without the moved clock the membership is in the future again: a reload (any swap) judges it anew.
    proxy.apply(server.live.snapshot)
    assert current_user(proxy, "bob") == "read_only"


def test_status_lists_the_grants_expiring_within_a_day(pg: Any, tmp_path: Any) -> None:
    soon, later = whole_second(datetime.timedelta(hours=3)), whole_second(datetime.timedelta(days=3))
    repo = ManifestRepo(tmp_path, pg)
    repo.write_defaults(alice_groups=f'{{name: admins, validUntil: "{soon.isoformat()}"}}')
    repo.write("oncall.yaml", "kind: Group\nmetadata: {name: oncall}\n---\nkind: User\nmetadata: {name: erin}\n"
                              f'spec: {{groups: [{{name: oncall, validUntil: "{later.isoformat()}"}}]}}\n')
    commit = repo.commit("initial")
    up = UpProcess(repo.url, tmp_path / "data", "--age-key-file", str(repo.key_file), "--poll-interval", "3600")
    try:
        up.wait_applied(commit)
        with psycopg.connect(up.dsn("alice")) as conn:  # the grant is in force: alice routes to full-access
            assert conn.execute("SELECT current_user").fetchone() == ("full_access",)
        out = up.cli("status")
        assert out.returncode == 0, out.stdout + out.stderr
        lines = out.stdout.splitlines()
        section = lines[lines.index("grants expiring within 24 h:") + 1:]
        assert len(section) == 1  # erin's grant ends in three days: not listed
        assert section[0].startswith(f'  group "admins" of user "alice": until {Z(soon)} (in 2 h 5')
        listed = json.loads(up.cli("status", "-o", "json").stdout)["expiringGrants"]
        assert [(g["grant"], g["validUntil"]) for g in listed] == [('group "admins" of user "alice"', Z(soon))]
    finally:
        up.stop()
        repo.work.close()  # GitPython's persistent `git cat-file` processes


def Z(at: datetime.datetime) -> str:  # noqa: N802 - reads as the suffix it adds
    return at.isoformat().replace("+00:00", "Z")


FREEZE = """\
---
kind: Service
metadata: {{name: frozen-db}}
spec:
  mode: POSTGRES
  config:
    upstream: {{url: "postgres://{host}:{port}"}}
    postgres: {{user: full_access, database: my_db, auth: {{password: {{fromSecret: full-access-password}}}},
               authorization: {{mode: ALL}}}}
  authorization: {{policies: [migration-freeze]}}
---
kind: Policy
metadata: {{name: migration-freeze}}
spec:
  rules:
    - name: no-writes-during-migration
      effect: DENY
      validFrom: "@START@"
      validUntil: "@END@"
      condition: {{match: ctx.request.postgres.statement.readOnly == false}}
    - {{name: everything-else, effect: ALLOW, priority: 4, condition: {{matchAny: true}}}}
"""


@pytest.mark.usefixtures("fresh_snapshot")
def test_a_policy_rule_decides_queries_only_inside_its_window(proxy: ProxyHarness, pg: Any, tmp_path: Any) -> None:
    start = whole_second(datetime.timedelta(days=1))
    end = start + datetime.timedelta(hours=2)
    text = MANIFESTS + FREEZE.replace("@START@", start.isoformat()).replace("@END@", end.isoformat())
    proxy.apply(load_snapshot(write_manifests(tmp_path / "m", pg, text)))
    server = proxy.running.server
    insert = "INSERT INTO items(name) VALUES ('during the freeze test')"
    pg.psql("DELETE FROM items WHERE name = 'during the freeze test'", database="my_db")
    with psycopg.connect(proxy.dsn("bob", "frozen-db"), autocommit=True) as conn:
        conn.execute(insert)  # before the window: the rule does not exist yet
        with timefns.fixed_clock(start):
            generation = server.live.generation
            proxy.call(server.grant_timer.fire, server.live)
            proxy.wait_for(lambda: server.live.generation == generation + 1, timeout_s=30)
            with pytest.raises(psycopg.errors.InsufficientPrivilege,
                               match='denied by policy "migration-freeze", rule "no-writes-during-migration"'):
                conn.execute(insert)
            assert conn.execute("SELECT count(*) FROM items WHERE name = 'during the freeze test'").fetchone() == (1,)
        with timefns.fixed_clock(end):  # the same session, still open: the rule ends at validUntil
            proxy.call(server.grant_timer.fire, server.live)
            proxy.wait_for(lambda: server.live.generation == generation + 2, timeout_s=30)
            conn.execute(insert)
    assert pg.psql("SELECT count(*) FROM items WHERE name = 'during the freeze test'", database="my_db").strip() == "2"

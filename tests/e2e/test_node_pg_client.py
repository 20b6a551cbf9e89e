"""node-postgres (npm `pg`) as an unmodified client: TLS login with a token, routing, per-query policy, cancel.

tests/clients/pg_probe.mjs runs a list of steps on one pg Client and prints what the application saw (values,
SQLSTATE codes, the transaction status of each ReadyForQuery) as JSON lines. Where PostgreSQL's own behaviour
is the reference, the same steps run directly against PostgreSQL and the two results are compared.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_query_policy import DENIED, POLICIES, REFUSED_WRITE, item_count
from tests.support.proxy_harness import ProxyHarness, start_harness

ROOT = Path(__file__).resolve().parents[2]
PROBE = ROOT / "tests" / "clients" / "pg_probe.mjs"


@pytest.fixture(scope="module")
def node() -> str:
    """The node binary; a missing node or `pg` package fails with what to install (.ci/run installs both)."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node-postgres tests need Node.js: apt-get install nodejs npm (see .ci/run)")
    if not (ROOT / "node_modules" / "pg" / "package.json").is_file():
        pytest.fail("node-postgres tests need the `pg` package: run `npm ci` in the repository root (see .ci/run)")
    return node


@pytest.fixture(scope="module")
def guarded(pg: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyHarness]:
    """The per-query policy service of test_query_policy.py, on a proxy of this module's own."""
    pg.psql("CREATE SCHEMA IF NOT EXISTS pgw_private; CREATE TABLE IF NOT EXISTS pgw_private.t (x int);")
    harness, stop = start_harness(pg, tmp_path_factory.mktemp("node-pg-policy"), manifests_text=POLICIES,
                                  name="node-pg")
    yield harness
    stop()


def run_probe(node: str, connection: dict[str, Any], password: str,
              steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run the steps on one pg Client; one result dict per step."""
    out = subprocess.run([node, str(PROBE)], input=json.dumps({"connection": connection, "steps": steps}),
                         env={**os.environ, "PGW_PASSWORD": password}, capture_output=True, text=True, timeout=120,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert password not in out.stdout + out.stderr
    results = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(results) == len(steps), out.stderr
    return results


def through_proxy(node: str, proxy: ProxyHarness, user: str, service: str,
                  steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # An IP address as host: pg sends no SNI, checks the certificate's IP entry, and the database name alone
    # selects the service, as with psql.
    assert proxy.running.ca_path is not None
    connection = {"host": "127.0.0.1", "port": proxy.port, "user": user, "database": service,
                  "caFile": str(proxy.running.ca_path)}
    return run_probe(node, connection, proxy.token(user), steps)


def direct(node: str, pg: Any, role: str, steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    connection = {"host": pg.host, "port": pg.port, "user": role, "database": "my_db",
                  "caFile": str(pg.ca_cert_path), "servername": "localhost"}
    return run_probe(node, connection, pg.passwords[role], steps)


def query(sql: str, *params: Any, **options: str) -> dict[str, Any]:
    return {"op": "query", "sql": sql, **({"params": list(params)} if params else {}), **options}


# --- TLS token login and identity routing ------------------------------------------------------------------


def test_admins_user_lands_as_full_access_over_verified_tls_and_can_insert(
    node: str, proxy: ProxyHarness, pg: Any
) -> None:
    results = through_proxy(node, proxy, "alice", "my-db", [
        query("SELECT current_user || '@' || current_database()"),
        query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"),
        query("INSERT INTO items(name) VALUES ($1)", "node-alice"),
    ])
    assert [r["ok"] for r in results] == [True, True, True], results
    assert results[0]["value"] == "full_access@my_db" and results[1]["value"] == "true"
    assert (results[2]["command"], results[2]["rowCount"]) == ("INSERT", 1)
    assert item_count(pg, "node-alice") >= 1


def test_plain_user_lands_as_read_only_and_postgres_refuses_the_insert(
    node: str, proxy: ProxyHarness, pg: Any
) -> None:
    results = through_proxy(node, proxy, "bob", "my-db", [
        query("SELECT current_user"),
        query("INSERT INTO items(name) VALUES ($1)", "node-bob"),
        query("SELECT count(*) > 0 FROM items"),
    ])
    assert results[0]["value"] == "read_only"
    assert (results[1]["ok"], results[1]["code"]) == (False, "42501") and "permission denied" in results[1]["message"]
    assert results[2]["value"] == "true"
    assert item_count(pg, "node-bob") == 0


def test_wrong_token_is_refused_without_echoing_it(node: str, proxy: ProxyHarness) -> None:
    assert proxy.running.ca_path is not None
    connection = {"host": "127.0.0.1", "port": proxy.port, "user": "alice", "database": "my-db",
                  "caFile": str(proxy.running.ca_path)}
    out = subprocess.run([node, str(PROBE)], input=json.dumps({"connection": connection, "steps": []}),
                         env={**os.environ, "PGW_PASSWORD": "not-a-real-token-7d1e"}, capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 2, out.stderr
    refused = json.loads(out.stdout)
    assert refused["code"] == "28000" and refused["message"] == "password is not a pgwarden access token"
    assert "not-a-real-token-7d1e" not in out.stdout + out.stderr


# --- per-query policy (authorization mode ALL) ---------------------------------------------------------------


def test_parameterized_named_and_simple_denials_and_the_connection_goes_on(
    node: str, guarded: ProxyHarness, pg: Any
) -> None:
    steps = [
        query("INSERT INTO items(name) VALUES ($1)", "node-denied"),  # unnamed extended protocol
        query("INSERT INTO items(name) VALUES ('node-denied')"),  # simple Query
        query("SELECT count(*) >= $1::int FROM items", 0, name="count-items"),  # named: prepared once,
        query("SELECT count(*) >= $1::int FROM items", 0, name="count-items"),  # then Bind/Execute only
        query("INSERT INTO items(name) VALUES ($1)", "node-denied", name="add-item"),
        query("UPDATE items SET name = $1 WHERE id = $2::int", "node-denied", 1),
        query("SELECT $1::int + 1", 41),
        query("SELECT 'still here'"),
    ]
    results = through_proxy(node, guarded, "bob", "guarded", steps)
    denied = [results[i] for i in (0, 1, 4, 5)]
    assert all((r["ok"], r["code"], r["tx"]) == (False, "42501", "IDLE") for r in denied), denied
    assert all(DENIED in r["message"] for r in denied)
    assert results[2]["value"] == results[3]["value"] == "true"
    assert results[6]["value"] == "42" and results[7]["value"] == "still here"
    assert item_count(pg, "node-denied") == 0


@pytest.mark.parametrize("mode", ["simple", "extended"])
def test_denial_inside_a_transaction_aborts_it_like_postgresql(
    node: str, guarded: ProxyHarness, pg: Any, mode: str
) -> None:
    def steps(marker: str) -> list[dict[str, Any]]:
        sqls = ["BEGIN", f"INSERT INTO items(name) VALUES ('{marker}')", REFUSED_WRITE, "SELECT 1", "COMMIT",
                "SELECT 2"]
        return [query(sql, **({"mode": "extended"} if mode == "extended" else {})) for sql in sqls]

    def outcome(results: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [(r["ok"], r.get("code"), r.get("command"), r["tx"]) for r in results]

    seen_direct = direct(node, pg, "full_access", steps(f"node-tx-direct-{mode}"))
    seen_proxied = through_proxy(node, guarded, "alice", "guarded", steps(f"node-tx-proxied-{mode}"))
    assert outcome(seen_direct) == [
        (True, None, "BEGIN", "INTRANS"), (True, None, "INSERT", "INTRANS"), (False, "42501", None, "INERROR"),
        (False, "25P02", None, "INERROR"), (True, None, "ROLLBACK", "IDLE"), (True, None, "SELECT", "IDLE")]
    assert outcome(seen_proxied) == outcome(seen_direct)
    assert DENIED in seen_proxied[2]["message"]
    assert item_count(pg, f"node-tx-direct-{mode}") == 0 and item_count(pg, f"node-tx-proxied-{mode}") == 0


# --- cancel ----------------------------------------------------------------------------------------------


def test_client_cancel_stops_pg_sleep_and_the_connection_goes_on(node: str, proxy: ProxyHarness) -> None:
    # pg's Client.cancel() sends the CancelRequest over a new plain TCP connection (pg never uses TLS for it).
    results = through_proxy(node, proxy, "bob", "my-db", [
        {"op": "cancel", "sql": "SELECT pg_sleep(30)", "delayMs": 1000}, query("SELECT 'after cancel'")])
    assert (results[0]["ok"], results[0]["code"]) == (False, "57014"), results
    assert "canceling statement due to user request" in results[0]["message"]
    assert results[1]["value"] == "after cancel"

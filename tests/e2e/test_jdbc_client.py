"""The PostgreSQL JDBC driver (pgjdbc) as an unmodified client: TLS login with a token, routing, policy, cancel.

tests/clients/JdbcProbe.java is compiled once per module with javac and driven step by step; it prints what
the application saw (values, SQLSTATEs, pgjdbc's transaction state) as JSON lines. Where PostgreSQL's own
behaviour is the reference, the same steps run directly against PostgreSQL and the two results are compared.
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

from tests.e2e.test_query_policy import DENIED, POLICIES, REFUSED_WRITE, denials, item_count
from tests.support.proxy_harness import ProxyHarness, start_harness

DRIVER = Path("/usr/share/java/postgresql.jar")
PROBE = Path(__file__).resolve().parents[1] / "clients" / "JdbcProbe.java"


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The compiled probe; a missing JDK or driver fails with what to install (.ci/run installs both)."""
    missing = [what for what, ok in [("default-jdk-headless (javac)", shutil.which("javac") and shutil.which("java")),
                                     (f"libpostgresql-jdbc-java ({DRIVER})", DRIVER.is_file())] if not ok]
    if missing:
        pytest.fail(f"JDBC client tests need: apt-get install {', '.join(missing)} (see .ci/run)")
    out = tmp_path_factory.mktemp("jdbc-probe")
    javac = subprocess.run(["javac", "-d", str(out), "-cp", str(DRIVER), str(PROBE)],
                           capture_output=True, text=True, timeout=120)
    assert javac.returncode == 0, javac.stderr
    return out


@pytest.fixture(scope="module")
def guarded(pg: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyHarness]:
    """The per-query policy service of test_query_policy.py, on a proxy of this module's own."""
    pg.psql("CREATE SCHEMA IF NOT EXISTS pgw_private; CREATE TABLE IF NOT EXISTS pgw_private.t (x int);")
    harness, stop = start_harness(pg, tmp_path_factory.mktemp("jdbc-policy"), manifests_text=POLICIES, name="jdbc")
    yield harness
    stop()


def jdbc_url(port: int, database: str, ca: Path, **extra: str) -> str:
    params = {"sslmode": "verify-full", "sslrootcert": str(ca), **extra}
    return f"jdbc:postgresql://localhost:{port}/{database}?" + "&".join(f"{k}={v}" for k, v in params.items())


def run_probe(probe_dir: Path, url: str, user: str, password: str, steps: list[list[str]]) -> list[dict[str, Any]]:
    """Run the steps in one JDBC connection; one result dict per step."""
    env = {**os.environ, "PGW_USER": user, "PGW_PASSWORD": password}
    out = subprocess.run(["java", "-cp", f"{DRIVER}:{probe_dir}", "JdbcProbe", url],
                         input="".join("\t".join(step) + "\n" for step in steps), env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert password not in out.stdout + out.stderr
    results = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(results) == len(steps), out.stderr
    return results


def through_proxy(probe_dir: Path, proxy: ProxyHarness, user: str, service: str, steps: list[list[str]],
                  **extra: str) -> list[dict[str, Any]]:
    assert proxy.running.ca_path is not None
    return run_probe(probe_dir, jdbc_url(proxy.port, service, proxy.running.ca_path, **extra), user,
                     proxy.token(user), steps)


def direct(probe_dir: Path, pg: Any, role: str, steps: list[list[str]], **extra: str) -> list[dict[str, Any]]:
    return run_probe(probe_dir, jdbc_url(pg.port, "my_db", pg.ca_cert_path, **extra), role, pg.passwords[role],
                     steps)


# --- TLS token login and identity routing ------------------------------------------------------------------


def test_admins_user_lands_as_full_access_over_verified_tls_and_can_insert(
    probe_dir: Path, proxy: ProxyHarness, pg: Any
) -> None:
    results = through_proxy(probe_dir, proxy, "alice", "my-db", [
        ["execute", "SELECT current_user || '@' || current_database()"],
        ["execute", "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"],
        ["prepared", "INSERT INTO items(name) VALUES (?)", "jdbc-alice"],
    ])
    assert [r["ok"] for r in results] == [True, True, True], results
    assert results[0]["value"] == "full_access@my_db"
    assert results[2]["value"] == 1
    assert item_count(pg, "jdbc-alice") >= 1


def test_plain_user_lands_as_read_only_and_postgres_refuses_the_insert(
    probe_dir: Path, proxy: ProxyHarness, pg: Any
) -> None:
    results = through_proxy(probe_dir, proxy, "bob", "my-db", [
        ["execute", "SELECT current_user"],
        ["prepared", "INSERT INTO items(name) VALUES (?)", "jdbc-bob"],
        ["execute", "SELECT count(*) > 0 FROM items"],
    ])
    assert results[0]["value"] == "read_only"
    assert (results[1]["ok"], results[1]["sqlstate"]) == (False, "42501")
    assert "permission denied" in results[1]["message"]
    assert results[2]["value"] == "t"
    assert item_count(pg, "jdbc-bob") == 0


def test_wrong_token_is_refused_without_echoing_it(probe_dir: Path, proxy: ProxyHarness) -> None:
    assert proxy.running.ca_path is not None
    env = {**os.environ, "PGW_USER": "alice", "PGW_PASSWORD": "not-a-real-token-5f2c"}
    out = subprocess.run(["java", "-cp", f"{DRIVER}:{probe_dir}", "JdbcProbe",
                          jdbc_url(proxy.port, "my-db", proxy.running.ca_path)],
                         input="", env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    refused = json.loads(out.stdout)
    assert refused["sqlstate"] == "28000" and "password is not a pgwarden access token" in refused["message"]
    assert "pgwarden token issue" in refused["message"]  # the hint reaches a JDBC application too
    assert "not-a-real-token-5f2c" not in out.stdout + out.stderr


# --- per-query policy (authorization mode ALL) ---------------------------------------------------------------


def test_named_server_side_statement_then_denied_insert_and_the_connection_goes_on(
    probe_dir: Path, guarded: ProxyHarness, pg: Any
) -> None:
    select = "SELECT count(*) >= ?::int FROM items"
    insert = "INSERT INTO items(name) VALUES (?)"
    steps = [["prepared", select, "0"] for _ in range(7)]  # pgjdbc's prepareThreshold is 5
    steps += [["execute", "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE 'SELECT count(*) >= $1%'"]]
    steps += [["prepared", insert, "jdbc-denied"] for _ in range(6)]  # denied at each Parse, named ones too
    steps += [["prepared", select, "0"], ["execute", "SELECT 41 + 1"]]
    results = through_proxy(probe_dir, guarded, "bob", "guarded", steps)
    assert all(r["ok"] and r["value"] == "t" for r in results[:7]), results[:7]
    assert results[6]["serverPrepare"] is True
    assert results[7]["value"] == "1"  # the upstream session holds pgjdbc's named statement
    denied = results[8:14]
    assert all((r["ok"], r["sqlstate"], r["tx"]) == (False, "42501", "IDLE") for r in denied), denied
    assert all(DENIED in r["message"] for r in denied)
    assert denied[-1]["serverPrepare"] is True
    assert results[14]["value"] == "t" and results[15]["value"] == "42"
    assert item_count(pg, "jdbc-denied") == 0
    # The access log shows pgjdbc's named Parse (S_1, S_2, ...) of the INSERT being refused, not only unnamed ones.
    named_insert = {"name": "S_", "query": "INSERT INTO items(name) VALUES ($1)"}
    guarded.wait_for(lambda: any(d["parse"].get("name", "").startswith(named_insert["name"])
                                 and d["parse"]["query"] == named_insert["query"] for d in denials(guarded, "PARSE")))


def transaction_steps(marker: str) -> list[list[str]]:
    return [["autocommit", "off"], ["prepared", "INSERT INTO items(name) VALUES (?)", marker],
            ["execute", REFUSED_WRITE], ["execute", "SELECT 1"], ["commit"], ["execute", "SELECT 2"]]


def outcome(results: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(r["step"], r["ok"], r.get("sqlstate"), r.get("value"), r["tx"]) for r in results]


@pytest.mark.parametrize("mode", ["extended", "simple"])
def test_denial_inside_a_transaction_aborts_it_like_postgresql(
    probe_dir: Path, guarded: ProxyHarness, pg: Any, mode: str
) -> None:
    seen_direct = direct(probe_dir, pg, "full_access", transaction_steps(f"jdbc-tx-direct-{mode}"),
                         preferQueryMode=mode)
    seen_proxied = through_proxy(probe_dir, guarded, "alice", "guarded", transaction_steps(f"jdbc-tx-proxied-{mode}"),
                                 preferQueryMode=mode)
    assert outcome(seen_direct) == [
        ("autocommit", True, None, None, "IDLE"), ("prepared", True, None, 1, "OPEN"),
        ("execute", False, "42501", None, "FAILED"), ("execute", False, "25P02", None, "FAILED"),
        ("commit", True, None, None, "IDLE"), ("execute", True, None, "2", "OPEN")]
    assert outcome(seen_proxied) == outcome(seen_direct)
    assert DENIED in seen_proxied[2]["message"]
    assert item_count(pg, f"jdbc-tx-direct-{mode}") == 0 and item_count(pg, f"jdbc-tx-proxied-{mode}") == 0


# --- cancel ----------------------------------------------------------------------------------------------


def test_statement_cancel_stops_pg_sleep_and_the_connection_goes_on(probe_dir: Path, proxy: ProxyHarness) -> None:
    results = through_proxy(probe_dir, proxy, "bob", "my-db", [
        ["cancel", "SELECT pg_sleep(30)", "1000"], ["execute", "SELECT 'after cancel'"]])
    assert (results[0]["ok"], results[0]["sqlstate"]) == (False, "57014"), results
    assert "canceling statement due to user request" in results[0]["message"]
    assert results[1]["value"] == "after cancel"

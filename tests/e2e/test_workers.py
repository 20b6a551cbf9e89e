"""`pgwarden proxy --workers 2`: connections spread over both workers, a SIGHUP reload reaches both, and a
cancel (psycopg, psql Ctrl-C) stops the query whichever worker owns the session and whichever gets the cancel.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgwarden.adminclient import call
from tests.support.proxy_harness import write_manifests

PGWARDEN = [sys.executable, "-m", "pgwarden"]
NEW_SERVICE = """\
kind: Service
metadata: {{name: added-by-reload}}
spec:
  mode: POSTGRES
  config:
    upstream: {{url: "postgres://{host}:{port}"}}
    postgres: {{user: read_only, database: my_db, auth: {{password: {{fromSecret: read-only-password}}}},
               sslMode: REQUIRE}}
"""


@dataclass
class Workers:
    proc: subprocess.Popen[str]
    port: int
    data_dir: Path
    manifests: Path
    log: Path
    pids: list[int]

    def admin(self, index: int) -> Path:
        return self.data_dir / ("admin.sock" if index == 0 else f"admin-{index}.sock")

    def sessions(self, index: int) -> list[dict[str, Any]]:
        status, body = call(self.admin(index), "GET", "/v1/sessions")
        assert status == 200, body
        return list(body["sessions"])

    def owner(self, conn: psycopg.Connection[Any]) -> int:
        """The worker serving `conn`, found by its client port in each worker's session list."""
        client = f"127.0.0.1:{_local_port(conn)}"
        owners = [i for i in (0, 1) if any(s["client_address"] == client for s in self.sessions(i))]
        assert len(owners) == 1, (client, owners)
        return owners[0]

    def token(self, user: str) -> str:
        return subprocess.run([*PGWARDEN, "token", "issue", "--user", user, "--ttl", "1h", "--data-dir",
                               str(self.data_dir)], capture_output=True, text=True, timeout=30,
                              check=True).stdout.strip()


def _local_port(conn: psycopg.Connection[Any]) -> int:
    sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
    try:
        return int(sock.getsockname()[1])
    finally:
        sock.close()


@pytest.fixture(scope="module")
def workers(pg: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    base = tmp_path_factory.mktemp("workers")
    manifests = write_manifests(base / "manifests", pg)
    data_dir, log = base / "data", base / "pgwarden.log"
    with log.open("w") as err:
        proc = subprocess.Popen([*PGWARDEN, "proxy", "--manifests", str(manifests), "--listen", "127.0.0.1:0",
                                 "--data-dir", str(data_dir), "--access-log", str(base / "access.log"),
                                 "--workers", "2"], stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        match = re.search(r"listening on 127\.0\.0\.1:(\d+), .* 2 workers \(pids (\d+), (\d+)\)", ready)
        assert match, (ready, log.read_text())
        yield Workers(proc=proc, port=int(match.group(1)), data_dir=data_dir, manifests=manifests, log=log,
                      pids=[int(match.group(2)), int(match.group(3))])
    finally:
        proc.terminate()
        proc.communicate(timeout=30)  # also closes the stdout pipe
    assert proc.returncode == 0, log.read_text()
    for secret in pg.passwords.values():
        assert secret not in log.read_text() and secret not in (base / "access.log").read_text()


def _dsn(workers: Workers, token: str, service: str = "my-db") -> str:
    return f"host=127.0.0.1 port={workers.port} dbname={service} sslmode=require user=bob password='{token}'"


def test_connections_are_spread_over_both_workers(workers: Workers) -> None:
    token = workers.token("bob")
    conns = [psycopg.connect(_dsn(workers, token)) for _ in range(12)]
    try:
        assert all(c.execute("SELECT 1").fetchone() == (1,) for c in conns)
        per_worker = [len(workers.sessions(i)) for i in (0, 1)]
        assert sum(per_worker) == 12 and min(per_worker) > 0, per_worker
        assert all(p != workers.proc.pid for p in workers.pids)  # the parent serves nothing itself
    finally:
        for c in conns:
            c.close()


def test_psycopg_cancel_reaches_the_owning_worker_from_either_worker(workers: Workers) -> None:
    token = workers.token("bob")
    owners: set[int] = set()
    # A cancel arrives on a new connection that either worker may accept; go on until both owned a cancelled
    # session and both forwarded a cancel to the other (each try is a coin flip, so 30 tries always suffice).
    for _ in range(30):
        with psycopg.connect(_dsn(workers, token)) as conn:
            owners.add(workers.owner(conn))
            timer = threading.Timer(0.3, conn.cancel_safe)
            timer.start()
            with pytest.raises(psycopg.errors.QueryCanceled, match="canceling statement due to user request"):
                conn.execute("SELECT pg_sleep(30)")
            conn.rollback()
            assert conn.execute("SELECT 1").fetchone() == (1,)
        forwarded = set(re.findall(r"forwarded a cancel request to worker (\d)", workers.log.read_text()))
        if owners == {0, 1} and forwarded == {"0", "1"}:
            return
    pytest.fail(f"owners seen {owners}, forwards seen {forwarded}")


def test_a_cancel_forwarded_to_a_sibling_worker_has_reached_the_server_when_its_connection_closes(
        workers: Workers) -> None:
    # libpq returns from a cancel when its connection closes and sends the next query; PostgreSQL closes only
    # after signalling the backend. A cancel sent while idle must be spent by then, whichever worker took it
    # (tests/e2e/test_cancel_request.py has the single-process case).
    forwards_before = workers.log.read_text().count("forwarded a cancel request to worker")
    with psycopg.connect(_dsn(workers, workers.token("bob")), autocommit=True) as conn:
        for attempt in range(30):
            conn.cancel_safe(timeout=15)
            try:
                assert conn.execute("SELECT pg_sleep(0.05), 1").fetchone() == ("", 1)
            except psycopg.errors.QueryCanceled:
                pytest.fail(f"attempt {attempt}: a cancel sent while idle cancelled the next query")
    forwards = workers.log.read_text().count("forwarded a cancel request to worker") - forwards_before
    assert forwards, "no cancel went through a sibling in 30 tries; the test did not cover forwarding"


def test_psql_ctrl_c_cancels_on_either_worker(workers: Workers, pg: Any) -> None:
    env = {**os.environ, "PGPASSWORD": workers.token("bob")}
    dsn = f"host=127.0.0.1 port={workers.port} dbname=my-db sslmode=require user=bob application_name=ctrl-c"
    owners: set[int] = set()
    for _ in range(20):
        before = [len(workers.sessions(i)) for i in (0, 1)]
        psql = subprocess.Popen(["psql", dsn, "-Xc", "SELECT pg_sleep(30)"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 10
        while [len(workers.sessions(i)) for i in (0, 1)] == before and time.monotonic() < deadline:
            time.sleep(0.05)
        now = [len(workers.sessions(i)) for i in (0, 1)]
        owners |= {i for i in (0, 1) if now[i] > before[i]}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and pg.psql(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                "AND query = 'SELECT pg_sleep(30)'").strip() == "0":
            time.sleep(0.05)  # Ctrl-C before the query is running would cancel nothing
        psql.send_signal(signal.SIGINT)
        _, stderr = psql.communicate(timeout=15)
        assert "canceling statement due to user request" in stderr
        if owners == {0, 1}:
            return
    pytest.fail(f"psql sessions only ever landed on worker(s) {owners}")


def test_sighup_reload_reaches_both_workers(workers: Workers, pg: Any) -> None:
    generations = [call(workers.admin(i), "GET", "/v1/state")[1]["generation"] for i in (0, 1)]
    (workers.manifests / "added.yaml").write_text(NEW_SERVICE.format(host=pg.host, port=pg.port))

    workers.proc.send_signal(signal.SIGHUP)

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        states = [call(workers.admin(i), "GET", "/v1/state")[1] for i in (0, 1)]
        if all(s["generation"] > g for s, g in zip(states, generations, strict=True)):
            break
        time.sleep(0.1)
    for state in states:
        assert "added-by-reload" in state["services"], state.get("generation")
    token = workers.token("bob")
    conns = [psycopg.connect(_dsn(workers, token, "added-by-reload")) for _ in range(8)]
    try:
        assert all(c.execute("SELECT current_user").fetchone() == ("read_only",) for c in conns)
        assert min(len(workers.sessions(i)) for i in (0, 1)) > 0  # both workers served the new Service
    finally:
        for c in conns:
            c.close()


def test_a_dead_worker_stops_the_group_with_a_clear_error(pg: Any, tmp_path: Path) -> None:
    manifests = write_manifests(tmp_path / "manifests", pg)
    proc = subprocess.Popen([*PGWARDEN, "proxy", "--manifests", str(manifests), "--listen", "127.0.0.1:0",
                             "--data-dir", str(tmp_path / "data"), "--access-log", "none", "--workers", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        match = re.search(r"2 workers \(pids (\d+), (\d+)\)", proc.stdout.readline())
        assert match
        first, second = int(match.group(1)), int(match.group(2))

        os.kill(second, signal.SIGKILL)

        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1
    assert "pgwarden: error: worker 1 exited with -9; stopping the others" in stderr
    with pytest.raises(ProcessLookupError):
        os.kill(first, 0)  # worker 0 was stopped and reaped, not left serving alone

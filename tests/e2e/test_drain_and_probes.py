"""SIGTERM drains `pgwarden up`; /livez, /readyz and /healthz tell a balancer the truth.

Real `pgwarden up` processes, real PostgreSQL, real psycopg clients. After SIGTERM: new connections are refused,
an idle session ends at once with FATAL 57P01, a transaction that ends within --drain-timeout commits, one that
does not is ended (and rolled back), a statement still running at the end gets 57P01 too, and the process exits 0.
With --workers the parent passes the drain on; a second SIGTERM ends everything at once.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from proxy.pgwire import messages as m
from tests.support.gitops import ManifestRepo, UpProcess
from tests.support.raw_protocol import raw_login, read_until

BROKEN = "kind: NoSuchKind\nmetadata: {name: broken}\n"


def probe(up: UpProcess, path: str, connection: http.client.HTTPConnection | None = None) -> tuple[int, dict[str, Any]]:
    conn = connection or http.client.HTTPConnection("127.0.0.1", up.http_port, timeout=10)
    conn.request("GET", path)
    response = conn.getresponse()
    body = json.loads(response.read())
    if connection is None:
        conn.close()
    return response.status, body


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def backends(pg: Any, application_name: str) -> list[str]:
    """The states of the upstream backends a client opened (its application_name reaches PostgreSQL)."""
    with psycopg.connect(pg.dsn("postgres"), autocommit=True) as su:
        rows = su.execute("SELECT state FROM pg_stat_activity WHERE application_name = %s",
                          (application_name,)).fetchall()
    return [row[0] for row in rows]


def committed(pg: Any, name: str) -> bool:
    with psycopg.connect(pg.dsn("postgres"), autocommit=True) as su:
        return su.execute("SELECT count(*) FROM items WHERE name = %s", (name,)).fetchone() == (1,)


def shutdown_sqlstate(action: Callable[[], object]) -> str | None:
    """The SQLSTATE of the error `action` meets (the FATAL the proxy sent), or None if it succeeds."""
    try:
        action()
    except psycopg.Error as exc:
        return exc.sqlstate
    return None


class Client:
    """One psycopg session through the proxy, named so its upstream backend can be found as superuser."""

    def __init__(self, up: UpProcess, token: str, name: str) -> None:
        self.name = name
        self.conn = psycopg.connect(f"host=127.0.0.1 port={up.port} dbname=my-db user=alice sslmode=require "
                                    f"password={token} application_name={name}", autocommit=True,
                                    connect_timeout=10)

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def repo(pg: Any, tmp_path: Path) -> ManifestRepo:
    (tmp_path / "repo").mkdir()
    r = ManifestRepo(tmp_path / "repo", pg)
    r.write_defaults()
    return r


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    opened: list[Client] = []
    yield opened
    for client in opened:
        client.close()


def test_probes_and_a_drain_that_loses_no_finished_transaction(repo: ManifestRepo, pg: Any, tmp_path: Path,
                                                               clients: list[Client]) -> None:
    repo.write("broken.yaml", BROKEN)  # the first revision cannot be applied
    repo.commit("broken first")
    up = UpProcess(repo.url, tmp_path / "data", "--age-key-file", str(repo.key_file), "--poll-interval", "1",
                   "--drain-timeout", "8")  # room for the steps below on a loaded CI machine
    try:
        assert probe(up, "/livez") == (200, {"live": True, "reason": "ok"})
        code, body = probe(up, "/readyz")
        assert code == 503 and not body["ready"] and "first revision" in body["reason"]
        assert probe(up, "/healthz") == (503, {"ready": False})  # the JSON stays; the code tells the truth

        (repo.root / "broken.yaml").unlink()
        up.wait_applied(repo.commit("fixed"), timeout_s=30)
        assert probe(up, "/readyz") == (200, {"ready": True, "reason": "ok"})
        assert probe(up, "/healthz") == (200, {"ready": True})

        token = up.token("alice")
        idle, short, long, running = (Client(up, token, f"drain-{n}") for n in ("idle", "short", "long", "running"))
        clients += [idle, short, long, running]
        idle.conn.execute("SELECT 1")
        short.conn.execute("BEGIN")
        short.conn.execute("INSERT INTO items(name) VALUES ('drain-short')")
        long.conn.execute("BEGIN")
        long.conn.execute("INSERT INTO items(name) VALUES ('drain-long')")
        running_error: list[str | None] = []
        sleeper = threading.Thread(target=lambda: running_error.append(
            shutdown_sqlstate(lambda: running.conn.execute("SELECT pg_sleep(30)"))))
        sleeper.start()
        wait_for(lambda: backends(pg, "drain-running") == ["active"], "the running statement")
        keep_alive = http.client.HTTPConnection("127.0.0.1", up.http_port, timeout=10)
        assert probe(up, "/readyz", keep_alive)[0] == 200

        up.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: refuses_connections(up.port), "the PostgreSQL listener to close", timeout_s=5)
        assert refuses_connections(up.http_port)
        code, body = probe(up, "/readyz", keep_alive)  # a connection opened before the drain is still answered
        assert code == 503 and "draining" in body["reason"]
        keep_alive.close()

        # The idle session ends at once; the two open transactions go on.
        wait_for(lambda: backends(pg, "drain-idle") == [], "the idle session to end")
        assert backends(pg, "drain-long") == ["idle in transaction"]
        assert shutdown_sqlstate(lambda: idle.conn.execute("SELECT 1")) == "57P01"

        # A transaction that ends within the drain timeout commits; then its session ends too.
        short.conn.execute("COMMIT")
        assert committed(pg, "drain-short")
        wait_for(lambda: backends(pg, "drain-short") == [], "the finished session to end")
        assert shutdown_sqlstate(lambda: short.conn.execute("SELECT 1")) == "57P01"

        # Past the timeout: the open transaction is ended and rolled back; the running statement gets 57P01 too.
        assert up.proc.wait(timeout=40) == 0
        assert shutdown_sqlstate(lambda: long.conn.execute("COMMIT")) == "57P01"
        assert not committed(pg, "drain-long")
        sleeper.join(20)
        assert running_error == ["57P01"]
        output = "".join(up.output)
        assert "draining: 4 client connections open" in output and "drain timeout: ending 2 sessions" in output
    finally:
        up.stop()


def test_workers_drain_through_the_parent_and_a_second_signal_ends_at_once(repo: ManifestRepo, pg: Any,
                                                                           tmp_path: Path,
                                                                           clients: list[Client]) -> None:
    repo.commit("initial")
    up = UpProcess(repo.url, tmp_path / "data", "--age-key-file", str(repo.key_file), "--workers", "2",
                   "--drain-timeout", "120")
    try:
        token = up.token("alice")
        finishing, stuck = Client(up, token, "workers-finishing"), Client(up, token, "workers-stuck")
        clients += [finishing, stuck]
        for client in (finishing, stuck):
            client.conn.execute("BEGIN")
            client.conn.execute("INSERT INTO items(name) VALUES (%s)", (client.name,))
        assert probe(up, "/readyz")[0] == 200

        up.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: refuses_connections(up.port), "every worker's listener to close", timeout_s=10)
        finishing.conn.execute("COMMIT")  # the worker drains: an open transaction may still finish
        assert committed(pg, "workers-finishing")
        wait_for(lambda: backends(pg, "workers-finishing") == [], "the finished session to end")
        assert backends(pg, "workers-stuck") == ["idle in transaction"]
        assert up.proc.poll() is None  # still draining: the stuck transaction has 120 s

        up.proc.send_signal(signal.SIGTERM)  # a second signal: no more waiting
        assert up.proc.wait(timeout=30) == 0
        assert shutdown_sqlstate(lambda: stuck.conn.execute("COMMIT")) is not None
        assert not committed(pg, "workers-stuck")
        wait_for(lambda: backends(pg, "workers-stuck") == [], "the stuck session's backend to end")
    finally:
        up.stop()


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_requests_pipelined_behind_the_last_answer_finish_before_the_drain_ends_the_session(
        repo: ManifestRepo, pg: Any, tmp_path: Path, protocol: str) -> None:
    """A client that pipelines (psycopg's pipeline mode, JDBC batches) has requests upstream that no
    ReadyForQuery answered yet; ending it at the first answer would leave it not knowing their outcome."""
    up = UpProcess(repo.url, tmp_path / "data", "--age-key-file", str(repo.key_file), "--drain-timeout", "20")
    try:
        up.wait_applied(repo.commit("v1"), timeout_s=30)
        name = f"drain-pipelined-{protocol}"
        sock, seen = raw_login(up.port, {"user": "alice", "database": "my-db", "application_name": name},
                               up.token("alice"))
        assert seen[-1][0] == m.READY_FOR_QUERY, seen
        if protocol == "simple":
            requests = (m.encode_query("SELECT pg_sleep(1)")
                        + m.encode_query(f"INSERT INTO items(name) VALUES ('{name}')"))
        else:
            def run(sql: str) -> bytes:
                return (m.encode_message(m.PARSE, b"\x00" + sql.encode() + b"\x00\x00\x00")
                        + m.encode_message(m.BIND, b"\x00\x00" + b"\x00" * 6)
                        + m.encode_message(m.EXECUTE, b"\x00\x00\x00\x00\x00") + m.encode_message(m.SYNC))
            requests = run("SELECT pg_sleep(1)") + run(f"INSERT INTO items(name) VALUES ('{name}')")
        sock.sendall(requests)  # one write: both are upstream before the first is answered
        wait_for(lambda: backends(pg, name) == ["active"], "the first request to run")
        up.proc.send_signal(signal.SIGTERM)
        seen = read_until(sock, lambda t, _body: t == m.ERROR_RESPONSE)
        sock.close()
        tags = [body.rstrip(b"\x00") for t, body in seen if t == m.COMMAND_COMPLETE]
        assert tags == [b"SELECT 1", b"INSERT 0 1"], seen  # both answered before the session ended
        assert [t for t, _ in seen].count(m.READY_FOR_QUERY) == 2, seen
        fatal = m.parse_error_fields(seen[-1][1])
        assert fatal.code == "57P01", seen
        assert committed(pg, name)
        assert up.proc.wait(timeout=30) == 0
    finally:
        up.stop()

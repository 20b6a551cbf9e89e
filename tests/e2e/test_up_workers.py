"""`pgwarden up --workers 2`: the reconciler in the parent, the proxy in two workers sharing the port.

Connections spread over both workers and the parent's admin socket lists them all; a token from `pgwarden token
issue` works on both; a commit reaches both (same generation, new routing seen by new connections on each);
a worker that cannot take a revision fails the apply and `pgwarden status` names it; a dead worker stops `up`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgwarden.adminclient import call
from tests.support.gitops import ManifestRepo, UpProcess

PGWARDEN = [sys.executable, "-m", "pgwarden"]

HOOK_TOKEN = "hook-token-for-up-workers-tests"
CLIENT_SECRET = "7e1d0c9b8a7f6e5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b0a9f"  # as `openssl rand -hex 24` makes them
WORKLOAD = """\
kind: User
metadata: {name: ci-bot}
spec: {type: WORKLOAD}
---
kind: Credential
metadata: {name: ci-bot-deploy}
spec: {user: ci-bot, type: OAUTH2, secret: {fromSecret: ci-bot-client-secret}}
"""


def post_hook(up: UpProcess) -> int:
    """The webhook on the parent's HTTP listener: it only triggers a fetch."""
    request = urllib.request.Request(f"http://127.0.0.1:{up.http_port}/hooks/git", data=b"{}", method="POST",
                                     headers={"Authorization": f"Bearer {HOOK_TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return int(resp.status)


@pytest.fixture(scope="module")
def repo(pg: Any, tmp_path_factory: pytest.TempPathFactory) -> ManifestRepo:
    r = ManifestRepo(tmp_path_factory.mktemp("up-workers-repo"), pg)
    r.write_defaults()
    r.write("workload.yaml", WORKLOAD)
    r.write_secret("ci-bot-client-secret", CLIENT_SECRET)
    r.commit("initial")
    return r


@pytest.fixture(scope="module")
def up(repo: ManifestRepo, tmp_path_factory: pytest.TempPathFactory, pg: Any) -> Iterator[UpProcess]:
    data_dir = tmp_path_factory.mktemp("up-workers") / "data"
    process = UpProcess(repo.url, data_dir, "--age-key-file", str(repo.key_file), "--poll-interval", "3600",
                        "--workers", "2", env={"PGWARDEN_WEBHOOK_TOKEN": HOOK_TOKEN})
    yield process
    output = process.stop()
    assert process.proc.returncode == 0, output
    for secret in pg.passwords.values():
        for where, text in (("output", output), ("access log", (data_dir / "access.log").read_text()),
                            ("status.json", (data_dir / "status.json").read_text())):
            assert secret not in text, f"a database password leaked into the {where}"
            assert HOOK_TOKEN not in text, f"the webhook token leaked into the {where}"
            assert CLIENT_SECRET not in text, f"the client secret leaked into the {where}"


def worker_pids(up: UpProcess) -> list[int]:
    match = re.search(r"2 workers \(pids (\d+), (\d+)", "".join(up.output))
    assert match, "".join(up.output)
    return [int(match.group(1)), int(match.group(2))]


def worker_socket(up: UpProcess, index: int) -> Path:
    return up.data_dir / f"admin-{index}.sock"


def local_port(conn: psycopg.Connection[Any]) -> int:
    sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
    try:
        return int(sock.getsockname()[1])
    finally:
        sock.close()


def owners(up: UpProcess, conns: list[psycopg.Connection[Any]]) -> list[int]:
    """The worker serving each connection, from the parent's session list (it gathers both workers')."""
    code, body = call(up.data_dir / "admin.sock", "GET", "/v1/sessions")
    assert code == 200, body
    by_client = {s["client_address"]: s["worker"] for s in body["sessions"]}
    return [by_client[f"127.0.0.1:{local_port(c)}"] for c in conns]


def test_connections_spread_over_both_workers_with_one_token(up: UpProcess) -> None:
    dsn = up.dsn("bob")  # one `pgwarden token issue`, signed by the parent, checked by whichever worker
    conns = [psycopg.connect(dsn) for _ in range(12)]
    try:
        assert all(c.execute("SELECT current_user").fetchone() == ("read_only",) for c in conns)
        served_by = owners(up, conns)
        assert sorted(set(served_by)) == [0, 1], served_by  # the kernel hashes the client port: 12 never all land
        for index in (0, 1):  # each worker's own admin socket agrees with the parent's gathered list
            code, body = call(worker_socket(up, index), "GET", "/v1/sessions")
            assert code == 200 and len(body["sessions"]) == served_by.count(index), body
        sessions = json.loads(up.cli("sessions", "list", "--user", "bob", "-o", "json").stdout)
        assert sum(s["databaseConnections"] for s in sessions["sessions"]) == 12, sessions
        assert up.proc.pid not in worker_pids(up)
    finally:
        for c in conns:
            c.close()


def test_a_token_from_pgwarden_login_works_on_both_workers(up: UpProcess, tmp_path: Path) -> None:
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path), "PGWARDEN_CLIENT_ID": "ci-bot-deploy",
           "PGWARDEN_CLIENT_SECRET": CLIENT_SECRET}
    login = subprocess.run([*PGWARDEN, "login", "--cluster", f"http://127.0.0.1:{up.http_port}",
                            "--client-credentials"], capture_output=True, text=True, timeout=60, env=env)
    up.output.append(login.stdout + login.stderr)
    assert login.returncode == 0, login.stderr
    token = login.stdout.strip()  # issued by the parent's auth server, with the data directory's key
    conns = [psycopg.connect(f"host=127.0.0.1 port={up.port} dbname=my-db user=ci-bot sslmode=require "
                             f"password={token}") for _ in range(12)]
    try:
        assert sorted(set(owners(up, conns))) == [0, 1]
        assert all(c.execute("SELECT current_user").fetchone() == ("read_only",) for c in conns)
    finally:
        for c in conns:
            c.close()


def test_revoking_a_session_ends_its_connections_on_both_workers(up: UpProcess) -> None:
    dsn = up.dsn("bob")
    conns = [psycopg.connect(dsn) for _ in range(12)]
    try:
        assert sorted(set(owners(up, conns))) == [0, 1]
        revoked = up.cli("sessions", "revoke", "--user", "bob")
        assert revoked.returncode == 0, revoked.stderr
        # The SQLite store's notice stays in the parent; the parent signals the workers to re-check now,
        # instead of at their next 30 s re-check.
        deadline = time.monotonic() + 10
        alive = list(conns)
        while alive and time.monotonic() < deadline:
            for conn in list(alive):
                try:
                    conn.execute("SELECT 1")
                except psycopg.OperationalError as exc:
                    assert "session revoked" in str(exc), exc
                    alive.remove(conn)
            time.sleep(0.1)
        assert not alive, f"{len(alive)} of 12 connections outlived the revocation"
        with pytest.raises(psycopg.OperationalError, match="revoked"):
            psycopg.connect(dsn)  # a new connection with the revoked token is refused too
    finally:
        for c in conns:
            c.close()


def test_a_commit_reaches_both_workers_at_the_same_generation(up: UpProcess, repo: ManifestRepo) -> None:
    before = [call(worker_socket(up, i), "GET", "/v1/state")[1]["generation"] for i in (0, 1)]
    assert before[0] == before[1] == up.status()["generation"]
    old = [psycopg.connect(up.dsn("alice")) for _ in range(6)]
    try:
        assert all(c.execute("SELECT current_user").fetchone() == ("full_access",) for c in old)
    finally:
        for c in old:
            c.close()

    repo.write_defaults(alice_groups="")  # alice leaves admins: new connections land as read_only
    commit = repo.commit("alice leaves admins")
    assert post_hook(up) == 202
    up.wait_applied(commit)

    after = [call(worker_socket(up, i), "GET", "/v1/state")[1] for i in (0, 1)]
    assert after[0]["generation"] == after[1]["generation"] == before[0] + 1 == up.status()["generation"]
    assert after[0]["revision"] == after[1]["revision"] == up.status()["last_applied_revision"]
    conns = [psycopg.connect(up.dsn("alice")) for _ in range(12)]
    try:
        assert sorted(set(owners(up, conns))) == [0, 1]
        assert all(c.execute("SELECT current_user").fetchone() == ("read_only",) for c in conns)
    finally:
        for c in conns:
            c.close()
    repo.write_defaults()
    commit = repo.commit("alice back in admins")
    up.cli("reconcile", "--with-source")
    up.wait_applied(commit)


def test_an_unreachable_worker_fails_the_apply_and_status_names_it(repo: ManifestRepo, tmp_path: Path) -> None:
    up = UpProcess(repo.url, tmp_path / "data", "--age-key-file", str(repo.key_file), "--poll-interval", "3600",
                   "--workers", "2", "--no-health-probe")
    try:
        first, second = worker_pids(up)
        generation = up.status()["generation"]
        worker_socket(up, 1).unlink()  # worker 1 keeps serving, but the parent can no longer reach it

        repo.write_defaults(note="unreachable")
        commit = repo.commit("while worker 1 is unreachable")
        up.cli("reconcile", "--with-source")
        status = up.wait_attempted(commit)

        assert not status["last_applied_revision"].endswith(commit)
        ready = up.condition("Ready")
        assert ready is not None and ready["status"] == "False"
        assert "worker 1 refused the snapshot" in ready["message"] and "admin-1.sock" in ready["message"], ready
        assert f"worker 1 and later keep generation {generation}" in ready["message"], ready

        os.kill(second, signal.SIGKILL)  # a dead worker takes the group down, with a clear line
        up.proc.wait(30)
        assert up.proc.returncode == 1
        output = up.stop()
        assert "pgwarden: worker 1 exited with -9; stopped the others" in output
        with pytest.raises(ProcessLookupError):
            os.kill(first, 0)  # worker 0 was stopped and reaped, not left serving alone
    finally:
        up.stop()
        repo.write_defaults()
        repo.commit("back to the defaults")

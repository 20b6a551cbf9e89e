"""Three `pgwarden up` replicas behind a real HAProxy (TCP for PostgreSQL, HTTP for the web port, round-robin,
no stickiness), sharing one PostgreSQL state store and one Git source, as a team runs them in Kubernetes.

HAProxy stamps each HTTP answer with the replica that served it (X-Served-By), so the login test can show its
steps landed on different replicas. The measured convergence and revocation times are printed (run with -s).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import psycopg
import pytest

from pgwarden.adminclient import call
from tests.support.gitops import ManifestRepo, UpProcess
from tests.support.peers import OIDC_CLIENT_ID, OIDC_CLIENT_SECRET, Peer, follow_login, start_oidc_provider
from tests.support.pgcluster import free_port
from tests.support.sso import PEOPLE

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
POLL_INTERVAL_S = 3.0
KEY_FILES = ("signing-key.jwk", "state.key", "fingerprint.key")  # what replicas must share besides the store


def _wait(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"{what} within {timeout_s} s")


@dataclass
class Cluster:
    repo: ManifestRepo
    replicas: list[UpProcess]
    peer: Peer
    haproxy: subprocess.Popen[str]
    pg_port: int  # the balancer's PostgreSQL port
    web: str  # the balancer's web URL (also every replica's --public-url)

    def replicas_view(self, up: UpProcess) -> dict[str, Any]:
        code, body = call(up.data_dir / "admin.sock", "GET", "/v1/replicas")
        assert code == 200, body
        return dict(body)

    def dsn(self, user: str, token: str) -> str:
        return (f"host=127.0.0.1 port={self.pg_port} dbname=my-db user={user} sslmode=require password={token} "
                "connect_timeout=10")

    def live(self) -> list[UpProcess]:
        return [r for r in self.replicas if r.proc.poll() is None]


def _haproxy_config(pg_port: int, web_port: int, replicas: list[UpProcess]) -> str:
    pg_servers = "\n".join(f"    server r{i} 127.0.0.1:{r.port}" for i, r in enumerate(replicas))
    web_servers = "\n".join(f"    server r{i} 127.0.0.1:{r.http_port}" for i, r in enumerate(replicas))
    return f"""\
global
    maxconn 512
defaults
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend postgres
    mode tcp
    bind 127.0.0.1:{pg_port}
    default_backend replicas_pg
backend replicas_pg
    mode tcp
    balance roundrobin
{pg_servers}
frontend web
    mode http
    bind 127.0.0.1:{web_port}
    default_backend replicas_web
backend replicas_web
    mode http
    balance roundrobin
    http-response set-header X-Served-By %s
{web_servers}
"""


@pytest.fixture(scope="module")
def cluster(pg: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("replicas-haproxy")
    database = f"pgwarden_state_{secrets.token_hex(4)}"
    pg.psql(f"CREATE DATABASE {database}", database="postgres")
    env = {"PGWARDEN_STATE": pg.dsn("pgwarden_admin", database)}  # a password: never on a command line
    pg_port, web_port, peer_port = free_port(), free_port(), free_port()
    web = f"http://localhost:{web_port}"
    repo = ManifestRepo(base, pg)
    repo.write_defaults()
    repo.write("people.yaml", PEOPLE)
    repo.write("idp.yaml", f"""\
kind: IdentityProvider
metadata: {{name: corp}}
spec:
  oidc:
    issuerURL: "http://localhost:{peer_port}"
    clientID: {OIDC_CLIENT_ID}
    clientSecret: {{fromSecret: corp-oidc-secret}}
""")
    repo.write_secret("corp-oidc-secret", OIDC_CLIENT_SECRET)
    repo.commit("three replicas, one source")
    replicas: list[UpProcess] = []
    haproxy: subprocess.Popen[str] | None = None
    peer: Peer | None = None
    try:
        for i in range(3):
            data_dir = base / f"replica-{i}"
            if replicas:  # the same keys: tokens, sealed state and the proxy's certificate work on every replica
                data_dir.mkdir(mode=0o700)
                for item in replicas[0].data_dir.iterdir():
                    if item.name in KEY_FILES or item.suffix in (".pem", ".crt") or item.name.endswith("key.pem"):
                        shutil.copy2(item, data_dir / item.name)
            replicas.append(UpProcess(repo.url, data_dir, "--age-key-file", str(repo.key_file), "--poll-interval",
                                      str(POLL_INTERVAL_S), "--public-url", web, "--replica-id", f"r{i}", env=env))
        config = base / "haproxy.cfg"
        config.write_text(_haproxy_config(pg_port, web_port, replicas))
        haproxy = subprocess.Popen([HAPROXY, "-db", "-f", str(config)], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        peer = start_oidc_provider(port=peer_port, redirect_uris=[f"{web}/login/oidc/callback"])
        _wait(lambda: _answers(pg_port), 10, "HAProxy did not listen")
        yield Cluster(repo=repo, replicas=replicas, peer=peer, haproxy=haproxy, pg_port=pg_port, web=web)
    finally:
        if peer is not None:
            peer.stop()
        if haproxy is not None:
            haproxy.terminate()
            haproxy.communicate(timeout=10)
        outputs = [r.stop() for r in replicas]
        pg.psql(f"DROP DATABASE {database} WITH (FORCE)", database="postgres")
    for output in outputs:
        assert pg.passwords["pgwarden_admin"] not in output and OIDC_CLIENT_SECRET not in output


def _answers(port: int) -> bool:
    import socket
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def test_every_replica_applies_a_push_and_reports_it(cluster: Cluster) -> None:
    _wait(lambda: all(len(cluster.replicas_view(r)["replicas"]) == 3 for r in cluster.replicas), 10,
          "the replicas did not all join the directory")
    cluster.repo.write_defaults(note="v2")
    cluster.repo.write("people.yaml", PEOPLE)  # alice stays linked to her corp identity
    commit = cluster.repo.commit("v2 for everyone")
    pushed = time.monotonic()
    done: dict[str, float] = {}

    def converged() -> bool:
        for r in cluster.replicas:
            if r.data_dir.name not in done and r.status()["last_applied_revision"].endswith(commit):
                done[r.data_dir.name] = time.monotonic() - pushed
        return len(done) == 3

    _wait(converged, 2 * POLL_INTERVAL_S + 10, "not every replica applied the push")
    print(f"\nconvergence after a push (poll interval {POLL_INTERVAL_S:.0f} s): "
          + ", ".join(f"{k} {v:.2f} s" for k, v in sorted(done.items())) + f"; all in {max(done.values()):.2f} s")
    # Any replica reports what every replica has applied (their heartbeats).
    _wait(lambda: {x["revision"][-40:] for x in cluster.replicas_view(cluster.replicas[1])["replicas"]} == {commit},
          5, "replica r1 does not report the new commit for all")


def test_a_login_whose_steps_land_on_different_replicas_succeeds(cluster: Cluster) -> None:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    loopback = f"http://127.0.0.1:{free_port()}/callback"
    served: list[tuple[str, str]] = []  # (path, replica) of every answer from the balancer
    callbacks: list[str] = []

    async def on_end(_: Any, __: Any, params: aiohttp.TraceRequestEndParams) -> None:
        if params.url.port == urlsplit(cluster.web).port:
            served.append((params.url.path, params.response.headers.get("X-Served-By", "?")))
            if params.url.path == "/login/oidc/callback":
                callbacks.append(str(params.url))

    async def login() -> tuple[int, dict[str, Any], int, int]:
        trace = aiohttp.TraceConfig()
        trace.on_request_end.append(on_end)
        async with aiohttp.ClientSession(trace_configs=[trace]) as browser:
            start = f"{cluster.web}/login?" + urlencode({"redirect_uri": loopback, "state": "s1", "idp": "corp",
                                                          "code_challenge": challenge})
            outcome = await follow_login(browser, start, login="alice", redirect_prefix=loopback)
            code = parse_qs(urlsplit(outcome.url).query)["code"][0]
            body = {"code": code, "codeVerifier": verifier}
            async with browser.post(f"{cluster.web}/v1/auth/cli/token", json=body) as r:
                status, issued = r.status, await r.json()
            async with browser.post(f"{cluster.web}/v1/auth/cli/token", json=body) as again:
                replayed = again.status
            async with browser.get(callbacks[0], allow_redirects=False) as callback:  # the IdP's redirect, again
                return status, issued, replayed, callback.status

    status, issued, replayed, called_back_again = asyncio.run(login())
    assert status == 200, issued
    assert replayed == 400  # the code is single-use across replicas
    assert called_back_again == 403  # and so is the flow: a replayed callback finds nothing on any replica
    by_path = dict(served)
    started, callback = by_path["/login/idp/corp"], by_path["/login/oidc/callback"]
    assert started != callback, served  # the flow started on one replica and finished on another
    assert len({replica for _, replica in served}) == 3, served
    with psycopg.connect(cluster.dsn("alice", issued["token"])) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("full_access",)


def _token(cluster: Cluster, user: str) -> tuple[str, str]:
    out = cluster.replicas[0].cli("token", "issue", "--user", user, "-o", "json")
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    return str(body["session"]), str(body["token"])


def test_sessions_and_revocation_span_replicas(cluster: Cluster) -> None:
    sid, token = _token(cluster, "bob")
    conns = [psycopg.connect(cluster.dsn("bob", token), autocommit=True) for _ in range(3)]
    try:
        pids = {c.execute("SELECT pg_backend_pid()").fetchone()[0] for c in conns}  # type: ignore[index]
        assert len(pids) == 3

        def counted(up: UpProcess) -> int:
            body = json.loads(up.cli("sessions", "list", "-o", "json").stdout)
            return next((s["databaseConnections"] for s in body["sessions"] if s["id"] == sid), -1)

        for up in cluster.live():  # every replica counts the connections that the balancer spread over all three
            _wait(lambda up=up: counted(up) == 3, 10, f"{up.data_dir.name} did not count all 3 connections")
        # Through r2's admin API, as `pgwarden sessions revoke` does (without its ~0.4 s of process start-up).
        asked = time.monotonic()
        code, body = call(cluster.replicas[2].data_dir / "admin.sock", "POST", f"/v1/identity/sessions/{sid}/revoke")
        assert code == 200, body  # every replica, r2 included, ends its connections when it hears the NOTIFY
        ended: list[float] = []
        for conn in conns:
            def is_ended(conn: psycopg.Connection[Any] = conn) -> bool:
                try:
                    conn.execute("SELECT 1")
                    return False
                except psycopg.Error as exc:
                    assert "revoked" in str(exc) or conn.closed, exc
                    return True
            _wait(is_ended, 5, "a connection outlived the revocation")
            ended.append(time.monotonic() - asked)
        print(f"\nrevocation through r2 ended all 3 connections (one per replica) in {max(ended):.3f} s")
        assert cluster.replicas[0].cli("sessions", "revoke", sid).returncode == 1  # already revoked, seen on r0
    finally:
        for conn in conns:
            conn.close()


def test_a_cancel_through_the_balancer_reaches_the_replica_that_runs_the_query(cluster: Cluster, pg: Any) -> None:
    _, token = _token(cluster, "bob")
    tag = f"cancel-{secrets.token_hex(4)}"
    with psycopg.connect(cluster.dsn("bob", token)) as conn:
        outcome: list[BaseException] = []

        def sleep() -> None:
            try:
                conn.execute(f"SELECT pg_sleep(60) -- {tag}")
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                outcome.append(exc)

        worker = threading.Thread(target=sleep)
        worker.start()
        _wait(lambda: pg.psql(f"SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE "
                              f"'%{tag}' AND pid <> pg_backend_pid()").strip() == "1", 10, "the query did not start")
        conn.cancel()  # a new connection to the balancer: round-robin sends it to another replica
        worker.join(30)
        assert outcome and isinstance(outcome[0], psycopg.errors.QueryCanceled), outcome
    forwarded = [r.data_dir.name for r in cluster.replicas if any("forwarded a cancel" in line for line in r.output)]
    assert forwarded, "no replica forwarded the cancel: the balancer sent it to the owner (round-robin broke?)"


def test_killing_the_leader_hands_the_writer_lease_over(cluster: Cluster) -> None:
    view = _wait(lambda: (v := cluster.replicas_view(cluster.replicas[0]))["leader"] and v, 10, "no leader")
    leader = next(r for r in cluster.replicas if r.data_dir.name == f"replica-{view['leader'][1:]}")
    status = leader.cli("status")
    assert f"leader (writer lease): {view['leader']} (this one)" in status.stdout, status.stdout
    os.kill(leader.proc.pid, signal.SIGKILL)
    leader.proc.wait(10)
    killed = time.monotonic()
    other = next(r for r in cluster.live())
    new = _wait(lambda: (v := cluster.replicas_view(other)["leader"]) not in (None, view["leader"]) and v, 10,
                "the writer lease was not handed over")
    print(f"\nleader {view['leader']} killed (SIGKILL); {new} took the writer lease after "
          f"{time.monotonic() - killed:.2f} s")
    text = other.cli("status").stdout
    assert re.search(rf"leader \(writer lease\): {new}\b", text), text

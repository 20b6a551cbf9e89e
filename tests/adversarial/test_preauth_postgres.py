"""Unauthenticated PostgreSQL clients cannot exhaust the proxy (issue 10, class 6), attacked over raw sockets.

- 2,000 idle/trickling sockets against a `pgwarden proxy` whose host allows 1,024 open files: a real psycopg
  login still succeeds, the oldest idle sockets are shed and counted, and the proxy's RSS stays bounded;
- twenty 16 MiB "password" messages are refused from their header, without buffering them;
- a silent client, and one that stalls in the TLS handshake, are cut off at the pre-auth timeout;
- the optional per-address cap sheds the oldest connection of that address only.
"""

from __future__ import annotations

import dataclasses
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from proxy.preauth import PreAuthLimits
from tests.adversarial.preauth_support import (
    SSL_REQUEST,
    proxy_process,
    raise_own_fd_limit,
    read_until_closed,
    rss_kib,
    tls_to_password_prompt,
)
from tests.support.proxy_harness import ProxyHarness, start_harness

FLOOD = 2000
HOST_FD_LIMIT = 1024  # a common soft limit; the flood alone is twice that


def _idle_sockets(port: int, count: int) -> list[socket.socket]:
    """`count` connections that never finish a startup: half silent, half with a trickled partial packet."""
    out = []
    for i in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        if i % 2:
            s.sendall(b"\x00\x00")  # half of a startup packet's length, then nothing
        out.append(s)
    return out


def test_a_real_login_succeeds_while_2000_unauthenticated_sockets_sit_idle(pg: Any, tmp_path: Path) -> None:
    raise_own_fd_limit(FLOOD + 200)
    with proxy_process(pg, tmp_path, fd_limit=HOST_FD_LIMIT) as proxy:
        token = proxy.token("bob")
        with psycopg.connect(proxy.dsn("bob", token)) as conn:  # warm: first login, code paths loaded
            conn.execute("SELECT 1")
        before = rss_kib(proxy.pid)
        opening = time.monotonic()
        flood = _idle_sockets(proxy.port, FLOOD)
        opened_s = time.monotonic() - opening
        try:
            during_flood = rss_kib(proxy.pid)
            started = time.monotonic()
            with psycopg.connect(proxy.dsn("bob", token)) as conn:
                assert conn.execute("SELECT current_user").fetchone() == ("read_only",)
            login_s = time.monotonic() - started
            during = rss_kib(proxy.pid)
            metrics = proxy.metrics()
        finally:
            for s in flood:
                s.close()
        time.sleep(0.5)
        after = rss_kib(proxy.pid)
    shed = metrics['pgwarden_preauth_refused_total{reason="shed"}']
    print(f"\npre-auth flood: {FLOOD} idle sockets, proxy RSS before {before} KiB, with the flood {during_flood} KiB, "
          f"after a login under flood {during} KiB, after {after} KiB; login took {login_s:.3f} s; "
          f"{shed:.0f} shed; {metrics['pgwarden_preauth_connections']:.0f} unauthenticated left; the flood "
          f"took {opened_s:.1f} s to open")
    cap = PreAuthLimits().max_connections
    assert metrics["pgwarden_preauth_connections"] <= cap
    assert shed >= FLOOD - cap  # the oldest went, the newest (our real login) stayed
    assert during - before < 64 * 1024, (before, during)  # bounded by the cap, not by the attacker


def test_16_mib_password_messages_are_refused_without_buffering(pg: Any, tmp_path: Path) -> None:
    attackers = 20
    body_bytes = 16 * 1024 * 1024
    with proxy_process(pg, tmp_path) as proxy:
        before = rss_kib(proxy.pid)
        sockets = [tls_to_password_prompt(proxy.port) for _ in range(attackers)]
        # One byte short of the whole message: a proxy that buffers it is still holding all of it when we look.
        message = b"p" + struct.pack("!i", body_bytes + 4) + b"\x01" * (body_bytes - 1)

        def send(sock: Any) -> None:
            """As an attacker would, but stop once the proxy has answered (it refused us): saves the CPU."""
            chunk = 256 * 1024
            try:
                for start in range(0, len(message), chunk):
                    sock.sendall(message[start:start + chunk])
                    if select.select([sock], [], [], 0)[0]:
                        return
            except OSError:  # refused and closed while we were still sending: what we want
                pass

        threads = [threading.Thread(target=send, args=(s,)) for s in sockets]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        during = rss_kib(proxy.pid)
        answers = []
        for s in sockets:
            s.settimeout(3)
            answers.append(read_until_closed(s))
            s.close()
        metrics = proxy.metrics()
    print(f"\n{attackers} x 16 MiB pre-auth password: proxy RSS {before} KiB before, {during} KiB with all sent")
    for answer in answers:
        assert answer[:1] == b"E" and b"C08P01\x00" in answer and b"exceeds the limit of 65536 bytes" in answer
    assert metrics['pgwarden_preauth_refused_total{reason="oversize"}'] == attackers
    assert during - before < 32 * 1024, (before, during)


@pytest.fixture(scope="module")
def quick_timeout(pg: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyHarness]:
    harness, stop = start_harness(pg, tmp_path_factory.mktemp("preauth-timeout"), name="preauth-timeout",
                                  preauth=PreAuthLimits(timeout_s=1.0))
    yield harness
    stop()


def test_a_silent_client_is_cut_off_at_the_pre_auth_timeout(quick_timeout: ProxyHarness) -> None:
    with socket.create_connection(("127.0.0.1", quick_timeout.port), timeout=8) as s:
        answer = read_until_closed(s)  # returns when the proxy hangs up; a 60 s startup timeout would time out here
    assert answer[:1] == b"E" and b"authentication did not complete within 1 s" in answer
    assert quick_timeout.running.server.metrics.preauth_timeouts >= 1


def test_a_stalled_tls_handshake_is_cut_off_at_the_pre_auth_timeout(quick_timeout: ProxyHarness) -> None:
    with socket.create_connection(("127.0.0.1", quick_timeout.port), timeout=8) as s:
        s.sendall(SSL_REQUEST)
        assert s.recv(1) == b"S"
        s.sendall(b"\x16\x03\x01")  # the start of a ClientHello, then nothing
        read_until_closed(s)  # raises socket.timeout (a test failure) if the proxy keeps waiting
    with psycopg.connect(quick_timeout.dsn("bob")) as conn:  # a prompt client still gets in
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.fixture(scope="module")
def per_address(pg: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyHarness]:
    harness, stop = start_harness(pg, tmp_path_factory.mktemp("preauth-address"), name="preauth-address",
                                  preauth=dataclasses.replace(PreAuthLimits(), max_per_address=3))
    yield harness
    stop()


def _is_open(s: socket.socket) -> bool:
    s.settimeout(0.3)
    try:
        return s.recv(1) != b""
    except TimeoutError:
        return True  # nothing to read and not closed
    except ConnectionResetError:
        return False


def test_the_per_address_cap_sheds_that_address_oldest_first(per_address: ProxyHarness) -> None:
    others = []
    for _ in range(3):
        s = socket.socket()
        s.bind(("127.0.0.2", 0))
        s.connect(("127.0.0.1", per_address.port))
        others.append(s)
    mine = [socket.create_connection(("127.0.0.1", per_address.port)) for _ in range(4)]
    try:
        per_address.wait_for(lambda: per_address.running.server.metrics.preauth_shed >= 1)
        assert not _is_open(mine[0])  # the oldest of 127.0.0.1 went
        assert all(_is_open(s) for s in mine[1:])
        assert all(_is_open(s) for s in others)  # another address is not charged for ours
        with psycopg.connect(per_address.dsn("bob")) as conn:  # and the newest, a real client, logs in
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        for s in others + mine:
            s.close()


def test_connections_shed_mid_tls_handshake_are_forgotten(per_address: ProxyHarness) -> None:
    server = per_address.running.server
    per_address.wait_for(lambda: not server.connections)  # the earlier tests' sockets are gone
    shed_before = server.metrics.preauth_shed
    stalled = []
    try:
        for _ in range(6):
            s = socket.socket()
            s.bind(("127.0.0.3", 0))
            s.connect(("127.0.0.1", per_address.port))
            s.sendall(SSL_REQUEST)
            assert s.recv(1) == b"S"
            s.sendall(b"\x16\x03\x01")  # a ClientHello that never finishes
            stalled.append(s)
        # The three oldest are shed; nothing of them may stay registered (the TLS layer owned their sockets).
        per_address.wait_for(lambda: server.metrics.preauth_shed == shed_before + 3
                             and len(server.connections) == 3)
    finally:
        for s in stalled:
            s.close()

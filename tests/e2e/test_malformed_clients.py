"""Malformed startup packets and oversized messages are refused; the proxy keeps serving others."""

from __future__ import annotations

import socket
import struct

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.proxy_harness import ProxyHarness


def send_raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while chunk := s.recv(4096):
                chunks.append(chunk)
        except (ConnectionResetError, TimeoutError):
            pass
        return b"".join(chunks)


def still_serving(proxy: ProxyHarness) -> None:
    with psycopg.connect(proxy.dsn("bob")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=1, max_size=200))
def test_random_startup_bytes_never_crash_the_proxy(proxy: ProxyHarness, data: bytes) -> None:
    send_raw(proxy.port, data)


def test_after_fuzzing_proxy_still_serves(proxy: ProxyHarness) -> None:
    still_serving(proxy)


def test_unsupported_protocol_version_gets_error_response(proxy: ProxyHarness) -> None:
    reply = send_raw(proxy.port, struct.pack("!ii", 8, 0x00020000))
    assert reply[:1] == b"E" and b"unsupported frontend protocol" in reply
    still_serving(proxy)


def test_gssenc_request_answered_no(proxy: ProxyHarness) -> None:
    reply = send_raw(proxy.port, struct.pack("!ii", 8, 80877104))
    assert reply[:1] == b"N"


def test_oversized_message_after_login_ends_only_that_session(proxy: ProxyHarness) -> None:
    conn = psycopg.connect(proxy.dsn("bob"))
    try:
        big = "x" * (17 * 1024 * 1024)
        try:
            conn.execute("SELECT %s::text", (big,), prepare=False)
            raise AssertionError("an oversized message must be refused")
        except psycopg.OperationalError as exc:
            assert "exceeds the limit" in str(exc) or conn.closed
    finally:
        conn.close()
    still_serving(proxy)

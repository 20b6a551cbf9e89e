"""A PostgreSQL client written as raw protocol messages, for tests that must control every byte (attacks,
pipelining): TLS, a startup with exactly the given parameters, the token as the password."""

from __future__ import annotations

import socket
import ssl
from typing import Any

from proxy.pgwire import messages as m


def raw_login(port: int, parameters: dict[str, str], token: str) -> tuple[socket.socket, list[tuple[int, bytes]]]:
    """TLS, a startup packet with exactly these parameters, the token as password; messages up to RFQ or error."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    sock.sendall(m.encode_ssl_request())
    assert sock.recv(1) == b"S"
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    tls = context.wrap_socket(sock)
    tls.sendall(m.encode_startup_message(parameters))
    return tls, read_until(tls, lambda t, _b: t in (m.READY_FOR_QUERY, m.ERROR_RESPONSE), password=token)


def read_until(sock: socket.socket, stop: Any, *, password: str | None = None) -> list[tuple[int, bytes]]:
    buf, seen = b"", []
    while True:
        while len(buf) < 5 or len(buf) < 1 + int.from_bytes(buf[1:5], "big"):
            data = sock.recv(65536)
            if not data:
                return seen
            buf += data
        length = int.from_bytes(buf[1:5], "big")
        type_byte, body, buf = buf[0], buf[5:1 + length], buf[1 + length:]
        seen.append((type_byte, body))
        if type_byte == m.AUTHENTICATION and password is not None and body[:4] == b"\x00\x00\x00\x03":
            sock.sendall(m.encode_password_message(password.encode() + b"\x00"))
        elif stop(type_byte, body):
            return seen

"""Helpers for the pre-auth attacker tests: a `pgwarden proxy` subprocess whose RSS we can read, raw sockets."""

from __future__ import annotations

import re
import resource
import socket
import ssl
import struct
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgwarden.adminclient import call
from tests.support.proxy_harness import write_manifests

PGWARDEN = [sys.executable, "-m", "pgwarden"]
SSL_REQUEST = struct.pack("!ii", 8, 80877103)


def rss_kib(pid: int) -> int:
    """Resident set size of a process, from /proc (VmRSS, KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def raise_own_fd_limit(wanted: int) -> None:
    """The test itself holds thousands of sockets: lift our soft limit (never above the hard one)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= wanted, "the machine's hard fd limit is too low"


@dataclass
class ProxyProcess:
    proc: subprocess.Popen[str]
    port: int
    data_dir: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def token(self, user: str) -> str:
        return subprocess.run([*PGWARDEN, "token", "issue", "--user", user, "--ttl", "1h", "--data-dir",
                               str(self.data_dir)], capture_output=True, text=True, timeout=30,
                              check=True).stdout.strip()

    def dsn(self, user: str, token: str) -> str:
        return (f"host=127.0.0.1 port={self.port} dbname=my-db sslmode=require user={user} password='{token}' "
                "connect_timeout=10")

    def metrics(self) -> dict[str, float]:
        status, body = call(self.data_dir / "admin.sock", "GET", "/metrics")
        assert status == 200
        out: dict[str, float] = {}
        for line in str(body).splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out


@contextmanager
def proxy_process(pg: Any, base: Path, *args: str, fd_limit: int | None = None) -> Iterator[ProxyProcess]:
    """`pgwarden proxy` on the test manifests; `fd_limit` caps its open files (soft and hard) as a host would."""
    manifests = write_manifests(base / "manifests", pg)
    data_dir = base / "data"

    def limit() -> None:
        if fd_limit is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))

    with (base / "proxy.log").open("w") as err:
        proc = subprocess.Popen([*PGWARDEN, "proxy", "--manifests", str(manifests), "--listen", "127.0.0.1:0",
                                 "--data-dir", str(data_dir), "--access-log", "none", *args],
                                stdout=subprocess.PIPE, stderr=err, text=True, preexec_fn=limit)
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", ready)
        assert match, (ready, (base / "proxy.log").read_text())
        yield ProxyProcess(proc=proc, port=int(match.group(1)), data_dir=data_dir)
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def startup_packet(user: str, database: str) -> bytes:
    body = struct.pack("!i", 196608) + f"user\0{user}\0database\0{database}\0\0".encode()
    return struct.pack("!i", len(body) + 4) + body


def tls_to_password_prompt(port: int, *, timeout_s: float = 10.0) -> ssl.SSLSocket:
    """SSLRequest, TLS, a startup packet, and read up to the AuthenticationCleartextPassword request."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    raw.sendall(SSL_REQUEST)
    assert raw.recv(1) == b"S"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    tls = context.wrap_socket(raw)
    tls.sendall(startup_packet("bob", "my-db"))
    head = _read_exact(tls, 9)
    assert head[:1] == b"R" and struct.unpack("!i", head[5:9])[0] == 3, head  # cleartext password, please
    return tls


def _read_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (or resets) the connection."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (ConnectionResetError, ssl.SSLError, OSError):
        pass
    return b"".join(chunks)

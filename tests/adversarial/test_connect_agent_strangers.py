"""Another local user cannot borrow a `pgwarden connect` agent's session through its loopback port.

The real agent (a subprocess, as root here), a real proxy and PostgreSQL; the stranger is a real OS user
created for the test, running psql and a raw-protocol client under its own uid. The check is on the server:
the stranger's INSERT never lands.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from pwd import struct_passwd
from typing import Any

import pytest

from tests.e2e.test_connect_agent import AgentProcess, cluster, psql, save_login  # noqa: F401 - cluster: fixture
from tests.support.other_user import as_user, directory_others_can_reach, other_os_user
from tests.support.proxy_harness import ProxyHarness, start_harness


@pytest.fixture(scope="module")
def proxy(pg: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyHarness]:
    harness, stop = start_harness(pg, tmp_path_factory.mktemp("agent-strangers"))
    yield harness
    stop()


@pytest.fixture(scope="module")
def stranger() -> Iterator[struct_passwd]:
    with other_os_user() as user:
        yield user


def _rows(pg: Any, marker: str) -> int:
    return int(pg.psql(f"SELECT count(*) FROM items WHERE name = '{marker}'").strip())


def test_another_local_user_is_refused_and_writes_nothing(
        proxy: ProxyHarness, cluster: str, tmp_path: Path, pg: Any, stranger: struct_passwd) -> None:  # noqa: F811
    credentials = tmp_path / "alice.json"
    _, token = save_login(proxy, cluster, credentials, "alice")  # alice lands as full_access: she may write
    agent = AgentProcess(credentials, "my-db:0")
    try:
        port = agent.ports["my-db"]
        insert = "INSERT INTO items(name) VALUES ('{}') RETURNING current_user"
        mine = psql(port, insert.format("agent-owner-write"))
        assert mine.returncode == 0 and "full_access" in mine.stdout, mine.stderr  # the owner is served
        assert _rows(pg, "agent-owner-write") >= 1

        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        theirs = subprocess.run(as_user(stranger, ["psql", "-h", "localhost", "-p", str(port), "-X", "-At", "-c",
                                                   insert.format("stranger-write")]),
                                capture_output=True, text=True, timeout=60, env=env, cwd="/")
        assert theirs.returncode != 0
        assert f"pgwarden connect serves only the user who runs it (uid {os.getuid()})" in theirs.stderr
        assert f"from uid {stranger.pw_uid}" in theirs.stderr
        # A raw client over IPv4 that skips SSLRequest and pipelines its query after the startup packet.
        raw = subprocess.run(as_user(stranger, [sys.executable, "-c", _RAW_CLIENT, str(port)]),
                             capture_output=True, timeout=60, cwd="/")
        assert b"serves only the user who runs it" in raw.stdout, raw.stdout + raw.stderr
        assert _rows(pg, "stranger-write") == 0 and _rows(pg, "stranger-raw") == 0
    finally:
        output = agent.stop()
    assert token not in output + theirs.stderr


_RAW_CLIENT = r"""
import socket, struct, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
body = struct.pack("!i", 196608) + b"user\x00alice\x00database\x00my-db\x00\x00"
query = b"INSERT INTO items(name) VALUES ('stranger-raw')\x00"
s.sendall(struct.pack("!i", len(body) + 4) + body + b"Q" + struct.pack("!i", len(query) + 4) + query)
s.settimeout(20)
data = b""
while chunk := s.recv(65536):
    data += chunk
sys.stdout.buffer.write(data)
"""


def test_unix_socket_serves_its_owner_and_refuses_a_stranger_by_peer_credentials(
        proxy: ProxyHarness, cluster: str, tmp_path: Path, pg: Any, stranger: struct_passwd) -> None:  # noqa: F811
    credentials = tmp_path / "alice.json"
    save_login(proxy, cluster, credentials, "alice")
    with directory_others_can_reach() as shared:
        _unix_socket_case(credentials, shared / "run", pg, stranger)


def _unix_socket_case(credentials: Path, sockets: Path, pg: Any, stranger: struct_passwd) -> None:
    agent = AgentProcess(credentials, "my-db:0", extra=("--socket-dir", str(sockets)))
    try:
        port = agent.ports["my-db"]
        socket_file = sockets / f".s.PGSQL.{port}"
        assert sockets.stat().st_mode & 0o777 == 0o700 and socket_file.stat().st_mode & 0o777 == 0o600
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        insert = "INSERT INTO items(name) VALUES ('{}') RETURNING current_user"
        mine = subprocess.run(["psql", "-h", str(sockets), "-p", str(port), "-X", "-At", "-c",
                               insert.format("socket-owner-write")], capture_output=True, text=True, timeout=60,
                              env=env)
        assert mine.returncode == 0 and "full_access" in mine.stdout, mine.stderr
        # Widen the modes, as a careless user might: the kernel's peer credentials still refuse the stranger.
        sockets.chmod(0o755)
        socket_file.chmod(0o666)
        theirs = subprocess.run(as_user(stranger, ["psql", "-h", str(sockets), "-p", str(port), "-X", "-At", "-c",
                                                   insert.format("stranger-socket-write")]),
                                capture_output=True, text=True, timeout=60, env=env, cwd="/")
        assert theirs.returncode != 0
        assert f"this connection is from uid {stranger.pw_uid}" in theirs.stderr, theirs.stderr
        assert _rows(pg, "socket-owner-write") >= 1 and _rows(pg, "stranger-socket-write") == 0
    finally:
        agent.stop()
    assert not socket_file.exists()

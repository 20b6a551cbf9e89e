"""The owner of a loopback client's socket, read from /proc/net/tcp{,6}, with real sockets and a real other user."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from pwd import struct_passwd

import pytest

from pgwarden.peer_owner import OwnerUnknown, peer_uid
from tests.support.other_user import as_user, directory_others_can_reach, other_os_user


@pytest.fixture(scope="module")
def stranger() -> Iterator[struct_passwd]:
    with other_os_user() as user:
        yield user


def _families() -> list[tuple[int, str]]:
    found = [(socket.AF_INET, "127.0.0.1")]
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        found.append((socket.AF_INET6, "::1"))
    except OSError:
        pass
    return found


@pytest.mark.parametrize("family, host", _families())
def test_own_connection_is_ours(family: int, host: str) -> None:
    with socket.create_server((host, 0), family=family) as server:
        with socket.create_connection(server.getsockname()[:2]):
            accepted, _ = server.accept()
            with accepted:
                assert peer_uid(accepted) == os.getuid()


@pytest.mark.parametrize("family, host", _families())
def test_another_users_connection_shows_their_uid(family: int, host: str, stranger: struct_passwd) -> None:
    with socket.create_server((host, 0), family=family) as server:
        port = server.getsockname()[1]
        client = ("import socket, sys; s = socket.create_connection((sys.argv[1], int(sys.argv[2]))); "
                  "sys.stdin.read()")  # holds the connection open until we close its stdin
        proc = subprocess.Popen(as_user(stranger, [sys.executable, "-c", client, host, str(port)]),
                                stdin=subprocess.PIPE, cwd="/")
        try:
            server.settimeout(30)
            accepted, _ = server.accept()
            with accepted:
                assert peer_uid(accepted) == stranger.pw_uid != os.getuid()
        finally:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(30)


def test_a_listed_table_without_the_client_is_unknown_and_no_proc_is_none(tmp_path: Path) -> None:
    (tmp_path / "tcp").write_text("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid\n")
    with socket.create_server(("127.0.0.1", 0)) as server:
        with socket.create_connection(server.getsockname()):
            accepted, _ = server.accept()
            with accepted:
                with pytest.raises(OwnerUnknown):
                    peer_uid(accepted, proc_net=tmp_path)
                assert peer_uid(accepted, proc_net=tmp_path / "absent") is None


def test_unix_socket_peer_credentials(stranger: struct_passwd) -> None:
    with directory_others_can_reach() as shared, socket.socket(socket.AF_UNIX) as server:
        path = shared / "s"
        server.bind(str(path))
        server.listen()
        path.chmod(0o666)
        with socket.socket(socket.AF_UNIX) as mine:
            mine.connect(str(path))
            accepted, _ = server.accept()
            with accepted:
                assert peer_uid(accepted) == os.getuid()
        client = "import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); sys.stdin.read()"
        proc = subprocess.Popen(as_user(stranger, [sys.executable, "-c", client, str(path)]),
                                stdin=subprocess.PIPE, cwd="/")
        try:
            server.settimeout(30)
            accepted, _ = server.accept()
            with accepted:
                assert peer_uid(accepted) == stranger.pw_uid
        finally:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(30)

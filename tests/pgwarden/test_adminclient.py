"""The one admin-socket client (pgwarden/adminclient.py) when nobody answers on the socket."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from pgwarden.adminclient import AdminUnavailable, call


def test_a_missing_socket_is_admin_unavailable_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "admin.sock"
    with pytest.raises(AdminUnavailable, match=str(path)):
        call(path, "GET", "/v1/status")


def test_a_socket_left_by_a_dead_process_is_admin_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "admin.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))  # the file stays, nobody listens: connect is refused
    with pytest.raises(AdminUnavailable, match="no pgwarden is running"):
        call(path, "GET", "/v1/status")


def test_a_peer_that_never_answers_is_admin_unavailable_naming_the_socket(tmp_path: Path) -> None:
    path = tmp_path / "admin.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen()  # the connection waits in the backlog and is never accepted: the read times out
        with pytest.raises(AdminUnavailable, match=f"cannot reach the admin socket {path}: timed out"):
            call(path, "GET", "/v1/status", timeout_s=0.2)

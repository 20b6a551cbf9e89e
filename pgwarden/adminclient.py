"""Talk to a running `pgwarden up`/`proxy` over its admin socket: the one client for every admin-API call.

Blocking on purpose (http.client over a unix socket): the CLI makes one call and exits, and the parent of
`pgwarden up --workers N` calls its workers from synchronous code (ProxyServer.apply and session_list).
"""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any

from pgwarden.datadir import ADMIN_SOCKET, default_data_dir


class AdminUnavailable(Exception):
    """No pgwarden is listening on the admin socket."""


def socket_path(data_dir: Path | None, admin_socket: Path | None = None) -> Path:
    return admin_socket or (data_dir or default_data_dir()) / ADMIN_SOCKET


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout_s: float) -> None:
        super().__init__("pgwarden", timeout=timeout_s)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.socket_path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


def request(path: Path, method: str, url: str, *, timeout_s: float = 10.0, json_body: Any = None,
            body: bytes | str | None = None) -> tuple[int, Any]:
    """One request; returns (HTTP status, decoded JSON or text). Raises OSError if the socket cannot be reached.

    `json_body` is sent encoded; `body` is sent as given (tests send malformed JSON this way).
    """
    if json_body is not None:
        body = json.dumps(json_body)
    data = body.encode() if isinstance(body, str) else body
    connection = _UnixHTTPConnection(path, timeout_s)
    try:
        connection.request(method, url, body=data,
                           headers={"Content-Type": "application/json"} if data is not None else {})
        response = connection.getresponse()
        text = response.read().decode(errors="replace")
    finally:
        connection.close()
    try:
        return response.status, json.loads(text)
    except ValueError:
        return response.status, text


def call(path: Path, method: str, url: str, *, timeout_s: float = 10.0, json_body: Any = None,
         body: bytes | str | None = None) -> tuple[int, Any]:
    """`request`, with a socket that cannot be reached (none, refused, hung up, timed out) as AdminUnavailable."""
    try:
        return request(path, method, url, timeout_s=timeout_s, json_body=json_body, body=body)
    except (FileNotFoundError, ConnectionError) as exc:
        raise AdminUnavailable(f"no pgwarden is running with admin socket {path}") from exc
    except OSError as exc:
        raise AdminUnavailable(f"cannot reach the admin socket {path}: {exc.strerror or exc}") from exc


def add_target_options(parser: Any) -> None:
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="the running instance's data directory (default $PGWARDEN_DATA_DIR or the "
                             "per-user data directory)")
    parser.add_argument("--admin-socket", type=Path, default=None, help="its admin socket, if not DATA_DIR/admin.sock")

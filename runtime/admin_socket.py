"""HTTP+JSON over a unix socket: the admin API's one client (the CLI's calls, a parent's pushes to its workers).

Blocking on purpose (http.client): the CLI makes one call and exits, and the parent of `pgwarden up --workers N`
calls its workers from a thread.
"""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any


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

"""Talk to a running `pgwarden up`/`proxy` over its admin socket: the one client for every admin-API call.

Blocking (runtime/admin_socket.py): the CLI makes one call and exits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime.admin_socket import request
from runtime.datadir import ADMIN_SOCKET, default_data_dir

__all__ = ["AdminUnavailable", "add_target_options", "call", "request", "socket_path"]


class AdminUnavailable(Exception):
    """No pgwarden is listening on the admin socket."""


def socket_path(data_dir: Path | None, admin_socket: Path | None = None) -> Path:
    return admin_socket or (data_dir or default_data_dir()) / ADMIN_SOCKET


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

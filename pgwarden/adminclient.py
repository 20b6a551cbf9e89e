"""Talk to a running `pgwarden up`/`proxy` over its admin socket (found through --data-dir)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp

from pgwarden.datadir import ADMIN_SOCKET, default_data_dir


class AdminUnavailable(Exception):
    """No pgwarden is listening on the admin socket."""


def socket_path(data_dir: Path | None, admin_socket: Path | None = None) -> Path:
    return admin_socket or (data_dir or default_data_dir()) / ADMIN_SOCKET


def call(path: Path, method: str, url: str, *, timeout_s: float = 10.0, json_body: Any = None) -> tuple[int, Any]:
    """One request; returns (HTTP status, decoded JSON or text)."""

    async def go() -> tuple[int, Any]:
        connector = aiohttp.UnixConnector(path=str(path))
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            async with http.request(method, f"http://pgwarden{url}", json=json_body) as resp:
                text = await resp.text()
                try:
                    return resp.status, json.loads(text)
                except ValueError:
                    return resp.status, text

    try:
        return asyncio.run(go())
    except (aiohttp.ClientConnectionError, FileNotFoundError, ConnectionRefusedError) as exc:
        raise AdminUnavailable(f"no pgwarden is running with admin socket {path}") from exc


def add_target_options(parser: Any) -> None:
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="the running instance's data directory (default $PGWARDEN_DATA_DIR or the "
                             "per-user data directory)")
    parser.add_argument("--admin-socket", type=Path, default=None, help="its admin socket, if not DATA_DIR/admin.sock")

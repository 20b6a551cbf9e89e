"""After an apply, log in to each Service config's upstream with its own credentials (asyncpg).

A failure marks the Service degraded in status; it never rolls the apply back.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import asyncpg

from proxy.snapshot import ServiceConfig, Snapshot, SSLMode
from proxy.tls import upstream_context

PROBE_TIMEOUT_S = 5.0
PROBE_CONCURRENCY = 16


def _ssl_argument(config: ServiceConfig, snapshot: Snapshot) -> Any:
    pg = config.postgres
    if pg.ssl_mode == SSLMode.DISABLE:
        return False
    if pg.ssl_mode == SSLMode.PREFER:
        return "prefer"
    ca = None
    if pg.ca_secret and pg.ca_secret in snapshot.secrets:
        ca = snapshot.secrets[pg.ca_secret].value.reveal()
    elif pg.ca_file:
        ca = Path(pg.ca_file).read_text()
    return upstream_context(pg.ssl_mode, ca_pem=ca)


async def probe_config(config: ServiceConfig, snapshot: Snapshot) -> str:
    """"ok", "skipped: …" or the reason the login failed (never the password)."""
    pg = config.postgres
    if not pg.user:
        return "skipped: the config forwards the client's user, so there is no role to probe with"
    password = None
    if pg.password_secret and pg.password_secret in snapshot.secrets:
        password = snapshot.secrets[pg.password_secret].value.reveal()
    try:
        conn = await asyncpg.connect(
            host=config.upstream.host, port=config.upstream.port, user=pg.user, password=password,
            database=pg.database or pg.user, ssl=_ssl_argument(config, snapshot), timeout=PROBE_TIMEOUT_S,
        )
    except (OSError, TimeoutError, asyncpg.PostgresError, ssl.SSLError, asyncpg.InterfaceError) as exc:
        text = str(exc) or type(exc).__name__
        if password:
            text = text.replace(password, "**********")
        return f"login failed: {text}"
    try:
        await conn.execute("SELECT 1")
    finally:
        await conn.close(timeout=PROBE_TIMEOUT_S)
    return "ok"


async def probe(snapshot: Snapshot) -> dict[str, dict[str, str]]:
    """service -> config -> result, probing at most PROBE_CONCURRENCY upstreams at once."""
    gate = asyncio.Semaphore(PROBE_CONCURRENCY)

    async def one(config: ServiceConfig) -> str:
        async with gate:
            return await probe_config(config, snapshot)

    jobs = {(s.name, c.name): asyncio.ensure_future(one(c))
            for s in snapshot.services.values() for c in s.configs.values()}
    results: dict[str, dict[str, str]] = {}
    for (service, config), job in jobs.items():
        results.setdefault(service, {})[config] = await job
    return results

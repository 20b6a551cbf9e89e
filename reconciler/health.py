"""After an apply, log in to each Service config's upstream with its own credentials, as the proxy does.

The probe logs in through `proxy.upstream.open_upstream`, the proxy's own upstream login, so it follows the
same rules (SCRAM only unless `postgres.auth.mechanisms` names more, and then only over verified TLS; the
server's SCRAM signature is required): a manifest pointing a Service at a hostile host cannot make the
probe hand it a Secret, and "ok" means the proxy itself can log in.

A failure marks the Service degraded in status; it never rolls the apply back.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from enum import StrEnum

from proxy.connection import PgConnection
from proxy.errors import PgwardenError
from proxy.pgwire import messages as m
from proxy.routing import Route
from proxy.snapshot import Service, ServiceConfig, Snapshot
from proxy.upstream import UpstreamLogin, open_upstream

PROBE_TIMEOUT_S = 5.0
PROBE_CONCURRENCY = 16
# The probe reads a login and one SELECT 1: a server that sends more than this in one message is not PostgreSQL
# answering us, and must not make the reconciler buffer the proxy's 1 GiB allowance.
PROBE_MAX_MESSAGE_BYTES = 1 << 20
_PROBE_PARAMETERS = {"application_name": "pgwarden-health-probe"}


class Outcome(StrEnum):
    OK = "ok"
    SKIPPED = "skipped"  # nothing to probe with: not a failure
    LOGIN_FAILED = "login failed"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeResult:
    """One config's probe; str() is what status shows ("ok", "skipped: …", "login failed: …")."""

    outcome: Outcome
    detail: str = ""  # why, never the password

    @property
    def is_degraded(self) -> bool:
        return self.outcome is Outcome.LOGIN_FAILED

    def __str__(self) -> str:
        return f"{self.outcome.value}: {self.detail}" if self.detail else self.outcome.value


OK = ProbeResult(outcome=Outcome.OK)


async def probe_config(service: Service, config: ServiceConfig, snapshot: Snapshot) -> ProbeResult:
    """Log in as the config's role and run SELECT 1; a failure says why (never the password)."""
    pg = config.postgres
    if not pg.user:
        return ProbeResult(outcome=Outcome.SKIPPED,
                           detail="the config forwards the client's user, so there is no role to probe with")
    route = Route(service=service, config=config, reason="health probe", upstream_user=pg.user,
                  upstream_database=pg.database or pg.user)
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            login = await open_upstream(route, snapshot.secrets, _PROBE_PARAMETERS, timeout_s=PROBE_TIMEOUT_S,
                                        factory=_probe_connection)
            try:
                await _select_one(login)
            finally:
                login.connection.write(m.encode_terminate())
                login.connection.close()
    except PgwardenError as exc:
        return ProbeResult(outcome=Outcome.LOGIN_FAILED, detail=_redacted(exc.message, config, snapshot))
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        detail = _redacted(str(exc) or type(exc).__name__, config, snapshot)
        return ProbeResult(outcome=Outcome.LOGIN_FAILED, detail=detail)
    return OK


def _probe_connection() -> PgConnection:
    return PgConnection(whose="upstream", max_message_bytes=PROBE_MAX_MESSAGE_BYTES)


async def _select_one(login: UpstreamLogin) -> None:
    conn = login.connection
    conn.write(m.encode_query("SELECT 1"))
    error = ""
    while True:
        type_byte, body = await conn.read(conn.reader.next_message)
        if type_byte == m.ERROR_RESPONSE:
            error = m.parse_error_fields(body).message
        elif type_byte == m.READY_FOR_QUERY:
            break
    if error:
        raise PgwardenError(f"SELECT 1 failed: {error}")


def _redacted(text: str, config: ServiceConfig, snapshot: Snapshot) -> str:
    # Our own messages never quote the password; an upstream's error text is the server's, so mask anyway.
    secret = snapshot.secrets.get(config.postgres.password_secret or "")
    if secret is not None and secret.value.reveal():
        text = text.replace(secret.value.reveal(), "**********")
    return text


async def check(snapshot: Snapshot) -> dict[str, dict[str, ProbeResult]]:
    """service -> config -> result, probing at most PROBE_CONCURRENCY upstreams at once."""
    gate = asyncio.Semaphore(PROBE_CONCURRENCY)

    async def one(service: Service, config: ServiceConfig) -> ProbeResult:
        async with gate:
            return await probe_config(service, config, snapshot)

    jobs = {(s.name, c.name): asyncio.ensure_future(one(s, c))
            for s in snapshot.services.values() for c in s.configs.values()}
    results: dict[str, dict[str, ProbeResult]] = {}
    for (service, config), job in jobs.items():
        results.setdefault(service, {})[config] = await job
    return results


def as_text(results: dict[str, dict[str, ProbeResult]]) -> dict[str, dict[str, str]]:
    """service -> config -> the text status shows."""
    return {service: {config: str(r) for config, r in configs.items()} for service, configs in results.items()}


async def probe(snapshot: Snapshot) -> dict[str, dict[str, str]]:
    """`check`, as the text status shows ("ok", "skipped: …", "login failed: …")."""
    return as_text(await check(snapshot))

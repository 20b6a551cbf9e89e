"""Drain one proxy process's sessions: end each at a moment it loses nothing, then the rest, with FATAL 57P01.

How it works (SIGTERM; runtime/process.py stops the listener first):
1. Now: a connection still logging in ends at once (it reconnects elsewhere); a session idle outside a transaction
   ends at once; every other session ends at its next ReadyForQuery outside a transaction (its transaction done).
2. At `timeout_s`: a session still open ends at its next ReadyForQuery whatever its transaction state (an open
   transaction rolls back), or at once if it is idle (the client sent nothing since the last ReadyForQuery).
3. FINAL_GRACE_S later: whatever is left (a statement still running) ends at the next message boundary
   (ClientSession.terminate: never inside a message; half a DataRow would be garbage).
A session is idle when the client sent nothing since the last ReadyForQuery and every Sync, Query and
FunctionCall it sent has been answered: a request a client pipelined behind the last answer is waited for.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Protocol

from proxy.errors import AdminShutdown, PgwardenError

log = logging.getLogger("pgwarden.drain")

FINAL_GRACE_S = 5.0  # after the drain timeout, for a statement that is still running to reach ReadyForQuery
PROGRESS_EVERY_S = 5.0
POLL_S = 0.05


class DrainedSession(Protocol):
    """What draining reads and sets on a client connection (proxy/session.py's ClientSession)."""

    info: object | None  # set once the session reached the relay
    transaction_status: bytes
    bytes_received: int
    bytes_at_ready: int
    ending_at_ready: PgwardenError | None
    is_ending_in_transaction: bool

    @property
    def has_requests_in_flight(self) -> bool: ...

    @property
    def upstream(self) -> object | None: ...

    def terminate(self, reason: PgwardenError) -> None: ...


class DrainedRegistry(Protocol):
    @property
    def connections(self) -> set[DrainedSession]: ...


def shutdown_reason() -> AdminShutdown:
    return AdminShutdown("terminating connection: the proxy is shutting down (draining)",
                         hint="connect again: another replica or the restarted proxy will serve you")


def is_idle(session: DrainedSession) -> bool:
    """The client has sent nothing since the last ReadyForQuery, and nothing it sent before is unanswered."""
    return session.bytes_received == session.bytes_at_ready and not session.has_requests_in_flight


def end_when_done(sessions: Iterable[DrainedSession], reason: PgwardenError, *, is_in_transaction_too: bool) -> None:
    """Step 1 (or 2 with `is_in_transaction_too`): end idle sessions now, the others at their next ReadyForQuery."""
    for session in list(sessions):
        if session.info is None:  # still logging in: nothing to lose
            session.terminate(reason)
            continue
        session.ending_at_ready = reason
        session.is_ending_in_transaction = is_in_transaction_too
        if is_idle(session) and (is_in_transaction_too or session.transaction_status == b"I"):
            session.terminate(reason)


async def drain(registry: DrainedRegistry, timeout_s: float) -> int:
    """Run the three steps above; returns how many connections were still open at the end (then forced)."""
    reason = shutdown_reason()
    started = time.monotonic()
    deadline, final = started + timeout_s, started + timeout_s + FINAL_GRACE_S
    connections = registry.connections
    log.warning("draining: %d client connections open; they have %gs to finish", len(connections), timeout_s)
    end_when_done(connections, reason, is_in_transaction_too=False)
    step, next_report = 1, started + PROGRESS_EVERY_S
    while connections:
        now = time.monotonic()
        if step == 1 and now >= deadline:
            step = 2
            log.warning("drain timeout: ending %d sessions at their next message boundary", len(connections))
            end_when_done(connections, reason, is_in_transaction_too=True)
        elif step == 2 and now >= final:
            log.warning("drain: %d sessions still busy after %gs more; ending them now", len(connections),
                        FINAL_GRACE_S)
            for session in list(connections):
                session.terminate(reason)
            return len(connections)
        elif now >= next_report:
            log.warning("draining: %d client connections left", len(connections))
            next_report = now + PROGRESS_EVERY_S
        await asyncio.sleep(POLL_S)
    log.warning("drained: every client connection ended after %.1fs", time.monotonic() - started)
    return 0

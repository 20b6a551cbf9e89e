"""Keep hearing about revoked identity Sessions through state-store outages, or stop trusting live sessions.

A revocation made on any replica reaches this one through the store's feed (LISTEN/NOTIFY on PostgreSQL).
When the store goes away the feed dies with it. This watch never dies with it: any error is logged (once per
outage, not per retry), the feed is re-established with backoff, and on re-establishing every live session
is re-checked against the store, because revocations made while the feed was down are not replayed. If the
store stays unreachable longer than the grace, revocations can no longer be known, so live identity sessions
are ended rather than trusted. A periodic re-check is the backstop for lost notices and for expiry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime
from typing import Any

from identity.store.base import IdentityStore, StateStoreError, utc_now

log = logging.getLogger("pgwarden.identity")

RECHECK_S = 30.0  # every live session is re-checked this often even when the feed is healthy
STATE_OUTAGE_GRACE_S = 300.0  # default of --state-outage-grace
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 5.0  # the feed is back within this long of the store coming back
STORE_CALL_TIMEOUT_S = 10.0  # a store that stops answering (no RST, no FIN) counts as down, not as slow


def describe_duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs}s" if minutes else f"{seconds:g}s"


class RevocationWatch:
    """The loop behind ProxyServer.watch_identity_sessions; its collaborators are passed in as functions."""

    def __init__(
        self, store: IdentityStore, *,
        live_sessions: Callable[[], list[str]],
        revoke: Callable[[list[str], str], Coroutine[Any, Any, int]],
        end_all: Callable[[str], int],
        housekeeping: Callable[[datetime], Awaitable[int]] | None = None,
        recheck_s: float = RECHECK_S, grace_s: float = STATE_OUTAGE_GRACE_S, housekeeping_s: float = 3600.0,
    ) -> None:
        self.store = store
        self.live_sessions = live_sessions  # identity Session ids with a live database connection here
        self.revoke = revoke  # end the connections of these Sessions, with a reason
        self.end_all = end_all  # end every identity connection (grace over); returns how many
        self.housekeeping = housekeeping
        self.recheck_s = recheck_s
        self.grace_s = grace_s
        self.housekeeping_s = housekeeping_s
        self.outage_since: float | None = None  # monotonic time of the first failure of this outage
        self._grace_spent = False
        self._tasks: set[asyncio.Task[int]] = set()

    def on_revoked(self, session_id: str) -> None:
        """The store's feed callback: end that Session's connections in a task of their own."""
        task = asyncio.get_running_loop().create_task(self.revoke([session_id], f"session {session_id} was revoked"))
        self._tasks.add(task)  # held until done: the loop keeps only a weak reference
        task.add_done_callback(self._tasks.discard)

    async def run(self) -> None:
        retry_s = RETRY_FIRST_S
        stale = False  # the feed was (re)opened: revocations meanwhile were missed, so re-check everyone
        next_housekeeping = time.monotonic() + self.housekeeping_s
        while True:
            try:
                await asyncio.wait_for(self.store.watch_revocations(
                    self.on_revoked, restart=self.outage_since is not None), STORE_CALL_TIMEOUT_S)
                if stale or self.outage_since is not None:
                    await self.recheck()
                    stale = False
                if self.outage_since is not None:
                    log.warning("state store reachable again after %s: revocation feed re-established, "
                                "live sessions re-checked", describe_duration(time.monotonic() - self.outage_since))
                    self.outage_since, self._grace_spent = None, False
                retry_s = RETRY_FIRST_S
                if await self._feed_lost_within(self.recheck_s):
                    log.info("state store revocation feed closed; re-establishing it")
                    stale = True
                    await asyncio.sleep(RETRY_FIRST_S)  # a server that drops every LISTEN must not spin us
                    continue
                await self.recheck()
                if self.housekeeping is not None and time.monotonic() >= next_housekeeping:
                    next_housekeeping = time.monotonic() + self.housekeeping_s
                    await self.housekeeping(utc_now())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001  any failure, a store error or a bug: never die silently
                stale = True
                try:
                    self._failed(exc)
                except Exception:  # noqa: BLE001  ending sessions failed: say so, keep watching
                    log.exception("identity session watch: could not act on a state store failure")
                await asyncio.sleep(retry_s)
                retry_s = min(retry_s * 2, RETRY_MAX_S)

    async def recheck(self) -> None:
        """End connections whose Session was revoked, expired or deleted; raises StateStoreError."""
        now = utc_now()
        for sid in self.live_sessions():
            session = await asyncio.wait_for(self.store.get_session(sid), STORE_CALL_TIMEOUT_S)
            if session is None or not session.is_active(now):
                state = "gone" if session is None else session.state(now).lower()
                await self.revoke([sid], f"session {sid} is {state}")

    async def _feed_lost_within(self, timeout_s: float) -> bool:
        lost = asyncio.get_running_loop().create_task(self.store.revocation_watch_lost())
        try:
            done, _ = await asyncio.wait({lost}, timeout=timeout_s)
        finally:
            lost.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lost
        return bool(done)

    def _failed(self, exc: Exception) -> None:
        now = time.monotonic()
        if self.outage_since is None:
            self.outage_since = now
            # A StateStoreError's message names the store without its password; anything else is a bug.
            if isinstance(exc, StateStoreError):
                what = exc.message
            elif isinstance(exc, TimeoutError):
                what = f"no answer within {STORE_CALL_TIMEOUT_S:g}s"
            else:
                what = f"{type(exc).__name__} in the watch"
            log.warning("state store unreachable (%s): revocations cannot be heard; retrying, and ending live "
                        "sessions if it is not back within %s (--state-outage-grace)",
                        what, describe_duration(self.grace_s))
        if now - self.outage_since < self.grace_s:
            return
        reason = (f"the identity state store has been unreachable for over {describe_duration(self.grace_s)}, "
                  "so revocations cannot be checked")
        ended = self.end_all(reason)
        if not self._grace_spent:
            self._grace_spent = True
            log.error("state store outage longer than %s: ended %d live identity sessions; new logins need "
                      "the store", describe_duration(self.grace_s), ended)

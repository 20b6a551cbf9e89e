"""Wake the proxy when a grant's window opens or closes, so it re-evaluates the live snapshot with no commit;
and name, in the FATAL of a session that lost access that way, the grant whose window did it.

One loop timer for the live snapshot's next boundary (`LiveSnapshot.next_boundary`), re-armed at every swap;
nothing runs per query. The wait is capped so a jump of the wall clock (NTP, a suspended VM) is noticed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from proxy import grants
from proxy.errors import AccessDenied, PgwardenError
from proxy.policy import timefns
from proxy.routing import LiveSnapshot
from proxy.snapshot import format_instant

log = logging.getLogger("pgwarden.grants")

MAX_WAIT_S = 60.0  # look again at least this often: the loop's timer runs on the monotonic clock
RETRY_S = 5.0


class GrantTimer:
    """Calls `refresh()` once the clock reaches the next validFrom/validUntil of the live snapshot.

    Mutable on purpose: it holds the one pending loop timer and the task of a refresh in progress.
    """

    def __init__(self, refresh: Callable[[], Awaitable[Any]]) -> None:
        self._refresh = refresh
        self._handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None

    def arm(self, live: LiveSnapshot) -> None:
        """Wait for `live`'s next boundary (replacing any earlier wait). Call on the loop, after each swap."""
        self.cancel()
        if live.next_boundary is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # not serving yet: `start` arms it
        self._handle = loop.call_later(self._delay_s(live), self._wake, live)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def fire(self, live: LiveSnapshot) -> None:
        """Look now (the timer's callback; tests call it after moving the clock)."""
        self._wake(live)

    @staticmethod
    def _delay_s(live: LiveSnapshot) -> float:
        assert live.next_boundary is not None
        remaining = (live.next_boundary - timefns.current_time()).total_seconds()
        return min(max(remaining, 0.0), MAX_WAIT_S)

    def _wake(self, live: LiveSnapshot) -> None:
        self._handle = None
        now = timefns.current_time()
        if live.next_boundary is None or now < live.next_boundary:
            self.arm(live)  # woke early (the cap, or clock granularity): wait the rest
            return
        if self._task is not None and not self._task.done():
            return  # a refresh is under way; its swap re-arms
        log.info("grant window boundary %s passed: re-evaluating generation %d", format_instant(live.next_boundary),
                 live.generation)
        self._task = asyncio.get_running_loop().create_task(self._run(live))

    async def _run(self, live: LiveSnapshot) -> None:
        try:
            await self._refresh()
        except Exception as exc:  # noqa: BLE001 - the live snapshot stays; try again shortly (a swap re-arms first)
            log.warning("re-evaluating grant windows failed, retrying in %.0f s: %s", RETRY_S, exc)
            self.cancel()
            self._handle = asyncio.get_running_loop().call_later(RETRY_S, self._wake, live)


_CONFIG_CHANGE = "access revoked by configuration change: "


def name_lapsed_grants(reason: PgwardenError, user: str, service: str, previous: LiveSnapshot,
                       live: LiveSnapshot) -> PgwardenError:
    """`reason` (a recheck's refusal) naming the grants of this user and service whose window opened or closed
    between `previous` and `live`; unchanged when none did (the change came from a commit)."""
    if not isinstance(reason, AccessDenied):
        return reason
    moved = grants.crossed(previous.grants, previous.at, live.grants, live.at)
    old_user, old_service = previous.view.users.get(user), previous.view.services.get(service)
    attached = set()
    if old_user is not None and old_service is not None:
        attached = {p.name for p in previous.policies.attached(old_user, old_service)}
    relevant = [g for g in moved if (g.kind == grants.GrantKind.MEMBERSHIP and g.user == user)
                or (g.kind == grants.GrantKind.POLICY_RULE and g.policy in attached)]
    if not relevant:
        return reason
    words = "; ".join(_crossing_words(g, live) for g in relevant)
    rest = reason.message.removeprefix(_CONFIG_CHANGE)
    return AccessDenied(f"access revoked: {words}; {rest}", detail=reason.detail,
                        hint="ask for the access again (pgwarden grant, reviewed in a pull request)"
                        if any(g.state_at(live.at) == "expired" for g in relevant) else reason.hint)


def _crossing_words(grant: grants.Grant, live: LiveSnapshot) -> str:
    state = grant.state_at(live.at)
    v = grant.validity
    if state == "expired" and v.valid_until is not None:
        return f"the grant {grant.label()} expired at {format_instant(v.valid_until)}"
    if state == "active" and v.valid_from is not None:
        return f"the grant {grant.label()} took effect at {format_instant(v.valid_from)}"
    return f"the grant {grant.label()} is {state} ({grant.window_words()})"

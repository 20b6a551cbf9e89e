"""Turn changes of the reconciler's status into notification events: Stalled, Recovered, upstream health.

Level in, edges out: `StatusEvents.observe(status)` runs after every status change and reports only what
changed since the last call (a new stalled revision, Ready again, a different set of failing upstreams).
"""

from __future__ import annotations

from collections.abc import Callable

from reconciler.notify import Event, EventKind
from reconciler.status import ConditionStatus, ConditionType, Status


class StatusEvents:
    """Remembers the last status it saw; hands each new edge to `publish`."""

    def __init__(self, publish: Callable[[Event], None]) -> None:
        self._publish = publish
        self._stalled_on = ""  # the revision the last Stalled event was about
        self._was_ready: bool | None = None  # None: nothing seen yet (the first Ready is not a recovery)
        self._failing: frozenset[str] = frozenset()  # "service/config" whose last probe failed

    def observe(self, status: Status) -> None:
        self._stalled(status)
        self._ready(status)
        self._upstreams(status)

    def _stalled(self, status: Status) -> None:
        stalled = status.conditions.get(ConditionType.STALLED)
        if stalled is None or stalled.status != ConditionStatus.TRUE:
            self._stalled_on = ""
            return
        revision = status.last_attempted_revision
        if revision == self._stalled_on:
            return
        self._stalled_on = revision
        self._publish(Event(kind=EventKind.STALLED, text=f"Stalled ({stalled.reason.value}): {stalled.message}; "
                            f"{status.last_applied_revision or 'nothing'} stays live",
                            details={"reason": stalled.reason.value, "revision": revision,
                                     "liveRevision": status.last_applied_revision, "message": stalled.message,
                                     "errors": list(status.history[0].errors) if status.history else []}))

    def _ready(self, status: Status) -> None:
        ready = status.conditions.get(ConditionType.READY)
        if ready is None:
            return
        is_ready = ready.status == ConditionStatus.TRUE
        if is_ready and self._was_ready is False:
            self._publish(Event(kind=EventKind.RECOVERED, text=f"Ready again: {ready.message}",
                                details={"revision": status.last_applied_revision,
                                         "generation": status.generation}))
        self._was_ready = is_ready

    def _upstreams(self, status: Status) -> None:
        failing = frozenset(f"{service}/{config}" for service, configs in status.health.items()
                            for config, text in configs.items() if text.startswith("login failed"))
        if failing == self._failing:
            return
        newly = sorted(failing - self._failing)
        healed = sorted(self._failing - failing)
        self._failing = failing
        if newly:
            reasons = {name: _probe_text(status, name) for name in newly}
            self._publish(Event(kind=EventKind.UPSTREAM_UNHEALTHY,
                                text="upstream login failed for " + ", ".join(newly),
                                details={"configs": reasons, "revision": status.last_applied_revision}))
        if healed:
            self._publish(Event(kind=EventKind.UPSTREAM_RECOVERED, text="upstream login works again for "
                                + ", ".join(healed), details={"configs": healed}))


def _probe_text(status: Status, name: str) -> str:
    service, _, config = name.partition("/")
    return status.health.get(service, {}).get(config, "")

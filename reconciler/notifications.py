"""Wire webhook notifications into a running `pgwarden up`: the reconciler's status changes and the admin API's
revocations become events for a `Notifier` (reconciler/notify.py). The command's flags make the settings."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry

from reconciler.loop import Reconciler
from reconciler.notify import Event, EventKind, Notifier, NotifierCollector, WebhookSettings
from reconciler.status_events import StatusEvents

_REVOKE_ROUTES = {"/v1/identity/sessions/{sid}/revoke", "/v1/identity/users/{user}/revoke"}


def leader_only(is_writer: Callable[[], bool]) -> Callable[[Event], bool]:
    """With replicas, every one sees the same status: only the writer-lease holder sends status events.

    SessionsRevoked always goes: only the replica whose admin API revoked publishes it.
    """
    return lambda event: event.kind is EventKind.SESSIONS_REVOKED or is_writer()


def start_notifications(settings: WebhookSettings | None, reconciler: Reconciler, registry: CollectorRegistry, *,
                        should_send: Callable[[Event], bool] = lambda _: True) -> Notifier | None:
    """Start the sender, subscribe it to the reconciler's status and export its counters; None when off."""
    if settings is None:
        return None
    notifier = Notifier(settings, source=reconciler.source.describe(), should_send=should_send)
    notifier.start()
    reconciler.status_listeners.append(StatusEvents(notifier.publish).observe)
    registry.register(NotifierCollector(notifier))
    return notifier


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def notify_revocations(app: web.Application, notifier: Notifier | None) -> None:
    """On the admin API: after a successful revoke (`pgwarden sessions revoke`), publish SessionsRevoked.

    Only the replica whose admin API revoked sends it; the others end their connections without a word.
    """
    if notifier is None:
        return

    @web.middleware
    async def after_revoke(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        route = request.match_info.route.resource
        if request.method == "POST" and route is not None and route.canonical in _REVOKE_ROUTES \
                and response.status == 200 and isinstance(response, web.Response) and response.text:
            body = json.loads(response.text)
            sessions = [str(s) for s in body.get("revoked", [])]
            if sessions:
                user = request.match_info.get("user")
                who = f"all {len(sessions)} sessions of {user}" if user else f"session {sessions[0]}"
                ended = int(body.get("databaseConnectionsEnded", 0))
                notifier.publish(Event(kind=EventKind.SESSIONS_REVOKED,
                                       text=f"revoked {who}; {ended} database connections ended here",
                                       details={"sessions": sessions, "user": user or "",
                                                "databaseConnectionsEnded": ended}))
        return response

    app.middlewares.append(after_revoke)


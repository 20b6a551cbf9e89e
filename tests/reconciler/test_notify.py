"""The notifier's queue: bounded, never blocking, and (with replicas) status events from the lease holder only."""

from __future__ import annotations

from reconciler.notifications import leader_only
from reconciler.notify import Event, EventKind, Format, Notifier, WebhookSettings

SETTINGS = WebhookSettings(url="http://127.0.0.1:9/hook/s3cr3t", queue_size=2)


def _event(kind: EventKind) -> Event:
    return Event(kind=kind, text=kind.value, details={"n": 1})


async def test_a_full_queue_drops_and_counts_instead_of_waiting() -> None:
    notifier = Notifier(SETTINGS)  # not started: nothing drains the queue
    for _ in range(5):
        notifier.publish(_event(EventKind.STALLED))
    assert notifier.pending == 2 and notifier.counts["dropped"] == 3


async def test_only_the_writer_sends_status_events_but_every_replica_its_own_revocations() -> None:
    writer = False
    notifier = Notifier(SETTINGS, should_send=leader_only(lambda: writer))
    notifier.publish(_event(EventKind.STALLED))
    notifier.publish(_event(EventKind.SESSIONS_REVOKED))
    assert notifier.pending == 1 and notifier.counts["dropped"] == 0
    writer = True
    notifier.publish(_event(EventKind.RECOVERED))
    assert notifier.pending == 2


def test_payload_shapes_and_the_url_never_shown() -> None:
    event = _event(EventKind.UPSTREAM_UNHEALTHY)
    assert event.payload(Format.SLACK, source="git@x") == {"text": "pgwarden git@x: UpstreamUnhealthy"}
    body = event.payload(Format.JSON, source="git@x")
    assert body["event"] == "UpstreamUnhealthy" and body["details"] == {"n": 1} and body["source"] == "git@x"
    assert SETTINGS.where == "http://127.0.0.1:9"

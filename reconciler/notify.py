"""Send events (Stalled, Recovered, upstream health, revocations) to a webhook, off the reconcile path.

`Notifier.publish` never waits: an event goes into a bounded queue and one background task posts it, as
generic JSON or as Slack's incoming-webhook `{"text": ...}`, retrying failures with capped exponential backoff.
A full queue drops the event and counts it (`pgwarden_notifications_total{result="dropped"}`), so a receiver
that hangs or fails costs the reconciler nothing. The URL can carry a token (Slack's does): it is never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

log = logging.getLogger("pgwarden.notify")

QUEUE_SIZE = 256
ATTEMPTS = 6  # the first try and five retries: 1 + 2 + 4 + 8 + 16 s of backoff, about half a minute
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
ATTEMPT_TIMEOUT_S = 10.0


class EventKind(StrEnum):
    STALLED = "Stalled"  # a revision was rejected; the last good one stays live
    RECOVERED = "Recovered"  # Ready again after a failure
    UPSTREAM_UNHEALTHY = "UpstreamUnhealthy"  # the health probe could not log in to an upstream
    UPSTREAM_RECOVERED = "UpstreamRecovered"
    SESSIONS_REVOKED = "SessionsRevoked"  # identity Sessions revoked through the admin API


class Format(StrEnum):
    JSON = "json"
    SLACK = "slack"


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One notification. `text` is one line for people; `details` holds names and ids, never a secret."""

    kind: EventKind
    text: str
    details: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)

    def payload(self, fmt: Format, *, source: str) -> dict[str, Any]:
        if fmt is Format.SLACK:
            return {"text": f"pgwarden {source}: {self.text}"}
        return {"event": self.kind.value, "text": self.text, "source": source, "time": self.at,
                "details": self.details}


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookSettings:
    url: str  # may hold a token: shown only as `where`
    format: Format = Format.JSON
    queue_size: int = QUEUE_SIZE
    attempts: int = ATTEMPTS
    backoff_first_s: float = BACKOFF_FIRST_S
    backoff_max_s: float = BACKOFF_MAX_S
    attempt_timeout_s: float = ATTEMPT_TIMEOUT_S

    @property
    def where(self) -> str:
        """The receiver as logs may name it: scheme and host, no path, query or credentials."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.hostname or '?'}{f':{parts.port}' if parts.port else ''}"


class Notifier:
    """A bounded queue and one sender task; `publish` is safe to call from the reconcile loop."""

    def __init__(self, settings: WebhookSettings, *, source: str = "",
                 should_send: Callable[[Event], bool] = lambda _: True) -> None:
        self.settings = settings
        self.source = source
        self.should_send = should_send  # e.g. only the leader replica sends status events
        self.counts = {"delivered": 0, "failed": 0, "dropped": 0, "retried": 0}
        self._queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=settings.queue_size)
        self._task: asyncio.Task[None] | None = None
        self._dropping = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._send_forever(), name="pgwarden-notify")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def publish(self, event: Event) -> None:
        """Queue `event` and return at once; a full queue drops it (counted, logged once per episode)."""
        if not self.should_send(event):
            return
        try:
            self._queue.put_nowait(event)
            self._dropping = False
        except asyncio.QueueFull:
            self.counts["dropped"] += 1
            if not self._dropping:
                log.warning("notification queue full (%d): dropping %s events until %s answers",
                            self.settings.queue_size, event.kind.value, self.settings.where)
                self._dropping = True

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    async def _send_forever(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.settings.attempt_timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                event = await self._queue.get()
                await self._deliver(session, event)

    async def _deliver(self, session: aiohttp.ClientSession, event: Event) -> None:
        body = event.payload(self.settings.format, source=self.source)
        delay = self.settings.backoff_first_s
        for attempt in range(1, self.settings.attempts + 1):
            problem = await self._post(session, body)
            if problem is None:
                self.counts["delivered"] += 1
                return
            if attempt == self.settings.attempts:
                break
            self.counts["retried"] += 1
            log.info("notification %s to %s failed (%s); retry %d in %.1f s", event.kind.value,
                     self.settings.where, problem, attempt, delay)
            await asyncio.sleep(delay)
            delay = min(self.settings.backoff_max_s, delay * 2)
        self.counts["failed"] += 1
        log.warning("notification %s to %s given up after %d attempts (%s)", event.kind.value,
                    self.settings.where, self.settings.attempts, problem)

    async def _post(self, session: aiohttp.ClientSession, body: dict[str, Any]) -> str | None:
        """None when the receiver took it (2xx); else why not, in words that never include the URL."""
        try:
            async with session.post(self.settings.url, json=body, allow_redirects=False) as response:
                await response.read()
                return None if 200 <= response.status < 300 else f"HTTP {response.status}"
        except TimeoutError:
            return f"no answer within {self.settings.attempt_timeout_s:g} s"
        except aiohttp.ClientError as exc:
            return type(exc).__name__  # aiohttp's messages can quote the URL


class NotifierCollector:
    """`pgwarden_notifications_total{result}` and the queue's depth, read when scraped."""

    def __init__(self, notifier: Notifier) -> None:
        self._notifier = notifier

    def collect(self) -> Iterator[Metric]:
        counts = CounterMetricFamily("pgwarden_notifications", "Webhook notifications by result: delivered, "
                                     "retried (an attempt failed and will be retried), failed (given up after "
                                     "every retry), dropped (the queue was full)", labels=["result"])
        for result, count in self._notifier.counts.items():
            counts.add_metric([result], count)
        yield counts
        yield GaugeMetricFamily("pgwarden_notifications_queued", "Notifications waiting to be sent",
                                value=self._notifier.pending)

"""A real HTTP webhook receiver for notification tests (aiohttp on loopback, in a thread of its own).

It can answer 200, fail the first N requests with 500, or hang (never answer). Every request's JSON body is
kept with the status it got; the path carries a secret token, as Slack's incoming-webhook URLs do.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web


class WebhookReceiver:
    """Mutable on purpose: the server's thread appends while the test reads (under a lock)."""

    def __init__(self, *, fail_first: int = 0, hang: bool = False) -> None:
        self.fail_first = fail_first
        self.hang = hang
        self.token = secrets.token_urlsafe(24)  # the secret part of the URL: it must never be logged
        self.attempts: list[tuple[int, dict[str, Any]]] = []  # (status answered, body), hung ones as 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._run, name="webhook-receiver", daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/services/T0/B0/{self.token}"

    def start(self) -> WebhookReceiver:
        ready = threading.Event()
        self._thread_ready = ready
        self._thread.start()
        assert ready.wait(10), "the webhook receiver did not start"
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def receive(request: web.Request) -> web.Response:
            if request.match_info["token"] != self.token:
                return web.Response(status=404)
            body = json.loads(await request.read())
            if self.hang:
                with self._lock:
                    self.attempts.append((0, body))
                await self._release.wait()  # until stop(): the sender must give up on its own
                return web.Response(status=200)
            with self._lock:
                status = 500 if len(self.attempts) < self.fail_first else 200
                self.attempts.append((status, body))
            return web.Response(status=status, text="ok" if status == 200 else "try again")

        async def boot() -> None:
            app = web.Application()
            app.router.add_post("/services/T0/B0/{token}", receive)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            self.port = self._runner.addresses[0][1]

        self._loop.run_until_complete(boot())
        self._thread_ready.set()
        self._loop.run_forever()

    def delivered(self) -> list[dict[str, Any]]:
        """Bodies answered with 200, in order."""
        with self._lock:
            return [body for status, body in self.attempts if status == 200]

    def wait_for(self, predicate: Callable[[list[dict[str, Any]]], bool], timeout_s: float = 20.0,
                 *, hung: bool = False) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                bodies = [body for status, body in self.attempts if hung or status == 200]
            if predicate(bodies):
                return bodies
            time.sleep(0.05)
        with self._lock:
            raise AssertionError(f"the receiver did not get the expected events in {timeout_s} s: {self.attempts}")

    def stop(self) -> None:
        async def shutdown() -> None:
            self._release.set()
            if self._runner is not None:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(15)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

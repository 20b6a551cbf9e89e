"""Limits of the HTTP listener of `pgwarden up`: timeouts, body and connection caps, and shared rate limits.

aiohttp (3.14) gives us two of the pieces: `client_max_size` caps a body, and the keep-alive timer, which it arms
when a connection opens and after each response, closes a connection that has not completed a request's headers
by then; so `idle_timeout_s` is both the idle keep-alive timeout and the deadline for a slowloris's headers. It
has no bound on how long a handler may read a trickled body, nor on how many sockets may be open: a middleware
bounds the first (`request_timeout_s`, answering 408) and `BoundedAppRunner` the second, shedding the OLDEST
connection when one more arrives, so idle sockets cannot lock out a person who is signing in now.

Rate limits count in the state store (`hit_counter`), so every worker and replica on one store shares them:
per client address and fixed window, on the device authorization and token endpoints and on second factors.
Over the limit: 429 with Retry-After; RFC 8628's `slow_down` (400) for device token polls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from aiohttp.web_protocol import RequestHandler

from identity.store.base import IdentityStore, StateStoreError, utc_now
from identity.web.pages import error_page

log = logging.getLogger("pgwarden.http")

LOG_INTERVAL_S = 10.0
LISTEN_BACKLOG = 1024  # the kernel caps it at net.core.somaxconn
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most `requests` per client address in each fixed window of `window_s` seconds; 0 requests: no limit."""

    requests: int
    window_s: int

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        """`N/SECONDS`, e.g. `10/60`."""
        count, _, window = text.partition("/")
        try:
            limit = cls(int(count), int(window))
        except ValueError:
            raise ValueError(f"expected REQUESTS/SECONDS, e.g. 10/60, not {text!r}") from None
        if limit.requests < 0 or limit.window_s < 1:
            raise ValueError(f"expected REQUESTS >= 0 and SECONDS >= 1, not {text!r}")
        return limit

    def __str__(self) -> str:
        return f"{self.requests}/{self.window_s}"


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpLimits:
    """What one client of the HTTP listener may cost; `pgwarden up --help` shows the flags."""

    idle_timeout_s: float = 15.0  # keep-alive idle time, and the time to send a request's headers
    request_timeout_s: float = 30.0  # a request's handling, reading its body included
    max_body_bytes: int = 1 << 20
    max_connections: int = 1024  # open sockets; one more sheds the oldest
    device_codes: RateLimit = field(default_factory=lambda: RateLimit(10, 60))
    tokens: RateLimit = field(default_factory=lambda: RateLimit(120, 60))  # all token endpoints together
    second_factors: RateLimit = field(default_factory=lambda: RateLimit(20, 300))  # TOTP, passkey, device codes typed

    def runner_options(self) -> dict[str, Any]:
        """Keyword arguments for web.AppRunner (they reach aiohttp's RequestHandler)."""
        return {"keepalive_timeout": self.idle_timeout_s, "lingering_time": 0.0}


# (method, path) -> (counter bucket, which limit, how to answer). POST /device is where people type user codes.
_TOKEN_PATHS = ("/v1/auth/token", "/v1/auth/device/token", "/v1/auth/cli/token", "/v1/auth/refresh",
                "/v1/auth/assertion")
_SECOND_FACTOR_PATHS = ("/login/totp", "/login/passkey", "/device")


def _rules(limits: HttpLimits) -> dict[tuple[str, str], tuple[str, RateLimit]]:
    rules = {("POST", "/v1/auth/device/code"): ("device-code", limits.device_codes)}
    rules.update({("POST", path): ("token", limits.tokens) for path in _TOKEN_PATHS})
    rules.update({("POST", path): ("second-factor", limits.second_factors) for path in _SECOND_FACTOR_PATHS})
    return rules


def rate_limits(store: Callable[[], IdentityStore], limits: HttpLimits) -> Middleware:
    """Middleware: count each limited request in the shared store; over the limit, refuse before the handler."""
    rules = _rules(limits)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        rule = rules.get((request.method, request.path))
        if rule is None or rule[1].requests == 0:
            return await handler(request)
        bucket, limit = rule
        now = utc_now()
        try:
            hit = await store().hit_counter(f"{bucket}:{request.remote or '?'}", window_s=limit.window_s, now=now)
        except StateStoreError as exc:
            log.warning("rate limit of %s not counted, refusing: %s", request.path, exc.message)
            return _limited(request, "the state store is unavailable; try again shortly", 5, status=503)
        if hit.count <= limit.requests:
            return await handler(request)
        retry = hit.retry_after_s(now)
        if hit.count == limit.requests + 1:  # once per address and window, not once per request
            log.warning("rate limit: %s from %s over %s requests per %d s", bucket, request.remote, limit.requests,
                        limit.window_s)
        return _limited(request, f"too many requests from this address; retry in {retry} s", retry)

    return middleware


def _limited(request: web.Request, message: str, retry_s: int, *, status: int = 429) -> web.Response:
    headers = {"Retry-After": str(retry_s), "Cache-Control": "no-store"}
    if request.path == "/v1/auth/device/token" and status == 429:
        # RFC 8628 §3.5: a polling device is told to slow down; it adds 5 s to its interval.
        return web.json_response({"error": "slow_down", "error_description": message}, status=400, headers=headers)
    if request.path.startswith("/v1/"):
        code = "temporarily_unavailable" if status == 503 else "too_many_requests"
        return web.json_response({"error": code, "error_description": message}, status=status, headers=headers)
    response = error_page("Too many attempts" if status == 429 else "Try again shortly", message, status=status)
    response.headers.update(headers)
    return response


def request_timeout(limits: HttpLimits) -> Middleware:
    """Middleware: a request must be handled, its body read included, within `request_timeout_s` (else 408)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            async with asyncio.timeout(limits.request_timeout_s):
                return await handler(request)
        except TimeoutError:
            response = web.Response(status=408, text="request not completed in time\n")
            response.force_close()  # the rest of a trickled body is not waited for (lingering_time is 0)
            return response

    return middleware


class _BoundedServer:
    """Wraps aiohttp's web.Server (the protocol factory): at most `max_connections` open, the oldest shed first."""

    def __init__(self, inner: web.Server, max_connections: int) -> None:
        self.inner = inner
        self._max = max_connections
        self._open: dict[RequestHandler, None] = {}  # insertion order: oldest first
        self.shed = 0
        self._unlogged = 0
        self._last_log = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __call__(self) -> RequestHandler:
        handler = self.inner()
        self._open[handler] = None
        if len(self._open) > self._max:
            # Connections that closed on their own are still listed: forget them first (transport None).
            for old in [h for h in self._open if h.transport is None and h is not handler]:
                del self._open[old]
            while len(self._open) > self._max:
                self._shed(next(iter(self._open)))
        return handler

    def _shed(self, handler: RequestHandler) -> None:
        del self._open[handler]
        self.shed += 1
        self._unlogged += 1
        if handler.transport is not None:
            handler.transport.abort()
        now = time.monotonic()
        if now - self._last_log >= LOG_INTERVAL_S:
            log.warning("shed %d HTTP connection(s) over --http-max-connections=%d since the last report; "
                        "oldest first", self._unlogged, self._max)
            self._unlogged, self._last_log = 0, now


class BoundedAppRunner(web.AppRunner):
    """web.AppRunner whose sites accept at most `max_connections` sockets, shedding the oldest."""

    def __init__(self, app: web.Application, *, max_connections: int, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._max_connections = max_connections
        self._bounded: _BoundedServer | None = None

    @property
    def server(self) -> Any:
        inner = super().server
        if inner is None:
            return None
        if self._bounded is None or self._bounded.inner is not inner:
            self._bounded = _BoundedServer(inner, self._max_connections)
        return self._bounded

    @property
    def shed_connections(self) -> int:
        return self._bounded.shed if self._bounded is not None else 0


def limit_app(app: web.Application, store: Callable[[], IdentityStore], limits: HttpLimits) -> None:
    """Add the request timeout and the rate limits to `app` (build it with client_max_size=limits.max_body_bytes)."""
    app.middlewares.append(request_timeout(limits))
    app.middlewares.append(rate_limits(store, limits))


async def start_limited_site(app: web.Application, limits: HttpLimits, *, host: str | None = None, port: int = 0,
                             sock: Any = None) -> BoundedAppRunner:
    """Serve `app` on host:port (or a bound socket) with the connection cap and timeouts of `limits`."""
    runner = BoundedAppRunner(app, max_connections=limits.max_connections, access_log=None,
                              **limits.runner_options())
    await runner.setup()
    # A deep accept queue (aiohttp's default is 128): a burst of connects must not drop a person's SYN.
    site: web.BaseSite = (web.SockSite(runner, sock, backlog=LISTEN_BACKLOG) if sock is not None
                          else web.TCPSite(runner, host, port, backlog=LISTEN_BACKLOG))
    await site.start()
    return runner

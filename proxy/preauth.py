"""Limits on PostgreSQL clients that have not authenticated yet, and the registry that enforces them.

An unauthenticated client costs a socket, a task and a read buffer, and anyone who can reach the port can open
many. So until the token (or client certificate) is verified:
- the whole of SSLRequest, TLS handshake, startup packet and password must finish within `timeout_s`;
- no message may be larger than `max_message_bytes`, and no more than that is ever buffered;
- at most `max_connections` such clients exist at once; one more sheds the OLDEST, not the newest, so a
  slowloris holding many idle sockets cannot lock out a real client that completes its login quickly;
- optionally, at most `max_per_address` per client address (the oldest of that address is shed).

Shedding aborts the socket (no TLS close, no ErrorResponse): it must cost less than the connection did.
Sheds are counted in ProxyMetrics and logged at most once per LOG_INTERVAL_S, never once per connection.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger("pgwarden.preauth")

LOG_INTERVAL_S = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class PreAuthLimits:
    """What an unauthenticated PostgreSQL client may cost; `pgwarden proxy --help` shows the flags."""

    timeout_s: float = 10.0  # SSLRequest + TLS handshake + startup packet + password
    max_message_bytes: int = 64 * 1024  # startup packet and password message
    max_connections: int = 512  # unauthenticated connections at once, over all addresses
    max_per_address: int = 0  # per client IP address; 0: no per-address cap (NAT and proxies share addresses)

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.max_message_bytes < 1024 or self.max_connections < 1 \
                or self.max_per_address < 0:
            raise ValueError("pre-auth limits: timeout > 0, message cap >= 1024 bytes, connection cap >= 1, "
                             "per-address cap >= 0")


class Sheddable(Protocol):
    def shed(self) -> None:
        """Drop the connection at once, without a goodbye."""


class PreAuthCounters(Protocol):
    preauth_shed: int


class PreAuthRegistry:
    """The unauthenticated connections of one listener, oldest first (dicts keep insertion order)."""

    def __init__(self, limits: PreAuthLimits, metrics: PreAuthCounters) -> None:
        self.limits = limits
        self._metrics = metrics
        self._all: dict[Sheddable, str] = {}  # connection -> its address
        self._by_address: dict[str, dict[Sheddable, None]] = {}
        self._unlogged = 0
        self._last_log = 0.0

    def __len__(self) -> int:
        return len(self._all)

    def admit(self, conn: Sheddable, address: str) -> None:
        """Register a new connection; shed the oldest ones over the caps (never `conn` itself)."""
        self._all[conn] = address
        per_address = self.limits.max_per_address
        if per_address:
            mine = self._by_address.setdefault(address, {})
            mine[conn] = None
            while len(mine) > per_address:
                self._shed(next(iter(mine)))
        while len(self._all) > self.limits.max_connections:
            self._shed(next(iter(self._all)))

    def authenticated(self, conn: Sheddable) -> None:
        """`conn` proved who it is (or closed): it no longer counts and can no longer be shed."""
        address = self._all.pop(conn, None)
        if address is None:
            return
        mine = self._by_address.get(address)
        if mine is not None:
            mine.pop(conn, None)
            if not mine:
                del self._by_address[address]

    def _shed(self, conn: Sheddable) -> None:
        self.authenticated(conn)
        self._metrics.preauth_shed += 1
        self._unlogged += 1
        now = time.monotonic()
        if now - self._last_log >= LOG_INTERVAL_S:
            log.warning("shed %d unauthenticated PostgreSQL connection(s) over the caps (%d at once, %s per address) "
                        "since the last report; oldest first", self._unlogged, self.limits.max_connections,
                        self.limits.max_per_address or "no cap")
            self._unlogged = 0
            self._last_log = now
        conn.shed()

"""Prometheus metrics of the proxy: plain integers bumped on the hot path, turned into series only when scraped.

The relay never touches a lock or a label dict: `ProxyMetrics` holds ints and a bucket list, and
`ProxyCollector` (a prometheus_client custom collector) reads them, the live sessions and the
access-log sinks at scrape time.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from proxy.audit.accesslog import AccessLog
from proxy.errors import AccessDenied, AuthenticationFailed, PgwardenError, UnknownService, UpstreamUnavailable

# Per-query decisions are meant to cost microseconds (cached) up to a millisecond (a CEL evaluation).
DECISION_BUCKETS_S = (1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 2.5e-2, 0.1)
CONTENT_TYPE = CONTENT_TYPE_LATEST  # what GET /metrics answers with (text format 0.0.4)
_REFUSED_AS_DENIED = (AccessDenied, AuthenticationFailed, UnknownService)


class ProxyMetrics:
    """Counters of one proxy process. Mutable on purpose: the relay bumps them in place, on one event loop."""

    __slots__ = ("sessions_allowed", "sessions_denied", "sessions_failed", "queries_allowed", "queries_denied",
                 "decision_counts", "decision_sum_s", "upstream_errors", "ended_bytes_from_client",
                 "ended_bytes_from_upstream", "preauth_shed", "preauth_timeouts", "preauth_oversize",
                 "would_deny")

    def __init__(self) -> None:
        self.sessions_allowed = 0
        self.sessions_denied = 0
        self.sessions_failed = 0
        self.queries_allowed = 0
        self.queries_denied = 0
        self.decision_counts = [0] * (len(DECISION_BUCKETS_S) + 1)  # the last one is +Inf
        self.decision_sum_s = 0.0
        self.upstream_errors = 0
        self.ended_bytes_from_client = 0
        self.ended_bytes_from_upstream = 0
        self.preauth_shed = 0  # unauthenticated connections dropped over the caps (proxy/preauth.py)
        self.preauth_timeouts = 0  # unauthenticated connections that did not log in within the timeout
        self.preauth_oversize = 0  # unauthenticated connections that sent a message over the cap
        self.would_deny: dict[tuple[str, str, str], int] = {}  # (service, policy, rule): AUDIT rules' would-be DENYs

    def query_decided(self, allowed: bool, seconds: float) -> None:
        """Count one per-query policy decision and how long it took (called by the relay)."""
        if allowed:
            self.queries_allowed += 1
        else:
            self.queries_denied += 1
        self.decision_counts[bisect_left(DECISION_BUCKETS_S, seconds)] += 1
        self.decision_sum_s += seconds

    def would_have_denied(self, service: str, policy: str, rule: str) -> None:
        """An allowed request or connection an AUDIT Policy's rule would have denied (shadow mode)."""
        key = (service, policy, rule)
        self.would_deny[key] = self.would_deny.get(key, 0) + 1

    def session_started(self) -> None:
        self.sessions_allowed += 1

    def session_refused(self, exc: PgwardenError) -> None:
        """A connection refused before the relay: denied (credential, access, unknown service) or failed."""
        if isinstance(exc, _REFUSED_AS_DENIED):
            self.sessions_denied += 1
        else:
            self.sessions_failed += 1
        if isinstance(exc, UpstreamUnavailable):
            self.upstream_errors += 1

    def session_ended(self, bytes_from_client: int, bytes_from_upstream: int, reason: PgwardenError | None) -> None:
        """A relaying session ended: keep its byte counts; an upstream that broke the protocol is an error."""
        self.ended_bytes_from_client += bytes_from_client
        self.ended_bytes_from_upstream += bytes_from_upstream
        if reason is not None and getattr(reason, "whose", "") == "upstream":
            self.upstream_errors += 1


class Generation(Protocol):
    @property
    def generation(self) -> int: ...


class ObservedProxy(Protocol):
    """What the collector reads of a running proxy (proxy/server.py's ProxyServer): no import of the server."""

    @property
    def metrics(self) -> ProxyMetrics: ...

    @property
    def live(self) -> Generation: ...

    @property
    def sessions(self) -> Mapping[str, Any]: ...

    @property
    def preauth(self) -> Sized: ...

    @property
    def access_log(self) -> AccessLog: ...


class ProxyCollector:
    """Yields the proxy's series from a running server; `skip` leaves out names another collector already serves."""

    def __init__(self, server: ObservedProxy | Callable[[], ObservedProxy | None], *, skip: Iterable[str] = ()) -> None:
        self._server = server
        self._skip = frozenset(skip)

    def _bound(self) -> ObservedProxy | None:
        return self._server() if callable(self._server) else self._server

    def collect(self) -> Iterator[Metric]:
        server = self._bound()
        if server is None:
            return
        families = [f for f in _families(server) if f.name not in self._skip]
        yield from families


def _families(server: ObservedProxy) -> Iterator[Metric]:
    m = server.metrics
    yield _gauge("pgwarden_sessions_open", "Client sessions relaying now", len(server.sessions))
    yield _gauge("pgwarden_live_generation", "Generation of the live snapshot (each reload adds one)",
                 server.live.generation)
    sessions = CounterMetricFamily("pgwarden_sessions", "Client connections by result: allowed (reached the "
                                   "relay), denied (credential or access refused), error", labels=["result"])
    sessions.add_metric(["allowed"], m.sessions_allowed)
    sessions.add_metric(["denied"], m.sessions_denied)
    sessions.add_metric(["error"], m.sessions_failed)
    yield sessions
    queries = CounterMetricFamily("pgwarden_queries", "Per-query policy decisions", labels=["decision"])
    queries.add_metric(["allowed"], m.queries_allowed)
    queries.add_metric(["denied"], m.queries_denied)
    yield queries
    yield _decision_histogram(m)
    would_deny = CounterMetricFamily("pgwarden_policy_would_deny", "Requests and connections allowed that an AUDIT "
                                     "Policy's rule would have denied (shadow mode)",
                                     labels=["service", "policy", "rule"])
    for (service, policy, rule), count in sorted(m.would_deny.items()):
        would_deny.add_metric([service, policy, rule], count)
    yield would_deny
    yield CounterMetricFamily("pgwarden_upstream_errors", "Upstream connections that failed or broke the protocol",
                              value=m.upstream_errors)
    from_client, from_upstream = m.ended_bytes_from_client, m.ended_bytes_from_upstream
    for session in list(server.sessions.values()):
        from_client += session.bytes_received
        from_upstream += session.upstream.bytes_received if session.upstream is not None else 0
    relay = CounterMetricFamily("pgwarden_relay_bytes", "Bytes relayed, by direction", labels=["direction"])
    relay.add_metric(["client_to_upstream"], from_client)
    relay.add_metric(["upstream_to_client"], from_upstream)
    yield relay
    yield _gauge("pgwarden_preauth_connections", "Client connections not authenticated yet", len(server.preauth))
    limits = getattr(server.preauth, "limits", None)
    if limits is not None:  # --preauth-max-connections: one more sheds the oldest
        yield _gauge("pgwarden_preauth_connections_limit", "Unauthenticated connections allowed at once",
                     limits.max_connections)
    preauth = CounterMetricFamily("pgwarden_preauth_refused", "Unauthenticated client connections dropped, by "
                                  "reason: shed (over the caps, oldest first), timeout, oversize (message over the "
                                  "pre-auth cap)", labels=["reason"])
    preauth.add_metric(["shed"], m.preauth_shed)
    preauth.add_metric(["timeout"], m.preauth_timeouts)
    preauth.add_metric(["oversize"], m.preauth_oversize)
    yield preauth
    dropped = sum(int(getattr(sink, "dropped", 0)) for sink in server.access_log.sinks)
    yield CounterMetricFamily("pgwarden_accesslog_dropped", "Access-log records not exported (queue full or "
                              "collector unreachable)", value=dropped)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _decision_histogram(m: ProxyMetrics) -> HistogramMetricFamily:
    buckets: list[tuple[str, float]] = []
    total = 0
    for bound, count in zip((*DECISION_BUCKETS_S, float("inf")), m.decision_counts, strict=True):
        total += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), total))
    return HistogramMetricFamily("pgwarden_decision_seconds", "Time to decide a query against the policies",
                                 buckets=buckets, sum_value=m.decision_sum_s)


def render(server: ObservedProxy) -> bytes:
    """The Prometheus text exposition of one proxy (the admin socket's GET /metrics)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProxyCollector(server))
    return generate_latest(registry)

"""Prometheus metrics of the reconciler and the live proxy, in one registry per process."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from reconciler.status import ConditionStatus, Reason, Status


class ReconcilerMetrics:
    """Counters updated by `observe()` after each cycle; gauges read live values when scraped."""

    def __init__(self, status: Status, generation: Callable[[], int], sessions: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        self._status = status
        self.duration = Histogram("pgwarden_reconcile_duration_seconds", "Duration of reconcile cycles",
                                  registry=self.registry, buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.results = Counter("pgwarden_reconcile_total", "Reconcile cycles by result and reason",
                               ["result", "reason"], registry=self.registry)
        self.decryption_failures = Counter("pgwarden_decryption_failures_total",
                                           "Reconcile cycles that failed to decrypt a Secret", registry=self.registry)
        self.last_applied = Gauge("pgwarden_last_applied_timestamp_seconds",
                                  "When the last revision went live", registry=self.registry)
        self.revision = Gauge("pgwarden_applied_revision_info", "The revision that is live (value 1)",
                              ["revision"], registry=self.registry)
        live = Gauge("pgwarden_live_generation", "Generation of the live snapshot", registry=self.registry)
        live.set_function(lambda: float(generation()))
        open_sessions = Gauge("pgwarden_sessions_open", "Client sessions relaying now", registry=self.registry)
        open_sessions.set_function(lambda: float(sessions()))
        self.registry.register(StatusCollector(status))
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, process_cpu_seconds_total
        self._seen = 0

    def observe(self) -> None:
        """Account for the attempts recorded since the last call."""
        new = list(self._status.history)[: max(0, sum(self._status.counters.values()) - self._seen)]
        self._seen = sum(self._status.counters.values())
        for attempt in reversed(new):
            self.duration.observe(attempt.duration_s)
            self.results.labels(result=attempt.result, reason=attempt.reason).inc()
            if attempt.reason == Reason.DECRYPTION_FAILED:
                self.decryption_failures.inc()
        if self._status.last_applied_at:
            self.last_applied.set(self._status.last_applied_at)
            self.revision.clear()
            self.revision.labels(revision=self._status.last_applied_revision).set(1)

    def render(self) -> bytes:
        self.observe()
        return generate_latest(self.registry)


class StatusCollector:
    """The status's conditions and upstream probes, read when scraped (what the alert rules watch).

    `pgwarden_condition{type}` is 1 while a condition is True and 0 while False, absent when not set
    (Stalled exists only while stalled); `pgwarden_upstream_up{service,config}` is the last probe's login,
    absent for configs the probe skips.
    """

    def __init__(self, status: Status) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        conditions = GaugeMetricFamily("pgwarden_condition", "Status conditions (Ready, Stalled, Reconciling, "
                                       "Healthy, Suspended): 1 True, 0 False", labels=["type", "reason"])
        for condition in list(self._status.conditions.values()):
            if condition.status != ConditionStatus.UNKNOWN:
                conditions.add_metric([condition.type.value, condition.reason.value],
                                      1.0 if condition.status == ConditionStatus.TRUE else 0.0)
        yield conditions
        upstream = GaugeMetricFamily("pgwarden_upstream_up", "Whether the last health probe logged in to the "
                                     "upstream of each Service config (1) or failed (0)", labels=["service", "config"])
        for service, configs in sorted(self._status.health.items()):
            for config, text in sorted(configs.items()):
                if text == "ok" or text.startswith("login failed"):
                    upstream.add_metric([service, config], 1.0 if text == "ok" else 0.0)
        yield upstream

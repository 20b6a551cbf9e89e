"""Prometheus metrics of a real proxy on its admin socket: the series move with sessions, bytes, reloads, decisions."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pgwarden.adminclient import call
from proxy.metrics import ProxyCollector
from reconciler.metrics import ReconcilerMetrics
from reconciler.status import Status
from tests.support.proxy_harness import ProxyHarness, start_harness


@pytest.fixture(scope="module")
def harness(pg: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyHarness]:
    h, stop = start_harness(pg, tmp_path_factory.mktemp("metrics"), name="metrics")
    yield h
    stop()


def scrape(harness: ProxyHarness) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics on the admin socket, as {(sample name, labels): value}."""
    status, body = call(harness.running.admin_socket, "GET", "/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_sessions_bytes_and_generation_move(harness: ProxyHarness) -> None:
    before = scrape(harness)
    with psycopg.connect(harness.dsn("alice")) as conn:
        conn.execute("SELECT repeat('x', 100000)").fetchone()
        during = scrape(harness)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(harness.dsn("alice", token="not-a-token"))
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(harness.dsn("bob", "wrong-host"))  # the upstream's certificate does not match its name
    harness.wait_for(lambda: value(scrape(harness), "pgwarden_sessions_open") == 0)
    generation = harness.reload_from(harness.manifests)
    after = scrape(harness)

    assert value(during, "pgwarden_sessions_open") == value(before, "pgwarden_sessions_open") + 1
    assert value(after, "pgwarden_sessions_total", result="allowed") == \
        value(before, "pgwarden_sessions_total", result="allowed") + 1
    assert value(after, "pgwarden_sessions_total", result="denied") == \
        value(before, "pgwarden_sessions_total", result="denied") + 1
    assert value(after, "pgwarden_sessions_total", result="error") == \
        value(before, "pgwarden_sessions_total", result="error") + 1
    assert value(after, "pgwarden_upstream_errors_total") == value(before, "pgwarden_upstream_errors_total") + 1
    # Live sessions count as they go, ended ones are kept: the 100 kB answer shows while and after.
    grown = value(during, "pgwarden_relay_bytes_total", direction="upstream_to_client") - \
        value(before, "pgwarden_relay_bytes_total", direction="upstream_to_client")
    assert grown > 100_000
    assert value(after, "pgwarden_relay_bytes_total", direction="upstream_to_client") >= \
        value(during, "pgwarden_relay_bytes_total", direction="upstream_to_client")
    assert value(after, "pgwarden_relay_bytes_total", direction="client_to_upstream") > \
        value(before, "pgwarden_relay_bytes_total", direction="client_to_upstream")
    assert value(after, "pgwarden_live_generation") == generation == value(before, "pgwarden_live_generation") + 1
    assert value(after, "pgwarden_accesslog_dropped_total") == 0  # no exporter configured


def test_query_decided_feeds_counters_and_histogram(harness: ProxyHarness) -> None:
    metrics = harness.running.server.metrics
    before = scrape(harness)
    harness.call(metrics.query_decided, True, 3e-6)
    harness.call(metrics.query_decided, True, 4e-6)
    harness.call(metrics.query_decided, False, 0.002)
    after = scrape(harness)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("pgwarden_queries_total", decision="allowed") == 2
    assert grew("pgwarden_queries_total", decision="denied") == 1
    assert grew("pgwarden_decision_seconds_count") == 3
    assert grew("pgwarden_decision_seconds_bucket", le="5e-06") == 2
    assert grew("pgwarden_decision_seconds_bucket", le="0.001") == 2
    assert grew("pgwarden_decision_seconds_bucket", le="0.005") == 3
    assert grew("pgwarden_decision_seconds_bucket", le="+Inf") == 3
    assert grew("pgwarden_decision_seconds_sum") == pytest.approx(0.002007)


def test_up_serves_one_registry_without_duplicate_series(harness: ProxyHarness) -> None:
    """`pgwarden up` merges the proxy's collector into the reconciler's registry (as up.py does)."""
    server = harness.running.server
    metrics = ReconcilerMetrics(Status(), generation=lambda: server.live.generation,
                                sessions=lambda: len(server.sessions))
    metrics.registry.register(ProxyCollector(  # type: ignore[arg-type]
        lambda: server, skip={"pgwarden_sessions_open", "pgwarden_live_generation"}))
    families = list(text_string_to_metric_families(generate_latest(metrics.registry).decode()))
    names = [f.name for f in families]
    assert len(names) == len(set(names))
    assert {"pgwarden_reconcile", "pgwarden_sessions_open", "pgwarden_live_generation", "pgwarden_sessions",
            "pgwarden_queries", "pgwarden_decision_seconds", "pgwarden_relay_bytes",
            "pgwarden_accesslog_dropped"} <= set(names)


def test_the_preauth_limit_is_exported_beside_the_count(harness: ProxyHarness) -> None:
    # The "near the limit" alert divides one by the other: the limit is --preauth-max-connections.
    samples = scrape(harness)
    assert value(samples, "pgwarden_preauth_connections_limit") == \
        harness.running.server.preauth.limits.max_connections == 512
    assert value(samples, "pgwarden_preauth_connections") == 0

"""The status series the alert rules watch: conditions and upstream probes, as a scrape shows them."""

from __future__ import annotations

import time

from prometheus_client.parser import text_string_to_metric_families

from proxy.snapshot import Snapshot
from reconciler.metrics import ReconcilerMetrics
from reconciler.status import Failure, Reason, Status


def _samples(metrics: ReconcilerMetrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    text = metrics.render().decode()
    return {tuple(sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples if s.name == name}


def _metrics(status: Status) -> ReconcilerMetrics:
    return ReconcilerMetrics(status, generation=lambda: 1, sessions=lambda: 0)


def test_a_stalled_revision_shows_until_a_good_one_is_applied() -> None:
    status = Status()
    metrics = _metrics(status)
    status.failed("main@sha1:bad", time.time(), Failure(reason=Reason.VALIDATION_FAILED, is_terminal=True,
                                                        message="users/bob.yaml: invalid", errors=[]), retry_at=None)
    assert _samples(metrics, "pgwarden_condition") == {
        (("reason", "ValidationFailed"), ("type", "Ready")): 0.0,
        (("reason", "ValidationFailed"), ("type", "Stalled")): 1.0,
    }
    status.succeeded("main@sha1:good", time.time(), Snapshot(), 2, [])
    assert _samples(metrics, "pgwarden_condition") == {(("reason", "ReconciliationSucceeded"), ("type", "Ready")): 1.0}


def test_a_transient_failure_is_reconciling_not_stalled() -> None:
    status = Status()
    metrics = _metrics(status)
    status.failed("main@sha1:x", time.time(), Failure(reason=Reason.ARTIFACT_FAILED, is_terminal=False,
                                                      message="git fetch timed out", errors=[]), retry_at=None)
    conditions = {dict(k)["type"]: v for k, v in _samples(metrics, "pgwarden_condition").items()}
    assert conditions == {"Ready": 0.0, "Reconciling": 1.0}


def test_each_probed_upstream_is_up_or_down_and_skipped_ones_are_absent() -> None:
    status = Status()
    metrics = _metrics(status)
    status.health = {"my-db": {"read-only": "ok", "full-access": "login failed: password authentication failed"},
                     "other": {"default": "skipped: the config forwards the client's user"}}
    assert _samples(metrics, "pgwarden_upstream_up") == {
        (("config", "full-access"), ("service", "my-db")): 0.0,
        (("config", "read-only"), ("service", "my-db")): 1.0,
    }


def test_the_process_reports_its_memory_and_cpu() -> None:
    # The sizing figures (memory per session, CPU per transaction) are read from these two on a live pod.
    metrics = _metrics(Status())
    assert _samples(metrics, "process_resident_memory_bytes")[()] > 10 * 2**20
    assert _samples(metrics, "process_cpu_seconds_total")[()] > 0

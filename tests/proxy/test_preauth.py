"""The registry of unauthenticated connections sheds the oldest over the caps, and never the newest."""

from __future__ import annotations

import logging

import pytest

from proxy.metrics import ProxyMetrics
from proxy.preauth import PreAuthLimits, PreAuthRegistry


class Conn:
    def __init__(self, name: str) -> None:
        self.name = name
        self.is_shed = False

    def shed(self) -> None:
        self.is_shed = True


def test_the_oldest_is_shed_over_the_global_cap_and_authenticated_ones_are_not_counted() -> None:
    metrics = ProxyMetrics()
    registry = PreAuthRegistry(PreAuthLimits(max_connections=3), metrics)
    conns = [Conn(str(i)) for i in range(5)]
    for c in conns[:3]:
        registry.admit(c, "10.0.0.1")
    registry.authenticated(conns[0])  # logged in: out of the count, never shed
    registry.admit(conns[3], "10.0.0.2")
    assert not any(c.is_shed for c in conns)
    registry.admit(conns[4], "10.0.0.3")
    assert [c.is_shed for c in conns] == [False, True, False, False, False]
    assert (len(registry), metrics.preauth_shed) == (3, 1)


def test_the_per_address_cap_sheds_that_address_oldest_first() -> None:
    registry = PreAuthRegistry(PreAuthLimits(max_connections=100, max_per_address=2), ProxyMetrics())
    a1, a2, b1, a3 = Conn("a1"), Conn("a2"), Conn("b1"), Conn("a3")
    for conn, address in ((a1, "10.0.0.1"), (a2, "10.0.0.1"), (b1, "10.0.0.2"), (a3, "10.0.0.1")):
        registry.admit(conn, address)
    assert [c.is_shed for c in (a1, a2, b1, a3)] == [True, False, False, False]
    registry.authenticated(a1)  # already gone: harmless
    assert len(registry) == 3


def test_sheds_are_logged_once_per_interval_not_per_connection(caplog: pytest.LogCaptureFixture) -> None:
    registry = PreAuthRegistry(PreAuthLimits(max_connections=1), ProxyMetrics())
    with caplog.at_level(logging.WARNING, logger="pgwarden.preauth"):
        for i in range(1000):
            registry.admit(Conn(str(i)), "10.0.0.1")
    assert len(caplog.records) == 1


@pytest.mark.parametrize("bad", [{"timeout_s": 0}, {"max_message_bytes": 100}, {"max_connections": 0},
                                 {"max_per_address": -1}])
def test_nonsense_limits_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="pre-auth limits"):
        PreAuthLimits(**bad)  # type: ignore[arg-type]

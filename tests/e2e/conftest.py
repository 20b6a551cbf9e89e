"""Fixtures for behaviour tests: a real proxy in front of the real test PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.proxy_harness import ProxyHarness, start_harness


@pytest.fixture(scope="session")
def proxy(pg: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyHarness]:
    harness, stop = start_harness(pg, tmp_path_factory.mktemp("proxy"))
    yield harness
    stop()


@pytest.fixture
def fresh_snapshot(proxy: ProxyHarness) -> Iterator[None]:
    """Restore the fixture manifests after a test that applies its own snapshot."""
    yield
    proxy.reload_from(proxy.manifests)

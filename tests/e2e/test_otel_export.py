"""The access log exported as OpenTelemetry logs to a real OTLP receiver, over OTLP/HTTP and OTLP/gRPC.

Also: --log-queries normalized keeps literals out of every destination, and a collector that is down
costs dropped (and counted) records, never a stuck or failed query.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pgwarden.adminclient import call
from proxy.audit.normalize import QueryText
from proxy.audit.otel import OtlpProtocol, OtlpSettings
from tests.conftest import free_port
from tests.support.gitops import ManifestRepo, UpProcess
from tests.support.otlp_receiver import OtlpReceiver, ReceivedLog
from tests.support.proxy_harness import ProxyHarness, start_harness

FAST = {"schedule_delay_s": 0.1, "timeout_s": 2.0}


def start_exporting_proxy(pg: Any, base: Path, **overrides: Any) -> tuple[ProxyHarness, Any]:
    """start_harness's proxy, with ProxyOptions overrides (the OTLP and --log-queries settings)."""
    return start_harness(pg, base, **overrides)


def of_user(records: list[ReceivedLog], user: str) -> list[ReceivedLog]:
    return [r for r in records if r.attributes.get("pgwarden.user") == user]


def kinds(records: list[ReceivedLog]) -> set[str]:
    return {str(r.attributes.get("pgwarden.postgres.type")) for r in records}


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def http_proxy(pg: Any, receiver: OtlpReceiver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyHarness]:
    url = receiver.start_http()
    settings = OtlpSettings(endpoint=url, protocol=OtlpProtocol.HTTP, instance_id="replica-http", **FAST)
    harness, stop = start_exporting_proxy(pg, tmp_path_factory.mktemp("otel-http"), otlp=settings,
                                          log_queries=QueryText.NORMALIZED)
    yield harness
    stop()


def test_http_export_carries_every_record_with_attributes(http_proxy: ProxyHarness, receiver: OtlpReceiver,
                                                           pg: Any) -> None:
    token = http_proxy.token("alice")
    with psycopg.connect(http_proxy.dsn("alice", token=token)) as conn:
        conn.execute("SELECT * FROM (VALUES (42)) AS t(id) WHERE id = 42 AND 'otel-literal' <> ''", prepare=False)

    async def extended() -> None:
        conn = await asyncpg.connect(host="127.0.0.1", port=http_proxy.port, user="alice", database="my-db",
                                     password=token, ssl="require")
        await conn.fetchval("SELECT 'otel-extended' || $1::text", "x")
        await conn.close()

    asyncio.run(extended())
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(http_proxy.dsn("alice", token="not-a-token"))

    def complete(records: list[ReceivedLog]) -> bool:
        mine = of_user(records, "alice")
        return (sum(r.attributes.get("pgwarden.postgres.type") == "SESSION_END" for r in mine) >= 2
                and any(r.attributes.get("pgwarden.status") == "DENIED" for r in records))

    records = receiver.wait_for(complete)
    mine = of_user(records, "alice")
    assert {"SESSION_START", "QUERY", "PARSE", "SESSION_END"} <= kinds(mine)
    assert {r.transport for r in records} == {"http"}

    query = next(r for r in mine if r.attributes.get("pgwarden.postgres.type") == "QUERY"
                 and "VALUES" in r.attributes["db.statement"])
    # --log-queries normalized: PostgreSQL's parser replaced each literal by a parameter.
    assert query.attributes["db.statement"] == "SELECT * FROM (VALUES ($1)) AS t(id) WHERE id = $2 AND $3 <> $4"
    assert query.attributes["db.system"] == "postgresql"
    assert query.attributes["db.user"] == "full_access" and query.attributes["db.name"] == "my_db"
    assert query.attributes["pgwarden.service"] == "my-db" and query.attributes["pgwarden.config"] == "full-access"
    assert query.severity_text == "INFO" and query.event_name == "pgwarden.access.QUERY"
    assert query.resource["service.name"] == "pgwarden"
    assert query.resource["service.instance.id"] == "replica-http"
    assert query.scope == "pgwarden.accesslog"

    parse = next(r for r in mine if r.attributes.get("pgwarden.postgres.type") == "PARSE")
    assert parse.attributes["db.statement"] == "SELECT $2 || $1::text"  # the literal numbered after $1
    start = next(r for r in mine if r.attributes.get("pgwarden.postgres.type") == "SESSION_START")
    assert start.attributes["pgwarden.postgres.start.requestedUser"] == "alice"
    end = next(r for r in mine if r.attributes.get("pgwarden.postgres.type") == "SESSION_END")
    assert end.attributes["pgwarden.postgres.end.bytesFromUpstream"] > 0

    denied = next(r for r in records if r.attributes.get("pgwarden.status") == "DENIED")
    assert denied.severity_text == "WARN" and "DENIED" in denied.body

    payload = receiver.payload()
    assert b"otel-literal" not in payload and b"otel-extended" not in payload
    assert token.encode() not in payload and b"not-a-token" not in payload
    for password in pg.passwords.values():
        assert password.encode() not in payload
    # The JSON-lines log got the same normalised text.
    http_proxy.log_entries()  # flushes
    text = http_proxy.log_path.read_text()
    assert "otel-literal" not in text and "$1" in text


def test_grpc_export_with_headers_and_full_text(pg: Any, tmp_path: Path) -> None:
    receiver = OtlpReceiver()
    url = receiver.start_grpc()
    settings = OtlpSettings(endpoint=url, protocol=OtlpProtocol.GRPC, headers={"x-pgwarden-test": "grpc-header"},
                            **FAST)
    harness, stop = start_exporting_proxy(pg, tmp_path, otlp=settings)
    try:
        token = harness.token("bob")
        with psycopg.connect(harness.dsn("bob", token=token)) as conn:
            conn.execute("SELECT 'grpc-literal' AS label", prepare=False)
        records = receiver.wait_for(lambda rs: "SESSION_END" in kinds(of_user(rs, "bob")))
    finally:
        stop()
        receiver.stop()
    query = next(r for r in of_user(records, "bob") if r.attributes.get("pgwarden.postgres.type") == "QUERY"
                 and "label" in r.attributes["db.statement"])
    assert query.transport == "grpc"
    assert query.attributes["db.statement"] == "SELECT 'grpc-literal' AS label"  # --log-queries full
    assert query.attributes["db.user"] == "read_only"
    assert all(m.get("x-pgwarden-test") == "grpc-header" for m in receiver.metadata)
    assert token.encode() not in receiver.payload()


def test_collector_down_drops_and_counts_but_queries_go_on(pg: Any, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    settings = OtlpSettings(endpoint=closed, max_queue=20, batch_size=10, warn_interval_s=3600, **FAST)
    harness, stop = start_exporting_proxy(pg, tmp_path, otlp=settings)
    sink = harness.running.server.access_log.sinks[0]
    try:
        with caplog.at_level(logging.WARNING, logger="pgwarden.accesslog"):
            with psycopg.connect(harness.dsn("alice")) as conn:
                answers = [conn.execute(f"SELECT {i}", prepare=False).fetchone()[0] for i in range(300)]
            assert answers == list(range(300))
            harness.wait_for(lambda: sink.dropped >= 250 and any("dropped" in r.message for r in caplog.records),
                             timeout_s=20)
            warnings = [r for r in caplog.records if r.name == "pgwarden.accesslog"]
        # One report per interval, not one per record; the message names the place, not a header or a token.
        assert 1 <= len(warnings) <= 2
        assert "127.0.0.1" in warnings[0].message and "dropped" in warnings[0].message
        assert sink.exported == 0
        status, body = call(harness.running.admin_socket, "GET", "/metrics")
        assert status == 200
        families = {f.name: f for f in text_string_to_metric_families(body)}
        assert families["pgwarden_accesslog_dropped"].samples[0].value >= 250
        # The JSON-lines log does not depend on the collector: every query is there.
        queries = [e for e in harness.log_entries() if e["entry"]["info"]["postgres"]["type"] == "QUERY"]
        assert len(queries) >= 300
    finally:
        stop()


def test_pgwarden_up_exports_and_serves_one_metrics_page(pg: Any, tmp_path: Path, leak_guard: Any) -> None:
    """The CLI options end to end: `pgwarden up --otlp-endpoint … --otlp-header … --log-queries normalized`."""
    receiver = OtlpReceiver()
    url = receiver.start_http()
    repo = ManifestRepo(tmp_path, pg)
    repo.write_defaults()
    repo.commit("initial")
    collector_secret = "collector-credential-7f3a"
    leak_guard.secrets.add(collector_secret)
    up = UpProcess(repo.url, tmp_path / "data", "--age-key-file", str(repo.key_file), "--poll-interval", "3600",
                   "--otlp-endpoint", url, "--otlp-header", f"authorization=Bearer {collector_secret}",
                   "--log-queries", "normalized")
    try:
        dsn = up.dsn("alice")
        with psycopg.connect(dsn) as conn:
            conn.execute("SELECT 'up-literal' AS label", prepare=False)
        records = receiver.wait_for(lambda rs: "SESSION_END" in kinds(of_user(rs, "alice")))
        with urllib.request.urlopen(f"http://127.0.0.1:{up.http_port}/metrics", timeout=10) as resp:
            page = resp.read().decode()
        admin_status, admin_page = call(up.data_dir / "admin.sock", "GET", "/metrics")
    finally:
        output = up.stop()
        receiver.stop()
    query = next(r for r in of_user(records, "alice") if "label" in str(r.attributes.get("db.statement")))
    assert query.attributes["db.statement"] == "SELECT $1 AS label"
    assert all(m.get("authorization") == f"Bearer {collector_secret}" for m in receiver.metadata)
    assert b"up-literal" not in receiver.payload()
    names = [f.name for f in text_string_to_metric_families(page)]
    assert len(names) == len(set(names))  # one registry: the reconciler's and the proxy's series, none twice
    assert {"pgwarden_reconcile", "pgwarden_live_generation", "pgwarden_sessions", "pgwarden_relay_bytes",
            "pgwarden_accesslog_dropped"} <= set(names)
    sessions = next(f for f in text_string_to_metric_families(page) if f.name == "pgwarden_sessions")
    assert any(s.labels == {"result": "allowed"} and s.value >= 1 for s in sessions.samples)
    assert admin_status == 200 and "pgwarden_sessions_total" in admin_page
    dsn_token = dsn.rsplit("password=", 1)[1]
    assert dsn_token.encode() not in receiver.payload()
    leak_guard.check(output, "pgwarden up output")


@pytest.mark.parametrize(("option", "value"), [("--otlp-endpoint", "ftp://user:s3cret-in-url@collector"),
                                               ("--otlp-header", "s3cret-without-a-name")])
def test_bad_otlp_option_is_one_clear_line_without_the_value(tmp_path: Path, option: str, value: str) -> None:
    out = subprocess.run([sys.executable, "-m", "pgwarden", "proxy", "--manifests", str(tmp_path), option, value],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert f"argument {option}:" in out.stderr and "s3cret" not in out.stderr + out.stdout

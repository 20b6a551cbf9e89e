"""OTLP export settings from options and the standard OTEL_EXPORTER_OTLP_* variables; the record's shape."""

from __future__ import annotations

from typing import Any

from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs.export import LogRecordExportResult

from proxy.audit.otel import (
    OtelAccessLogSink,
    OtlpProtocol,
    OtlpSettings,
    http_logs_url,
    otel_attributes,
    settings_from,
    summary,
)


def test_no_endpoint_anywhere_means_no_export() -> None:
    assert settings_from(None, None, {}, {}) is None


def test_environment_turns_export_on_and_picks_the_protocol() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    settings = settings_from(None, None, {}, env)
    assert settings is not None and settings.endpoint is None and settings.protocol is OtlpProtocol.GRPC
    env = {"OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "http://127.0.0.1:4318/v1/logs",
           "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
    assert settings_from(None, None, {}, env).protocol is OtlpProtocol.HTTP  # type: ignore[union-attr]


def test_command_line_wins_over_environment() -> None:
    settings = settings_from("http://127.0.0.1:9999", "http", {"k": "v"}, {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert settings == OtlpSettings(endpoint="http://127.0.0.1:9999", protocol=OtlpProtocol.HTTP, headers={"k": "v"})


def test_base_url_gets_the_logs_path() -> None:
    assert http_logs_url("http://127.0.0.1:4318") == "http://127.0.0.1:4318/v1/logs"
    assert http_logs_url("http://127.0.0.1:4318/") == "http://127.0.0.1:4318/v1/logs"
    assert http_logs_url("https://collector/custom/logs") == "https://collector/custom/logs"


def test_describe_never_shows_credentials_in_the_url() -> None:
    settings = OtlpSettings(endpoint="https://user:s3cret@collector.example:4318/v1/logs")
    assert "s3cret" not in settings.describe() and "collector.example:4318" in settings.describe()


def test_denied_connection_record() -> None:
    common = {"connectionID": "c1", "user": "alice", "service": "my-db", "status": "DENIED",
              "reason": "no rule allows alice", "clientAddress": "127.0.0.1:5555"}
    postgres = {"type": "SESSION_START", "start": {"requestedUser": "alice", "requestedDatabase": "my-db"}}
    attributes = otel_attributes("c1-0", common, postgres)
    assert attributes["pgwarden.status"] == "DENIED" and attributes["enduser.id"] == "alice"
    assert attributes["client.address"] == "127.0.0.1" and attributes["log.record.uid"] == "c1-0"
    assert attributes["pgwarden.postgres.start.requestedDatabase"] == "my-db"
    assert "db.statement" not in attributes
    assert summary(common, postgres, is_denied=True) == "SESSION_START DENIED alice -> my-db: no rule allows alice"


def test_per_query_decision_record_names_what_decided() -> None:
    common = {"connectionID": "c1", "user": "bob", "service": "my-db", "status": "ALLOWED", "reason": "rule 2",
              "upstreamUser": "read_only", "upstreamDatabase": "my_db"}
    postgres = {"type": "QUERY", "query": {"query": "DELETE FROM t WHERE id = $1", "kinds": ["DELETE"]},
                "decision": {"status": "DENIED", "policy": "read-only", "rule": "no-writes", "reason": "writes denied"}}
    attributes = otel_attributes("c1-7", common, postgres)
    assert attributes["db.statement"] == "DELETE FROM t WHERE id = $1"
    assert attributes["db.user"] == "read_only" and attributes["db.name"] == "my_db"
    assert attributes["pgwarden.postgres.decision.status"] == "DENIED"
    assert attributes["pgwarden.postgres.query.kinds"] == ("DELETE",)
    assert summary(common, postgres, is_denied=True) == \
        "QUERY DENIED bob -> my-db by policy read-only, rule no-writes: writes denied"


class CollectingExporter:
    """The LogExporter seam's in-memory side; the OTLP wire is tested against a real receiver in tests/e2e."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []

    def export(self, batch: Any) -> LogRecordExportResult:
        self.batches.append(list(batch))
        return LogRecordExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def test_denied_decision_is_a_warning_and_allowed_is_info() -> None:
    exporter = CollectingExporter()
    sink = OtelAccessLogSink(OtlpSettings(endpoint="http://127.0.0.1:9", schedule_delay_s=0.05), exporter=exporter)
    common = {"connectionID": "c1", "user": "bob", "service": "my-db", "status": "ALLOWED"}
    for status in ("ALLOWED", "DENIED"):
        sink.emit(f"c1-{status}", common, {"type": "QUERY", "query": {"query": "SELECT $1"},
                                           "decision": {"status": status, "policy": "p", "rule": "r"}})
    sink.close()
    records = [r.log_record for batch in exporter.batches for r in batch]
    assert [(r.severity_text, r.severity_number) for r in records] == \
        [("INFO", SeverityNumber.INFO), ("WARN", SeverityNumber.WARN)]
    assert sink.exported == 2 and sink.dropped == 0

"""Export access-log records as OpenTelemetry log records over OTLP/HTTP or OTLP/gRPC, without blocking the relay.

The event loop only appends (time, fields) to a bounded deque; a worker thread builds the OTel records
and hands batches to the SDK's OTLP exporter. A full queue or a failed export drops records: they are
counted (`dropped`, the pgwarden_accesslog_dropped_total metric) and reported in one warning line per
interval, never one per record.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol
from urllib.parse import urlsplit

from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.context import Context
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

log = logging.getLogger("pgwarden.accesslog")

SCOPE = InstrumentationScope("pgwarden.accesslog")
COMMON_CACHE_ENTRIES = 1024
_EMPTY_CONTEXT = Context()


class OtlpProtocol(StrEnum):
    """The --otlp-protocol choices (OTEL_EXPORTER_OTLP_PROTOCOL spells them http/protobuf and grpc)."""

    HTTP = "http"
    GRPC = "grpc"


@dataclass(frozen=True, slots=True, kw_only=True)
class OtlpSettings:
    """Where and how to export. `endpoint` None: the exporter reads OTEL_EXPORTER_OTLP_* from the environment."""

    endpoint: str | None = None
    protocol: OtlpProtocol = OtlpProtocol.HTTP
    headers: Mapping[str, str] = field(default_factory=dict)  # may hold a collector credential: never logged
    timeout_s: float = 5.0
    max_queue: int = 8192
    batch_size: int = 512
    schedule_delay_s: float = 1.0
    warn_interval_s: float = 60.0
    instance_id: str = ""

    def describe(self) -> str:
        """The endpoint without any user:password, for messages."""
        if not self.endpoint:
            return f"OTLP/{self.protocol} endpoint from OTEL_EXPORTER_OTLP_*"
        parts = urlsplit(self.endpoint)
        return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"


class LogExporter(Protocol):
    """What the SDK's OTLPLogExporter (HTTP and gRPC) offers."""

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult: ...

    def shutdown(self) -> None: ...


def settings_from(endpoint: str | None, protocol: str | None, headers: Mapping[str, str],
                  environ: Mapping[str, str]) -> OtlpSettings | None:
    """Settings from the command line, else from the standard OTEL_EXPORTER_OTLP_* variables; None: no export.

    With no --otlp-endpoint the exporter itself reads OTEL_EXPORTER_OTLP_[LOGS_]ENDPOINT, _HEADERS, _TIMEOUT
    and the TLS settings, as every OpenTelemetry SDK does.
    """
    if endpoint is None and not (environ.get("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT")
                                 or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")):
        return None
    if protocol is None:
        named = environ.get("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
        protocol = "grpc" if named.strip().lower() == "grpc" else "http"
    return OtlpSettings(endpoint=endpoint, protocol=OtlpProtocol(protocol), headers=dict(headers))


def http_logs_url(endpoint: str) -> str:
    """A base URL (http://host:4318) gets the signal path /v1/logs, as OTEL_EXPORTER_OTLP_ENDPOINT does."""
    parts = urlsplit(endpoint)
    if parts.path in ("", "/"):
        return endpoint.rstrip("/") + "/v1/logs"
    return endpoint


def build_exporter(settings: OtlpSettings) -> LogExporter:
    headers = dict(settings.headers) or None
    if settings.protocol is OtlpProtocol.GRPC:
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcExporter

        insecure = None if settings.endpoint is None else settings.endpoint.startswith("http://")
        return GrpcExporter(endpoint=settings.endpoint, insecure=insecure, headers=headers,
                            timeout=settings.timeout_s)
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpExporter

    endpoint = http_logs_url(settings.endpoint) if settings.endpoint else None
    return HttpExporter(endpoint=endpoint, headers=headers, timeout=settings.timeout_s)


class OtelAccessLogSink:
    """An AccessLog sink. Mutable on purpose: a queue and counters shared with one worker thread.

    `emit` runs on the event loop and only appends; `dropped_full` is written by the loop,
    `dropped_failed` and `exported` by the worker, so no counter has two writers.
    """

    def __init__(self, settings: OtlpSettings, *, exporter: LogExporter | None = None) -> None:
        self.settings = settings
        self._exporter = exporter or build_exporter(settings)
        self._resource = Resource.create({
            "service.name": "pgwarden",
            "service.instance.id": settings.instance_id or str(uuid.uuid4()),
            "host.name": socket.gethostname(),
            "process.pid": os.getpid(),
        })
        self._queue: collections.deque[tuple[int, str, Mapping[str, Any], Mapping[str, Any]]] = collections.deque()
        self._max_queue = settings.max_queue
        self._wake = threading.Event()
        self._stopping = False
        self.dropped_full = 0
        self.dropped_failed = 0
        self.exported = 0
        self._reported_drops = 0
        self._last_warning = 0.0
        self._common_cache: dict[int, tuple[Mapping[str, Any], dict[str, Any]]] = {}  # worker thread only
        self._thread = threading.Thread(target=self._run, name="pgwarden-otlp-export", daemon=True)
        self._thread.start()

    @property
    def dropped(self) -> int:
        return self.dropped_full + self.dropped_failed

    def emit(self, entry_id: str, common: Mapping[str, Any], postgres: Mapping[str, Any]) -> None:
        """Queue one access-log record (event loop; never blocks). The mappings must not change afterwards."""
        queue = self._queue
        if len(queue) >= self._max_queue or self._stopping:
            self.dropped_full += 1
            return
        queue.append((time.time_ns(), entry_id, common, postgres))
        if len(queue) >= self.settings.batch_size and not self._wake.is_set():
            self._wake.set()

    def close(self, timeout_s: float = 5.0) -> None:
        """Export what is queued (within `timeout_s`), then stop the worker. Blocking: call it off the loop."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout_s)
        self._exporter.shutdown()
        self._thread.join(1.0)

    # --- worker thread -------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self.settings.schedule_delay_s)
            self._wake.clear()
            self._export_queued()
            self._warn_about_drops()
        self._export_queued()
        self._warn_about_drops(final=True)

    def _export_queued(self) -> None:
        queue = self._queue
        while queue:
            count = min(len(queue), self.settings.batch_size)
            items = [queue.popleft() for _ in range(count)]
            try:
                result = self._exporter.export([self._record(*item) for item in items])
            except Exception:  # noqa: BLE001 - a bug in a record or the exporter must not end the worker
                log.exception("access log export to %s failed", self.settings.describe())
                result = LogRecordExportResult.FAILURE
            if result is LogRecordExportResult.SUCCESS:
                self.exported += count
            else:
                self.dropped_failed += count
                return  # the collector is down or slow: leave the rest for the next round (or the full queue)

    def _warn_about_drops(self, *, final: bool = False) -> None:
        dropped = self.dropped
        now = time.monotonic()
        if dropped == self._reported_drops:
            return
        if not final and self._last_warning and now - self._last_warning < self.settings.warn_interval_s:
            return
        log.warning("access log export to %s: %d records dropped since the last report (%d in total); "
                    "the collector is down or too slow", self.settings.describe(), dropped - self._reported_drops,
                    dropped)
        self._reported_drops = dropped
        self._last_warning = now

    def _session_attributes(self, common: Mapping[str, Any]) -> dict[str, Any]:
        """Flatten a session's common block once: its records share the same mapping object."""
        cached = self._common_cache.get(id(common))
        if cached is not None and cached[0] is common:  # the cache holds `common`, so its id is not reused
            return cached[1]
        if len(self._common_cache) >= COMMON_CACHE_ENTRIES:
            self._common_cache.clear()
        attributes = common_attributes(common)
        self._common_cache[id(common)] = (common, attributes)
        return attributes

    def _record(self, time_ns: int, entry_id: str, common: Mapping[str, Any],
                postgres: Mapping[str, Any]) -> ReadableLogRecord:
        attributes = otel_attributes(entry_id, common, postgres, session_attributes=self._session_attributes(common))
        is_denied = "DENIED" in (common.get("status"), postgres.get("status"), postgres.get("decision"),
                                 attributes.get("pgwarden.postgres.decision.status"))
        record = LogRecord(
            timestamp=time_ns, observed_timestamp=time_ns, context=_EMPTY_CONTEXT,
            severity_number=SeverityNumber.WARN if is_denied else SeverityNumber.INFO,
            severity_text="WARN" if is_denied else "INFO",
            body=summary(common, postgres, is_denied=is_denied), attributes=attributes,
            event_name=f"pgwarden.access.{postgres.get('type', 'EVENT')}",
        )
        return ReadableLogRecord(log_record=record, resource=self._resource, instrumentation_scope=SCOPE)


# --- record shape (pure) -----------------------------------------------------------------
_ATTRIBUTE_TYPES = (str, bool, int, float)


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if value is None:
        return
    if isinstance(value, Mapping):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}", inner, out)
    elif isinstance(value, _ATTRIBUTE_TYPES):
        out[prefix] = value
    elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        out[prefix] = tuple(value)
    else:
        out[prefix] = json.dumps(value, default=str, separators=(",", ":"))


def statement_text(postgres: Mapping[str, Any]) -> str | None:
    """The query text of a QUERY/PARSE/BIND record ({"query": {"query": text}}, {"parse": {...}}, {"bind": {...}})."""
    for key in ("query", "parse", "bind"):
        inner = postgres.get(key)
        if isinstance(inner, Mapping) and isinstance(inner.get("query"), str):
            return str(inner["query"])
    return None


def common_attributes(common: Mapping[str, Any]) -> dict[str, Any]:
    """The session-constant part: pgwarden.* for our fields, db.*/enduser.*/client.* where a convention fits."""
    out: dict[str, Any] = {"db.system": "postgresql"}
    for key, value in common.items():
        _flatten(f"pgwarden.{key}", value, out)
    if common.get("upstreamUser"):
        out["db.user"] = str(common["upstreamUser"])
    if common.get("upstreamDatabase"):
        out["db.name"] = str(common["upstreamDatabase"])
    if common.get("user"):
        out["enduser.id"] = str(common["user"])
    if common.get("clientAddress"):
        out["client.address"] = str(common["clientAddress"]).rsplit(":", 1)[0]
    return out


def otel_attributes(entry_id: str, common: Mapping[str, Any], postgres: Mapping[str, Any], *,
                    session_attributes: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Flatten one record; `session_attributes` is `common_attributes(common)` when the caller has it already."""
    out = dict(session_attributes if session_attributes is not None else common_attributes(common))
    out["log.record.uid"] = entry_id
    _flatten("pgwarden.postgres", postgres, out)
    start = postgres.get("start")
    if isinstance(start, Mapping):  # a SESSION_START names the upstream role even where `common` does not
        for attribute, key in (("db.user", "user"), ("db.name", "database")):
            if attribute not in out and start.get(key):
                out[attribute] = str(start[key])
    text = statement_text(postgres)
    if text is not None:
        out["db.statement"] = text
    return out


def summary(common: Mapping[str, Any], postgres: Mapping[str, Any], *, is_denied: bool) -> str:
    """The log body: one short line a person reads in a log viewer."""
    kind = str(postgres.get("type", "EVENT"))
    who = f"{common.get('user') or '?'} -> {common.get('service') or '?'}"
    decision = postgres.get("decision")
    if isinstance(decision, Mapping):  # a per-query decision: name what decided (common's reason is the connect's)
        by = f"policy {decision.get('policy') or '?'}, rule {decision.get('rule') or '?'}"
        verdict = "DENIED" if is_denied else "ALLOWED"
        would = decision.get("wouldDeny")
        if isinstance(would, Mapping):  # shadow mode: name the AUDIT rule that would have denied it
            by += f"; AUDIT policy {would.get('policy')}, rule {would.get('rule')} would deny"
        return f"{kind} {verdict} {who} by {by}" + (f": {decision['reason']}" if decision.get("reason") else "")
    if is_denied:
        reason = postgres.get("reason") or common.get("reason") or ""
        return f"{kind} DENIED {who}: {reason}".rstrip(": ")
    if kind == "SESSION_START":
        return f"{kind} {who} (config {common.get('config', '?')})"
    return f"{kind} {who}"

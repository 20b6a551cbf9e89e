"""A real OTLP logs receiver for tests: OTLP/HTTP (aiohttp, POST /v1/logs) and OTLP/gRPC (LogsService/Export).

Requests are decoded with opentelemetry-proto's generated classes, as a collector would. The raw request
bodies are kept too, so tests can grep them for secrets.
"""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import web
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue


@dataclass(frozen=True, slots=True)
class ReceivedLog:
    """One decoded LogRecord with its resource and scope."""

    transport: str  # "http" or "grpc"
    resource: dict[str, Any]
    scope: str
    body: Any
    severity_text: str
    severity_number: int
    event_name: str
    time_unix_nano: int
    attributes: dict[str, Any]


def decode_value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [decode_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return decode_attributes(value.kvlist_value.values)
    return getattr(value, kind)


def decode_attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: decode_value(kv.value) for kv in pairs if isinstance(kv, KeyValue)}


class OtlpReceiver:
    """Collects what exporters send. Mutable on purpose: the servers' threads append while tests read."""

    def __init__(self) -> None:
        self.records: list[ReceivedLog] = []
        self.raw: list[bytes] = []
        self.metadata: list[dict[str, str]] = []  # request headers (HTTP) or invocation metadata (gRPC)
        self._lock = threading.Lock()
        self._http_loop: asyncio.AbstractEventLoop | None = None
        self._http_runner: web.AppRunner | None = None
        self._http_thread: threading.Thread | None = None
        self._grpc: grpc.Server | None = None

    def _accept(self, transport: str, body: bytes, metadata: dict[str, str]) -> None:
        request = logs_service_pb2.ExportLogsServiceRequest()
        request.ParseFromString(body)
        decoded = []
        for resource_logs in request.resource_logs:
            resource = decode_attributes(resource_logs.resource.attributes)
            for scope_logs in resource_logs.scope_logs:
                for record in scope_logs.log_records:
                    decoded.append(ReceivedLog(
                        transport=transport, resource=resource, scope=scope_logs.scope.name,
                        body=decode_value(record.body), severity_text=record.severity_text,
                        severity_number=int(record.severity_number), event_name=record.event_name,
                        time_unix_nano=record.time_unix_nano, attributes=decode_attributes(record.attributes),
                    ))
        with self._lock:
            self.raw.append(body)
            self.metadata.append(metadata)
            self.records.extend(decoded)

    # --- OTLP/HTTP -----------------------------------------------------------------------
    def start_http(self) -> str:
        """Serve POST /v1/logs on a free loopback port; returns the base URL (http://127.0.0.1:PORT)."""
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        holder: dict[str, Any] = {}

        async def export(request: web.Request) -> web.Response:
            body = await request.read()
            if request.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            if request.content_type != "application/x-protobuf":
                return web.Response(status=415, text="OTLP/HTTP protobuf only")
            self._accept("http", body, {k.lower(): v for k, v in request.headers.items()})
            response = logs_service_pb2.ExportLogsServiceResponse().SerializeToString()
            return web.Response(body=response, content_type="application/x-protobuf")

        def run() -> None:
            asyncio.set_event_loop(loop)

            async def boot() -> None:
                app = web.Application(client_max_size=64 << 20)
                app.router.add_post("/v1/logs", export)
                runner = web.AppRunner(app, access_log=None)
                await runner.setup()
                site = web.TCPSite(runner, "127.0.0.1", 0)
                await site.start()
                holder["runner"] = runner
                holder["port"] = runner.addresses[0][1]
                ready.set()

            loop.run_until_complete(boot())
            loop.run_forever()

        thread = threading.Thread(target=run, name="otlp-http-receiver", daemon=True)
        thread.start()
        assert ready.wait(10), "OTLP/HTTP receiver did not start"
        self._http_loop, self._http_runner, self._http_thread = loop, holder["runner"], thread
        return f"http://127.0.0.1:{holder['port']}"

    # --- OTLP/gRPC -----------------------------------------------------------------------
    def start_grpc(self) -> str:
        """Serve LogsService/Export on a free loopback port; returns http://127.0.0.1:PORT (plaintext)."""
        receiver = self

        class Logs(logs_service_pb2_grpc.LogsServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 - the generated name
                metadata = {k.lower(): v for k, v in context.invocation_metadata()}
                receiver._accept("grpc", request.SerializeToString(), metadata)
                return logs_service_pb2.ExportLogsServiceResponse()

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(Logs(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._grpc = server
        return f"http://127.0.0.1:{port}"

    # --- reading -------------------------------------------------------------------------
    def snapshot(self) -> list[ReceivedLog]:
        with self._lock:
            return list(self.records)

    def payload(self) -> bytes:
        """Every request body received so far, concatenated (for secret greps)."""
        with self._lock:
            return b"".join(self.raw)

    def wait_for(self, predicate: Callable[[list[ReceivedLog]], bool], timeout_s: float = 15.0) -> list[ReceivedLog]:
        deadline = time.monotonic() + timeout_s
        while True:
            records = self.snapshot()
            if predicate(records):
                return records
            if time.monotonic() > deadline:
                raise AssertionError(f"the OTLP receiver did not get the expected records; it has {len(records)}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(grace=None).wait(5)
            self._grpc = None
        if self._http_loop is not None and self._http_runner is not None:
            asyncio.run_coroutine_threadsafe(self._http_runner.cleanup(), self._http_loop).result(10)
            self._http_loop.call_soon_threadsafe(self._http_loop.stop)
            assert self._http_thread is not None
            self._http_thread.join(10)
            self._http_loop.close()
            self._http_loop = None

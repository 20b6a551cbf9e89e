"""Access log: one JSON line per event, shaped like Octelium's AccessLog, written without blocking.

Per-session fields are serialized once when the session starts; a query event only adds its id,
time and text. Lines are buffered and flushed on a short timer, so the relay never waits on disk.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TextIO

from proxy.audit.json_text import json_string
from proxy.audit.normalize import QueryText, query_renderer

API_VERSION = "pgwarden.dev/v1"
FLUSH_INTERVAL_S = 0.2
FLUSH_BYTES = 64 * 1024


_json_string = json_string  # what json.dumps(str) returns, without its Python layers (compiled: json_text.py)


def _not_serializable(value: object) -> object:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# json.dumps(value, separators=(",", ":")) builds a JSONEncoder and a C encoder per call; build the C one once.
# CPython's C encoder (None without the _json module); typeshed does not declare it, hence getattr.
_make_c_encoder = getattr(json.encoder, "c_make_encoder", None)
# It is given the json module's own string escaper: that one it recognises and calls without a Python call.
_c_compact = _make_c_encoder(None, _not_serializable, json.encoder.encode_basestring_ascii, None, ":", ",",
                             False, False, True) if _make_c_encoder is not None else None


def _compact_json(value: object) -> str:
    if _c_compact is None:
        return json.dumps(value, separators=(",", ":"))
    return "".join(_c_compact(value, 0))


_second_cache: list[Any] = [-1, ""]  # [unix second, "YYYY-MM-DDTHH:MM:SS"]: formatted once per second


def _now_iso() -> str:
    """UTC now as 2026-11-29T01:15:05.123456Z; called per logged query, so the date part is cached per second
    (datetime.now(UTC).isoformat() cost ~5 µs, a fifth of a relayed select's Python time)."""
    micros = time.time_ns() // 1000
    second, fraction = divmod(micros, 1_000_000)
    if second != _second_cache[0]:
        _second_cache[0] = second
        _second_cache[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{_second_cache[1]}.{fraction:06d}Z"


class AccessLogWriter:
    """Collects lines and writes them in batches to a file or stdout."""

    def __init__(self, target: str | Path | None) -> None:
        self._stream: TextIO | None
        if target is None:
            self._stream = None
        elif str(target) == "-":
            self._stream = sys.stdout
        else:
            path = Path(target)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._stream = os.fdopen(fd, "a", encoding="utf-8", buffering=1 << 16)
        self._pending: list[str] = []
        self._pending_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self.lines_written = 0

    @property
    def is_enabled(self) -> bool:
        return self._stream is not None

    def write_line(self, line: str) -> None:
        if self._stream is None:
            return
        self._pending.append(line)
        self._pending_bytes += len(line)
        if self._pending_bytes >= FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._timer = loop.call_later(FLUSH_INTERVAL_S, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending or self._stream is None:
            return
        lines, self._pending, self._pending_bytes = self._pending, [], 0
        self._stream.write("\n".join(lines) + "\n")
        self._stream.flush()
        self.lines_written += len(lines)

    def close(self) -> None:
        self.flush()
        if self._stream is not None and self._stream is not sys.stdout:
            self._stream.close()
        self._stream = None


class AccessLogSink(Protocol):
    """Another destination for every record (proxy/audit/otel.py). `emit` runs on the event loop: never block."""

    def emit(self, entry_id: str, common: Mapping[str, Any], postgres: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


class AccessLog:
    """Builds AccessLog entries. `session(...)` returns the per-connection logger."""

    def __init__(self, writer: AccessLogWriter, *, sinks: Sequence[AccessLogSink] = (),
                 query_text: QueryText = QueryText.FULL) -> None:
        self.writer = writer
        self.sinks = list(sinks)  # each gets every record as fields; the JSON line is built only for the writer
        self.query_text = query_text
        self.render_query = query_renderer(query_text)  # None: query text is logged as the client sent it

    def close_sinks(self) -> None:
        """Flush and stop the sinks (blocking: an exporter may still be sending)."""
        for sink in self.sinks:
            sink.close()

    def event(self, common: Mapping[str, Any], postgres: Mapping[str, Any], *, entry_id: str) -> None:
        if self.render_query is not None:
            postgres = _render_statements(postgres, self.render_query)
        for sink in self.sinks:
            sink.emit(entry_id, common, postgres)
        if not self.writer.is_enabled:
            return
        entry = {
            "apiVersion": API_VERSION,
            "kind": "AccessLog",
            "metadata": {"id": entry_id, "createdAt": _now_iso()},
            "entry": {"common": dict(common), "info": {"postgres": dict(postgres)}},
        }
        self.writer.write_line(json.dumps(entry, separators=(",", ":"), default=str))

    def session(self, connection_id: str, common: Mapping[str, Any]) -> SessionLog:
        return SessionLog(self, connection_id, common)


class SessionLog:
    """Access log of one client connection; query events reuse the serialized common block."""

    __slots__ = ("_log", "_writer", "connection_id", "_common", "_common_json", "_seq", "_head")

    def __init__(self, log: AccessLog, connection_id: str, common: Mapping[str, Any]) -> None:
        self._log = log
        self._writer = log.writer
        self.connection_id = connection_id
        self._common = dict(common)
        self._common_json = json.dumps(self._common, separators=(",", ":"), default=str)
        self._seq = 0
        self._head = f'{{"apiVersion":"{API_VERSION}","kind":"AccessLog","metadata":{{"id":"{connection_id}-'

    def _next_id(self) -> str:
        self._seq += 1
        return f"{self.connection_id}-{self._seq}"

    def event(self, postgres: Mapping[str, Any], **common_overrides: Any) -> None:
        common = {**self._common, **common_overrides} if common_overrides else self._common
        self._log.event(common, postgres, entry_id=self._next_id())

    def statement(self, kind: str, text: str, name: str | None = None) -> None:
        """QUERY or PARSE, on the hot path: one f-string around the query's JSON."""
        sinks = self._log.sinks
        if self._writer._stream is None and not sinks:
            return
        logged: str | None = text if self._log.render_query is None else self._log.render_query(text)
        self._seq += 1
        key = "query" if kind == "QUERY" else "parse"
        if sinks:
            postgres = {"type": kind, key: {"query": logged} if name is None else {"query": logged, "name": name}}
            entry_id = f"{self.connection_id}-{self._seq}"
            for sink in sinks:
                sink.emit(entry_id, self._common, postgres)
            if self._writer._stream is None:
                return
        detail = _json_string(logged) if logged is not None else "null"
        if name is not None:
            detail = f'{detail},"name":{_json_string(name)}'
        self._writer.write_line(
            f'{self._head}{self._seq}","createdAt":"{_now_iso()}"}},"entry":{{"common":{self._common_json},'
            f'"info":{{"postgres":{{"type":"{kind}","{key}":{{"query":{detail}}}}}}}}}}}'
        )

    def decision(self, kind: str, request: Mapping[str, Any], *, is_allowed: bool, policy: str, rule: str,
                 reason: str, response: Mapping[str, Any] | None = None,
                 would_deny: tuple[str, str] | None = None) -> None:
        """A per-query decision (QUERY, PARSE, BIND, EXECUTE, FUNCTION_CALL) with the policy and rule that decided,
        and the upstream's answer (commandTag, rows, sqlstate, durationMs) when it came before the session ended.
        `would_deny` is (policy, rule) of an AUDIT rule that would have denied this allowed request."""
        sinks = self._log.sinks
        if self._writer._stream is None and not sinks:
            return
        if self._log.render_query is not None and "query" in request:
            request = {**request, "query": self._log.render_query(request["query"])}
        self._seq += 1
        if sinks:
            postgres: dict[str, Any] = {"type": kind, _DECISION_KEYS[kind]: request, "decision": {
                "status": "ALLOWED" if is_allowed else "DENIED", "policy": policy, "rule": rule, "reason": reason}}
            if would_deny is not None:
                postgres["decision"]["wouldDeny"] = {"policy": would_deny[0], "rule": would_deny[1]}
            if response is not None:
                postgres["response"] = response
            entry_id = f"{self.connection_id}-{self._seq}"
            for sink in sinks:
                sink.emit(entry_id, self._common, postgres)
            if self._writer._stream is None:
                return
        # The same JSON as _compact_json(postgres), but the "decision" object is encoded once per distinct
        # decision and no nested dict is built per query.
        decided = _decision_json(is_allowed, policy, rule, reason, would_deny)
        answered = "" if response is None else f',"response":{_response_json(response)}'
        self._writer.write_line(
            f'{self._head}{self._seq}","createdAt":"{_now_iso()}"}},"entry":{{"common":{self._common_json},'
            f'"info":{{"postgres":{{"type":"{kind}","{_DECISION_KEYS[kind]}":{_request_json(request)},'
            f'"decision":{decided}{answered}}}}}}}}}'
        )


_DECISION_KEYS = {"QUERY": "query", "PARSE": "parse", "BIND": "bind", "EXECUTE": "execute",
                  "FUNCTION_CALL": "functionCall"}
_DECISION_JSON_MAX = 4096  # distinct (status, policy, rule, reason) kept; policies have few rules
_decision_json_cache: dict[tuple[bool, str, str, str, tuple[str, str] | None], str] = {}


def _decision_json(is_allowed: bool, policy: str, rule: str, reason: str,
                   would_deny: tuple[str, str] | None = None) -> str:
    """The "decision" object's JSON, built once per distinct decision (the engine reuses a few per policy)."""
    key = (is_allowed, policy, rule, reason, would_deny)
    found = _decision_json_cache.get(key)
    if found is None:
        if len(_decision_json_cache) >= _DECISION_JSON_MAX:
            _decision_json_cache.clear()
        value: dict[str, Any] = {"status": "ALLOWED" if is_allowed else "DENIED", "policy": policy, "rule": rule,
                                 "reason": reason}
        if would_deny is not None:
            value["wouldDeny"] = {"policy": would_deny[0], "rule": would_deny[1]}
        found = _compact_json(value)
        _decision_json_cache[key] = found
    return found


def _request_json(request: Mapping[str, Any]) -> str:
    """`_compact_json(request)`; a Query's ({query}) and a Parse's ({query, name}) without the encoder's set-up."""
    query = request.get("query")
    if type(query) is str:
        if len(request) == 1:
            return f'{{"query":{_json_string(query)}}}'
        name = request.get("name")
        if len(request) == 2 and type(name) is str and next(iter(request)) == "query":
            return f'{{"query":{_json_string(query)},"name":{_json_string(name)}}}'
    return _compact_json(request)


def _response_json(response: Mapping[str, Any]) -> str:
    """`_compact_json(response)` for ResponseSummaries' usual summary (str tag, int rows, float duration), written
    directly: this is one of the two encodings of every gated request's log line."""
    tag, rows, duration = response.get("commandTag"), response.get("rows"), response.get("durationMs")
    if len(response) == 3 and type(tag) is str and type(rows) is int and type(duration) is float:
        return f'{{"commandTag":{_json_string(tag)},"rows":{rows},"durationMs":{duration!r}}}'
    return _compact_json(response)


def _render_statements(postgres: Mapping[str, Any], render: Callable[[str], str | None]) -> Mapping[str, Any]:
    """A copy of `postgres` whose query texts ({"query"|"parse": {"query": text}}) went through `render`."""
    out = dict(postgres)
    for key in ("query", "parse", "bind"):
        inner = out.get(key)
        if isinstance(inner, Mapping) and isinstance(inner.get("query"), str):
            out[key] = {**inner, "query": render(inner["query"])}
    return out


def monotonic_ms() -> float:
    return time.monotonic() * 1000.0

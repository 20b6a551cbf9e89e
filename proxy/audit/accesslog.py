"""Access log: one JSON line per event, shaped like Octelium's AccessLog, written without blocking.

Per-session fields are serialized once when the session starts; a query event only adds its id,
time and text. Lines are buffered and flushed on a short timer, so the relay never waits on disk.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

API_VERSION = "pgwarden.dev/v1"
FLUSH_INTERVAL_S = 0.2
FLUSH_BYTES = 64 * 1024


def _now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


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


class AccessLog:
    """Builds AccessLog entries. `session(...)` returns the per-connection logger."""

    def __init__(self, writer: AccessLogWriter) -> None:
        self.writer = writer

    def event(self, common: Mapping[str, Any], postgres: Mapping[str, Any], *, entry_id: str) -> None:
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
        if self._writer._stream is None:
            return
        self._seq += 1
        key = "query" if kind == "QUERY" else "parse"
        detail = json.dumps(text)
        if name is not None:
            detail = f'{detail},"name":{json.dumps(name)}'
        self._writer.write_line(
            f'{self._head}{self._seq}","createdAt":"{_now_iso()}"}},"entry":{{"common":{self._common_json},'
            f'"info":{{"postgres":{{"type":"{kind}","{key}":{{"query":{detail}}}}}}}}}}}'
        )


def monotonic_ms() -> float:
    return time.monotonic() * 1000.0

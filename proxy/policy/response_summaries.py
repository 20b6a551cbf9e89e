"""Access-log records of gated requests with the upstream's answer: each decision waits for its cycle's
ReadyForQuery, then is written with the command tag, rows, first SQLSTATE and duration."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from proxy.pgwire import messages as m
from proxy.policy.gate_decisions import DecisionLike

_ROW_COUNTING = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "COPY", "FETCH", "MOVE"})
Decided = tuple[str, dict[str, Any], DecisionLike]
# (kind, request fields, decision, response summary or None when the session ended first)
WriteDecision = Callable[[str, dict[str, Any], DecisionLike, dict[str, Any] | None], None]


class ResponseSummaries:
    """Holds each decision until the upstream has answered its request, then logs both together.

    Requests are grouped by what the upstream answers with one ReadyForQuery (everything up to a Sync,
    one Query, one FunctionCall); the summary gives that cycle's last command tag, rows, first SQLSTATE
    and duration. Mutable: one per session, fed from both directions of the relay.
    """

    __slots__ = ("_write", "_open", "_open_started", "_sent", "_tag", "_rows", "_sqlstate")

    def __init__(self, write: WriteDecision) -> None:
        self._write = write
        self._open: list[Decided] = []  # decided since the last Sync/Query/FunctionCall went upstream
        self._open_started = 0.0
        self._sent: deque[tuple[list[Decided], float]] = deque()  # cycles awaiting their ReadyForQuery
        self._tag = ""
        self._rows = 0
        self._sqlstate = ""

    def decided(self, kind: str, request: dict[str, Any], decision: DecisionLike) -> None:
        if not self._open:
            self._open_started = time.monotonic()
        self._open.append((kind, request, decision))

    def ready_requested(self) -> None:
        started = self._open_started if self._open else time.monotonic()
        self._sent.append((self._open, started))
        self._open = []

    def on_replies(self, found: list[tuple[int, bytes]]) -> None:
        """CommandComplete, ErrorResponse and ReadyForQuery bodies from the upstream, in order."""
        for type_byte, body in found:
            if type_byte == m.COMMAND_COMPLETE:
                self._tag = body.rstrip(b"\x00").decode("ascii", "replace")
                words = self._tag.split()
                if words and words[0] in _ROW_COUNTING and words[-1].isdigit():
                    self._rows += int(words[-1])
            elif type_byte == m.ERROR_RESPONSE:
                if not self._sqlstate:
                    self._sqlstate = m.parse_error_fields(body).code
            elif type_byte == m.READY_FOR_QUERY:
                self._on_ready()

    def _on_ready(self) -> None:
        if self._sent:
            entries, started = self._sent.popleft()
            if entries:
                # Milliseconds to the microsecond; int() and a division cost a fraction of round(x, 3)'s exact
                # decimal rounding, and the shortest repr of k / 1000 has at most three decimals.
                micros = int((time.monotonic() - started) * 1_000_000 + 0.5)
                summary: dict[str, Any] = {"commandTag": self._tag, "rows": self._rows, "durationMs": micros / 1000}
                if self._sqlstate:
                    summary["sqlstate"] = self._sqlstate
                for kind, request, decision in entries:
                    self._write(kind, request, decision, summary)
        self._tag, self._rows, self._sqlstate = "", 0, ""

    def flush(self) -> None:
        """Log what is still unanswered (the session is ending), without a summary."""
        for entries, _ in self._sent:
            for kind, request, decision in entries:
                self._write(kind, request, decision, None)
        for kind, request, decision in self._open:
            self._write(kind, request, decision, None)
        self._sent.clear()
        self._open = []

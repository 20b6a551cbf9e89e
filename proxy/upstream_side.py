"""The upstream half of a session: the server's socket, scanned for the messages the session acts on, and with
per-query checks the filter that hides the replies to denial stand-ins. Every chunk goes to the client as it came."""

from __future__ import annotations

from typing import Protocol

from proxy.connection import PgConnection, Relay
from proxy.errors import PgwardenError
from proxy.pgwire import messages as m
from proxy.pgwire.denials import ResponseFilter
from proxy.pgwire.errors import ProtocolViolation
from proxy.pgwire.framing import FrameScanner
from proxy.upstream import UPSTREAM_MAX_MESSAGE_BYTES

SERVER_INSPECT = frozenset({m.READY_FOR_QUERY, m.PARAMETER_STATUS})
COPY_IN = frozenset(b"GW")  # CopyInResponse, CopyBothResponse
# for response summaries, and the readOnly rail's one-cycle hold (COPY_IN)
SERVER_INSPECT_GATED = SERVER_INSPECT | {m.COMMAND_COMPLETE, m.ERROR_RESPONSE} | COPY_IN


class RepliedSession(Protocol):
    """What the upstream side asks of its client session (proxy/session.py's ClientSession)."""

    pending_termination: PgwardenError | None

    @property
    def is_held_by_gate(self) -> bool: ...

    def write(self, data: bytes) -> None: ...

    def write_pieces(self, pieces: list[bytes | memoryview]) -> None: ...

    def on_server_messages(self, found: list[tuple[int, bytes]]) -> None: ...

    def on_replies(self, found: list[tuple[int, bytes]]) -> None: ...

    def finish_termination(self) -> None: ...

    def end_now(self, exc: PgwardenError) -> None: ...

    def on_upstream_closed(self) -> None: ...


class UpstreamSide(PgConnection):
    """The upstream socket of a session; its relay data goes to the client."""

    def __init__(self) -> None:
        super().__init__(whose="upstream", max_message_bytes=UPSTREAM_MAX_MESSAGE_BYTES)
        self.session: RepliedSession | None = None
        self.scanner = FrameScanner(SERVER_INSPECT, max_message_bytes=UPSTREAM_MAX_MESSAGE_BYTES, whose="upstream")
        self.denials: ResponseFilter | None = None  # replaces `scanner` when per-query checks are on

    @property
    def is_at_boundary(self) -> bool:
        """The server stream so far ends between messages: a message of our own may go to the client."""
        return (self.denials or self.scanner).is_at_boundary

    def filter_denials(self) -> ResponseFilter:
        """Per-query checks are on: hide the extra replies to denial stand-ins (proxy/pgwire/denials.py)."""
        self.denials = ResponseFilter(SERVER_INSPECT_GATED, max_message_bytes=UPSTREAM_MAX_MESSAGE_BYTES)
        return self.denials

    def start_relay(self, peer: PgConnection, relay: Relay | None = None) -> None:
        """Relay to the client: through the denial filter when per-query checks are on, else the scanner."""
        if relay is None and self.denials is not None:
            assert self.session is not None
            relay = FilteredReplies(self.session, self.denials)
        super().start_relay(peer, relay)

    def on_relay_data(self, data: bytes) -> None:
        session = self.session
        assert session is not None
        try:
            found = self.scanner.scan(data)
        except ProtocolViolation as exc:
            session.end_now(exc)
            return
        session.write(data)
        if found:
            session.on_server_messages(found)
        if session.pending_termination is not None and self.scanner.is_at_boundary:
            session.finish_termination()

    def resume_writing(self) -> None:
        if self.session is not None and self.session.is_held_by_gate:
            self._write_paused = False  # the client stays paused until the gate's held bytes go on
            return
        super().resume_writing()

    def on_closed(self) -> None:
        if self.session is not None:
            self.session.on_upstream_closed()


class FilteredReplies:
    """The upstream side's relay with per-query checks: replies to denial stand-ins are hidden
    (proxy/pgwire/denials.py); the rest goes to the client as the plain path sends it."""

    __slots__ = ("_denials", "_session")

    def __init__(self, session: RepliedSession, denials: ResponseFilter) -> None:
        self._session = session
        self._denials = denials

    def on_relay_data(self, data: bytes) -> None:
        session = self._session
        try:
            out, found = self._denials.scan(data)
        except ProtocolViolation as exc:
            session.end_now(exc)
            return
        if out is None:
            session.write(data)
        elif out:
            session.write_pieces(out)
        if found:
            session.on_replies(found)
        if session.pending_termination is not None and self._denials.is_at_boundary:
            session.finish_termination()

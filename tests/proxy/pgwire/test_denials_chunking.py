"""ResponseFilter over the frame walker: the client sees the same bytes however the server's stream is cut."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.pgwire import messages as m
from proxy.pgwire.denials import BIND_COMPLETE, PARSE_COMPLETE, Expected, ResponseFilter

MARKER = "pgwarden.denial.7"
INSPECT = frozenset({m.READY_FOR_QUERY, m.PARAMETER_STATUS, m.COMMAND_COMPLETE, m.ERROR_RESPONSE})
PC = m.encode_message(PARSE_COMPLETE)
BC = m.encode_message(BIND_COMPLETE)
ROW = m.encode_message(ord("D"), b"\x00\x01\x00\x00\x00\x03abc")
DONE = m.encode_message(m.COMMAND_COMPLETE, b"SELECT 1\x00")
READY = m.encode_ready_for_query(b"I")
DENIED = m.encode_message(
    m.ERROR_RESPONSE, f"SERROR\x00C42501\x00Mdenied\x00WPL/pgSQL function\x00s{MARKER}\x00\x00".encode()
)
# An allowed batch, then the stand-in's ParseComplete, BindComplete and error, then a plain reply.
STREAM = PC + BC + ROW + DONE + PC + BC + DENIED + READY + ROW * 3 + DONE + READY


def feed(chunks: list[bytes], expect_at: int) -> tuple[bytes, list[tuple[int, bytes]], int]:
    """Feed the chunks, asking for the stand-in's reply before chunk `expect_at` (as the gate would)."""
    f = ResponseFilter(INSPECT)
    out = bytearray()
    found: list[tuple[int, bytes]] = []
    for i, chunk in enumerate(chunks):
        if i == expect_at:
            f.expect(Expected(MARKER, True, 0))
        pieces, seen = f.scan(chunk)
        out += chunk if pieces is None else b"".join(bytes(p) for p in pieces)
        found += seen
    assert f.is_at_boundary and not f.is_waiting
    return bytes(out), found, f.ready_seen


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(STREAM) - 1), max_size=10, unique=True))
def test_any_cut_of_the_reply_stream_gives_the_client_the_same_bytes(cuts: list[int]) -> None:
    points = [0, *sorted(cuts), len(STREAM)]
    chunks = [STREAM[a:b] for a, b in zip(points, points[1:], strict=False)]
    out, found, ready_seen = feed(chunks, expect_at=0)
    assert (out, found, ready_seen) == feed([STREAM], expect_at=0)
    assert DENIED not in out and b"denied" in out and out.count(PC) == 1  # the stand-in's replies are gone


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=len(PC + BC + ROW + DONE) - 1))
def test_a_reply_awaited_while_an_inspected_message_is_half_read_is_still_found(cut: int) -> None:
    """The gate can ask for a stand-in's reply between two chunks of one CommandComplete."""
    head = PC + BC + ROW + DONE
    out, found, _ = feed([STREAM[:cut], STREAM[cut:]], expect_at=1)
    assert out == head + m.encode_message(m.ERROR_RESPONSE, b"SERROR\x00C42501\x00Mdenied\x00\x00") + STREAM[
        len(head) + len(PC + BC + DENIED):
    ]
    assert [t for t, _ in found] == [m.COMMAND_COMPLETE, m.ERROR_RESPONSE, m.READY_FOR_QUERY, m.COMMAND_COMPLETE,
                                     m.READY_FOR_QUERY]

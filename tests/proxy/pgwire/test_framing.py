"""Framing: whole, byte-at-a-time and with trailing bytes; any bytes parse or raise ProtocolViolation."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.pgwire import messages as m
from proxy.pgwire.errors import ProtocolViolation
from proxy.pgwire.framing import MAX_STARTUP_PACKET_BYTES, FrameScanner, MessageReader, MessageTooLarge


def chunks(data: bytes, mode: str) -> list[bytes]:
    if mode == "whole":
        return [data]
    return [data[i : i + 1] for i in range(len(data))]


STREAM = (
    m.encode_query("SELECT 1")
    + m.encode_message(m.BIND, b"\x00" * 40)
    + m.encode_message(m.PARSE, b"s1\x00SELECT $1\x00\x00\x00")
    + m.encode_message(m.SYNC)
)


@pytest.mark.parametrize("mode", ["whole", "bytewise"])
def test_scanner_finds_inspected_bodies_and_skips_the_rest(mode: str) -> None:
    scanner = FrameScanner(frozenset({m.QUERY, m.PARSE}))
    found = []
    for piece in chunks(STREAM, mode):
        found += scanner.scan(piece)
    assert found == [(m.QUERY, b"SELECT 1\x00"), (m.PARSE, b"s1\x00SELECT $1\x00\x00\x00")]
    assert scanner.is_at_boundary


def test_scanner_reports_mid_message_position() -> None:
    scanner = FrameScanner(frozenset({m.READY_FOR_QUERY}))
    row = m.encode_message(ord("D"), b"x" * 100)
    assert scanner.scan(row[:50]) == []
    assert not scanner.is_at_boundary
    assert scanner.scan(row[50:] + m.encode_ready_for_query(b"T")) == [(m.READY_FOR_QUERY, b"T")]
    assert scanner.is_at_boundary


def test_scanner_refuses_oversized_message() -> None:
    scanner = FrameScanner(frozenset({m.QUERY}), max_message_bytes=1024)
    with pytest.raises(ProtocolViolation, match="exceeds the limit of 1024 bytes"):
        scanner.scan(struct.pack("!ci", b"Q", 5000))


def test_scanner_refuses_negative_length() -> None:
    with pytest.raises(ProtocolViolation, match="invalid length"):
        FrameScanner(frozenset()).scan(struct.pack("!ci", b"Q", 2))


@pytest.mark.parametrize("mode", ["whole", "bytewise"])
def test_reader_startup_then_messages_with_trailing_bytes(mode: str) -> None:
    reader = MessageReader()
    data = m.encode_startup_message({"user": "alice", "database": "my-db"}) + m.encode_query("SELECT 1") + b"Q\x00"
    startup = None
    for piece in chunks(data, mode):
        reader.feed(piece)
        startup = startup or reader.next_startup()
    assert startup == m.StartupMessage(m.PROTOCOL_3_0, {"user": "alice", "database": "my-db"})
    assert reader.next_message() == (m.QUERY, b"SELECT 1\x00")
    assert reader.next_message() is None  # an incomplete header stays buffered
    assert reader.take_rest() == b"Q\x00"


def test_reader_decodes_special_startup_packets() -> None:
    reader = MessageReader()
    reader.feed(m.encode_ssl_request() + struct.pack("!ii", 8, m.GSSENC_REQUEST_CODE) + m.encode_cancel_request(7, -3))
    assert isinstance(reader.next_startup(), m.SSLRequest)
    assert isinstance(reader.next_startup(), m.GSSENCRequest)
    assert reader.next_startup() == m.CancelRequest(7, -3)


@pytest.mark.parametrize(
    "packet, message",
    [
        (struct.pack("!ii", 8, 0x00020000), "unsupported frontend protocol 2.0"),
        (struct.pack("!i", 3) + b"\x00" * 4, "invalid startup packet length"),
        (struct.pack("!ii", 20000, m.PROTOCOL_3_0), "invalid startup packet length"),
        (struct.pack("!ii", 13, m.PROTOCOL_3_0) + b"user\x00", "without a value"),
        (struct.pack("!ii", 12, m.PROTOCOL_3_0) + b"user", "not terminated"),
    ],
)
def test_reader_refuses_malformed_startup(packet: bytes, message: str) -> None:
    reader = MessageReader()
    reader.feed(packet)
    with pytest.raises(ProtocolViolation, match=message):
        reader.next_startup()


def test_error_response_round_trip() -> None:
    raw = m.encode_error_response("denied", code="42501", severity="ERROR", detail="d", hint="h")
    reader = MessageReader()
    reader.feed(raw)
    type_byte, body = reader.next_message()  # type: ignore[misc]
    assert type_byte == m.ERROR_RESPONSE
    assert m.parse_error_fields(body) == m.ErrorFields("ERROR", "42501", "denied", "d", "h")


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_any_startup_bytes_parse_or_raise_protocol_violation(data: bytes) -> None:
    reader = MessageReader(max_message_bytes=1024)
    reader.feed(data)
    try:
        while reader.next_startup() is not None:
            pass
    except ProtocolViolation:
        pass


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=17))
def test_any_stream_scans_or_raises_protocol_violation(data: bytes, step: int) -> None:
    scanner = FrameScanner(frozenset({m.QUERY, m.PARSE}), max_message_bytes=1024)
    reader = MessageReader(max_message_bytes=1024)
    try:
        for i in range(0, len(data), step):
            scanner.scan(data[i : i + step])
    except ProtocolViolation:
        pass
    reader.feed(data)
    try:
        while reader.next_message() is not None:
            pass
    except ProtocolViolation:
        pass


# --- a reader bounded for clients that have not authenticated -------------------------------------------------


def test_a_bounded_reader_refuses_a_large_message_from_its_header_and_buffers_no_more() -> None:
    reader = MessageReader(max_message_bytes=1024, bounded=True)
    header = b"p" + struct.pack("!i", 16 * 1024 * 1024 + 4)
    for _ in range(64):  # 16 MiB arriving in 256 KiB reads
        reader.feed(header + b"\x01" * (256 * 1024) if _ == 0 else b"\x01" * (256 * 1024))
    assert len(reader.take_rest()) <= 5 + max(1024, MAX_STARTUP_PACKET_BYTES)
    reader = MessageReader(max_message_bytes=1024, bounded=True)
    reader.feed(header)
    with pytest.raises(MessageTooLarge, match="exceeds the limit of 1024 bytes"):
        reader.next_message()


def test_a_bounded_reader_refuses_pipelined_bytes_over_the_cap_even_after_whole_messages() -> None:
    reader = MessageReader(max_message_bytes=1024, bounded=True)
    small = b"p" + struct.pack("!i", 4 + 3) + b"ab\x00"
    reader.feed(small + b"Q\x00\x00\x00\x08abcd" * 2_000)  # a valid message, then more than one message's worth
    assert reader.next_message() == (ord("p"), b"ab\x00")
    while True:  # the whole messages that fit are still read; then the dropped rest refuses the connection
        try:
            assert reader.next_message() == (ord("Q"), b"abcd")
        except MessageTooLarge as exc:
            assert "before authentication" in exc.message
            break
    with pytest.raises(MessageTooLarge):
        reader.relax(16 * 1024 * 1024)  # dropped bytes never reach the relay


def test_relaxing_lifts_the_pre_auth_caps() -> None:
    reader = MessageReader(max_message_bytes=1024, bounded=True)
    reader.relax(1 << 20)
    body = b"x" * 50_000
    reader.feed(b"Q" + struct.pack("!i", len(body) + 4) + body)
    assert reader.next_message() == (ord("Q"), body)

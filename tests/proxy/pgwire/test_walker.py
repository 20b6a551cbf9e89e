"""The frame walker: pieces rebuild the stream under any chunking; compiled and interpreted runs agree."""

from __future__ import annotations

import importlib.util
import re
import struct
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.pgwire import walker
from proxy.pgwire.errors import MessageTooLarge, ProtocolViolation
from proxy.pgwire.message_types import BackendType, FrontendType
from proxy.pgwire.walker import CONTINUED, FrameWalker


def _interpreted_walker() -> ModuleType:
    """walker.py loaded from its source, never the compiled module: the same file, run by the interpreter."""
    path = Path(walker.__file__).with_name("walker.py")
    spec = importlib.util.spec_from_file_location("walker_source", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SOURCE = _interpreted_walker()
HOLD = frozenset(b"QPZ")

messages = st.lists(
    st.tuples(st.sampled_from(b"QPSBDEZCd"), st.binary(max_size=40)), min_size=1, max_size=12
).map(lambda ms: [bytes([t]) + struct.pack("!i", len(body) + 4) + body for t, body in ms])


def cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


def rebuild(module: ModuleType, chunks: list[bytes]) -> tuple[bytes, list[bytes], list[tuple[int, bytes]]]:
    """Feed the chunks to `walk(is_every=True)` and to `scan`: the bytes the pieces cover, the held raws, the bodies."""
    every = module.FrameWalker(HOLD, max_message_bytes=100)
    bodies = module.FrameWalker(HOLD, max_message_bytes=100)
    covered = bytearray()
    held: list[bytes] = []
    found: list[tuple[int, bytes]] = []
    for chunk in chunks:
        buf, pieces, stop = every.walk(chunk, True)
        for type_byte, start, end, raw in pieces:
            if raw is None:
                assert type_byte == CONTINUED or buf[start] == type_byte
                covered += buf[start:end]
            else:
                assert raw[0] == type_byte and len(raw) >= 5
                covered += raw
                held.append(raw)
        found += bodies.scan(chunk)
    assert every.is_at_boundary and bodies.is_at_boundary
    return bytes(covered), held, found


@settings(max_examples=300, deadline=None)
@given(messages, st.lists(st.integers(min_value=0, max_value=1000), max_size=8))
def test_pieces_rebuild_the_stream_under_any_chunking(stream: list[bytes], cuts: list[int]) -> None:
    data = b"".join(stream)
    covered, held, found = rebuild(walker, cut(data, cuts))
    assert covered == data
    assert held == [msg for msg in stream if msg[0] in HOLD]
    assert found == [(msg[0], msg[5:]) for msg in stream if msg[0] in HOLD]


@settings(max_examples=300, deadline=None)
@given(messages, st.lists(st.integers(min_value=0, max_value=1000), max_size=8))
def test_compiled_and_interpreted_walkers_agree(stream: list[bytes], cuts: list[int]) -> None:
    chunks = cut(b"".join(stream), cuts)
    assert rebuild(walker, chunks) == rebuild(SOURCE, chunks)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=17), st.sampled_from(["walk", "split", "scan"]))
def test_any_bytes_walk_or_raise_protocol_violation_alike(data: bytes, step: int, method: str) -> None:
    outcomes = []
    for module in (walker, SOURCE):
        w = module.FrameWalker(HOLD, max_message_bytes=64)
        walk = (lambda chunk, w=w: w.walk(chunk, False)) if method == "walk" else getattr(w, method)
        results: list[object] = []
        try:
            for i in range(0, len(data), step):
                results.append(walk(data[i : i + step]))
        except ProtocolViolation as exc:
            results.append(str(exc))
        outcomes.append(results)
    assert outcomes[0] == outcomes[1]


def test_a_held_message_arriving_in_pieces_is_held_back_whole() -> None:
    w = FrameWalker(HOLD)
    query = b"Q" + struct.pack("!i", 13) + b"SELECT 1\x00"
    assert w.walk(query[:7], False)[1:] == ([], 0)  # every byte is inside the walker: stop at 0
    assert w.walk(query[7:9], False)[1:] == ([], 0)
    assert w.walk(query[9:] + b"S\x00\x00\x00\x04", False)[1:] == ([(ord("Q"), 0, 5, query)], 10)


@pytest.mark.parametrize(("whose", "name"), [("client", "'S' (Sync)"), ("upstream", "'S' (ParameterStatus)")])
def test_errors_name_the_message_in_its_direction(whose: str, name: str) -> None:
    with pytest.raises(ProtocolViolation, match=re.escape(f"invalid length 3 in message type {name}")):
        FrameWalker(HOLD, whose=whose).scan(b"S\x00\x00\x00\x03")
    too_large = f"message type {name} of 96 bytes exceeds the limit of 10 bytes"
    with pytest.raises(MessageTooLarge, match=re.escape(too_large)):
        FrameWalker(HOLD, whose=whose, max_message_bytes=10).scan(b"S\x00\x00\x00\x64")


def test_a_negative_length_is_reported_as_the_signed_int32_it_is() -> None:
    with pytest.raises(ProtocolViolation, match="invalid length -1 "):
        FrameWalker(HOLD).scan(b"Q\xff\xff\xff\xff")


def test_message_types_are_per_direction() -> None:
    assert FrontendType.SYNC == BackendType.PARAMETER_STATUS == ord("S")
    assert FrontendType(ord("D")).name == "DESCRIBE" and BackendType(ord("D")).name == "DATA_ROW"


def test_a_built_walker_is_not_older_than_its_source() -> None:
    """An extension module shadows walker.py; one built before the last edit would run old code."""
    here = Path(SOURCE.__file__).parent
    for built in here.glob("walker.*.so"):
        for source in ("walker.py", "walker.pxd"):
            assert built.stat().st_mtime >= (here / source).stat().st_mtime, (
                f"{built} is older than {source}: rebuild it (`pip install -e .`)"
            )

"""The hot-path access-log lines (QUERY, PARSE, decisions) stay valid JSON with exact text and a correct createdAt.

These lines are built by hand (a pre-serialized common block, a cached date prefix, the C string encoder) to keep
per-query cost low; each test reads the real file back with `json.loads`, as a log shipper would.
"""

from __future__ import annotations

import datetime
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from proxy.audit import accesslog
from proxy.audit.accesslog import AccessLog, AccessLogWriter

COMMON = {"connectionId": "c1", "user": "alice", "service": "shop", "clientAddress": "127.0.0.1:5000"}
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
AWKWARD_TEXTS = [
    'SELECT "quoted", \'single\', back\\slash',
    "SELECT 1;\n-- comment\r\n\tSELECT 2",
    "SELECT 'héllo wörld ✓ 🐘'",
    "SELECT '\x00\x01\x1f\x7f'",
    "SELECT '\ud800'",  # a lone surrogate: PostgreSQL text never has one, but the line must stay valid JSON
]


def _lines(path: Path, writer: AccessLogWriter) -> list[dict[str, Any]]:
    writer.flush()
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def logged(tmp_path: Path) -> Iterator[tuple[Path, AccessLogWriter, accesslog.SessionLog]]:
    path = tmp_path / "access.log"
    writer = AccessLogWriter(path)
    yield path, writer, AccessLog(writer).session("c1", COMMON)
    writer.close()


@pytest.mark.parametrize("text", AWKWARD_TEXTS)
def test_query_text_round_trips_exactly(logged: tuple[Path, AccessLogWriter, accesslog.SessionLog],
                                         text: str) -> None:
    path, writer, session = logged
    session.statement("QUERY", text)
    session.statement("PARSE", text, name='stmt "1" ✓')
    query, parse = _lines(path, writer)
    assert query["entry"]["info"]["postgres"] == {"type": "QUERY", "query": {"query": text}}
    assert parse["entry"]["info"]["postgres"] == {"type": "PARSE", "parse": {"query": text, "name": 'stmt "1" ✓'}}
    assert query["entry"]["common"] == COMMON
    assert [query["metadata"]["id"], parse["metadata"]["id"]] == ["c1-1", "c1-2"]


def test_created_at_is_now_in_utc_with_microseconds(logged: tuple[Path, AccessLogWriter,
                                                                   accesslog.SessionLog]) -> None:
    path, writer, session = logged
    before = datetime.datetime.now(datetime.UTC)
    session.statement("QUERY", "SELECT 1")
    session.decision("QUERY", {"query": "SELECT 1"}, is_allowed=True, policy="p", rule="r", reason="ok")
    after = datetime.datetime.now(datetime.UTC)
    for line in _lines(path, writer):
        stamp = line["metadata"]["createdAt"]
        assert ISO_UTC.match(stamp), stamp
        when = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        assert before - datetime.timedelta(seconds=1) <= when <= after + datetime.timedelta(seconds=1)


@pytest.mark.parametrize("ns", [0, 999_999_999, 1_000_000_000, 1_798_502_399_999_999_000, 1_798_502_400_000_000_000,
                                1_709_164_800_123_456_789])
def test_cached_date_prefix_matches_datetime_across_second_and_day_boundaries(
        monkeypatch: pytest.MonkeyPatch, ns: int) -> None:
    # Only the clock is replaced; strftime/gmtime are the real ones the module uses.
    fake_time = SimpleNamespace(time_ns=lambda: ns, strftime=time.strftime, gmtime=time.gmtime)
    monkeypatch.setattr(accesslog, "time", fake_time)
    expected = (datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(microseconds=ns // 1000))
    assert accesslog._now_iso() == expected.isoformat(timespec="microseconds").replace("+00:00", "Z")


def test_decision_line_carries_the_request_and_response(logged: tuple[Path, AccessLogWriter,
                                                                       accesslog.SessionLog]) -> None:
    path, writer, session = logged
    request = {"query": "DELETE FROM t WHERE note = 'naïve \"x\"'", "kinds": ["DELETE"], "readOnly": False}
    response = {"commandTag": "DELETE 3", "rows": 3, "durationMs": 0.25}
    session.decision("QUERY", request, is_allowed=False, policy="read-only", rule="writes", reason="no writes",
                     response=response)
    (line,) = _lines(path, writer)
    assert line["entry"]["info"]["postgres"] == {
        "type": "QUERY", "query": request, "response": response,
        "decision": {"status": "DENIED", "policy": "read-only", "rule": "writes", "reason": "no writes"}}


def test_a_value_json_cannot_encode_is_refused_not_logged_as_garbage(
        logged: tuple[Path, AccessLogWriter, accesslog.SessionLog]) -> None:
    path, writer, session = logged
    with pytest.raises(TypeError, match="not JSON serializable"):
        session.decision("QUERY", {"query": "SELECT 1", "odd": object()}, is_allowed=True, policy="p", rule="r",
                         reason="ok")
    assert _lines(path, writer) == []

"""The gate's fast path: a chunk that is exactly one whole simple Query is decided and forwarded as it came."""

from __future__ import annotations

import pytest

from proxy.pgwire import messages as m
from proxy.pgwire.errors import ProtocolViolation
from tests.proxy.test_enforce import Harness, messages, parse


def test_a_whole_allowed_query_goes_upstream_as_the_chunk_itself() -> None:
    h = Harness()
    chunk = m.encode_query("SELECT abalance FROM pgbench_accounts WHERE aid = 7")
    out = h.gate.feed(chunk)
    assert len(out) == 1 and out[0] is chunk  # one write, no copy
    assert h.logged == [("QUERY", {"query": "SELECT abalance FROM pgbench_accounts WHERE aid = 7"}, True)]
    assert h.gate.ready_requested == 1 and h.gate.is_at_boundary


def test_a_whole_denied_query_is_replaced() -> None:
    h = Harness()
    out = h.gate.feed(m.encode_query("INSERT INTO t VALUES (1)"))
    sent = messages(b"".join(bytes(p) for p in out))
    assert [t for t, _ in sent] == [m.QUERY] and sent[0][1].startswith(b"DO $pgw$")
    assert [(k, allowed) for k, _, allowed in h.logged] == [("QUERY", False)]


def test_a_query_chunk_that_is_not_exactly_one_message_takes_the_general_path() -> None:
    h = Harness()
    first, second = m.encode_query("SELECT 1"), m.encode_query("INSERT INTO t VALUES (2)")
    sent = messages(b"".join(bytes(p) for p in h.gate.feed(first + second[:7])))
    sent += messages(b"".join(bytes(p) for p in h.gate.feed(second[7:])))
    assert sent[0] == (m.QUERY, b"SELECT 1\x00") and sent[1][1].startswith(b"DO $pgw$")
    assert [(k, allowed) for k, _, allowed in h.logged] == [("QUERY", True), ("QUERY", False)]


def test_a_query_while_skipping_to_sync_is_not_decided() -> None:
    h = Harness()
    h.gate.feed(parse("", "INSERT INTO t VALUES (3)"))  # denied: the upstream skips until Sync
    assert h.gate.feed(m.encode_query("SELECT 1")) == []
    assert [k for k, _, _ in h.logged] == ["PARSE"]


def test_a_query_without_its_nul_is_still_a_protocol_violation() -> None:
    h = Harness()
    with pytest.raises(ProtocolViolation, match="NUL-terminated"):
        h.gate.feed(m.encode_message(m.QUERY, b"SELECT 1"))

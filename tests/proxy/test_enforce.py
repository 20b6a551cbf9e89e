"""The per-query gate without sockets: splitting, deciding, stand-ins, and the reply filter.

Every stream is fed whole and one byte at a time (h11's `tr()` style). The policy here is a tiny
stand-in that denies SQL containing INSERT; tests/e2e/test_query_policy.py runs the real engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.pgwire import messages as m
from proxy.pgwire.denials import (
    BIND_COMPLETE,
    PARSE_COMPLETE,
    Expected,
    ResponseFilter,
    error_marker,
    raise_sql,
    strip_error,
)
from proxy.pgwire.errors import ProtocolViolation
from proxy.pgwire.requests import RequestSplitter, parse_bind, parse_close, parse_function_call, parse_parse
from proxy.policy.classify import classify
from proxy.policy.enforce import RequestGate
from proxy.policy.response_summaries import ResponseSummaries


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    policy: str = "stand-in"
    rule: str = "no-insert"
    reason: str = "stand-in decision"


@dataclass
class NoInsert:
    """Denies SQL containing INSERT and FunctionCall of OID 764 (lo_import); records what it was asked."""

    generation: int = 1
    asked: list[tuple[str, str]] = field(default_factory=list)

    def decide_query(self, sql: str) -> Verdict:
        self.asked.append(("query", sql))
        return Verdict("INSERT" not in sql.upper())

    def decide_parse(self, name: str, sql: str) -> Verdict:
        self.asked.append(("parse", sql))
        return Verdict("INSERT" not in sql.upper())

    def decide_function_call(self, oid: int) -> Verdict:
        self.asked.append(("function", str(oid)))
        return Verdict(oid != 764)


def parse(name: str, sql: str) -> bytes:
    return m.encode_message(m.PARSE, name.encode() + b"\x00" + sql.encode() + b"\x00\x00\x00")


def bind(statement: str, portal: str = "") -> bytes:
    return m.encode_message(m.BIND, portal.encode() + b"\x00" + statement.encode() + b"\x00" + b"\x00" * 6)


EXECUTE = m.encode_message(m.EXECUTE, b"\x00\x00\x00\x00\x00")
SYNC = m.encode_message(m.SYNC)


def chunks(data: bytes, mode: str) -> list[bytes]:
    return [data] if mode == "whole" else [data[i : i + 1] for i in range(len(data))]


def messages(stream: bytes) -> list[tuple[int, bytes]]:
    out, pos = [], 0
    while pos < len(stream):
        length = int.from_bytes(stream[pos + 1 : pos + 5], "big")
        out.append((stream[pos], stream[pos + 5 : pos + 1 + length]))
        pos += 1 + length
    return out


UTF8_ON = {"client_encoding": "UTF8", "standard_conforming_strings": "on"}


class Harness:
    def __init__(self, policy: NoInsert | None = None) -> None:
        self.policy = policy or NoInsert()
        self.responses = ResponseFilter(frozenset({m.READY_FOR_QUERY}))
        self.logged: list[tuple[str, dict[str, object], bool | None]] = []
        self.gate = RequestGate(policy=lambda: self.policy, codec=lambda: "utf-8", responses=self.responses,
                                on_decision=lambda k, r, d, s: self.logged.append((k, r, d and d.allowed)),
                                parameters=dict(UTF8_ON))

    def send(self, stream: bytes, mode: str) -> bytes:
        return b"".join(bytes(piece) for chunk in chunks(stream, mode) for piece in self.gate.feed(chunk))

    def reply(self, stream: bytes, mode: str) -> bytes:
        out = b""
        for chunk in chunks(stream, mode):
            pieces, _ = self.responses.scan(chunk)
            out += chunk if pieces is None else b"".join(bytes(p) for p in pieces)
        return out


MODES = ["whole", "bytewise"]


@pytest.mark.parametrize("mode", MODES)
def test_allowed_requests_pass_unchanged(mode: str) -> None:
    h = Harness()
    stream = (m.encode_query("SELECT 1") + parse("s1", "SELECT $1") + bind("s1") + EXECUTE + SYNC
              + m.encode_message(m.COPY_DATA, b"x" * 300) + m.encode_message(m.CLOSE, b"Ss1\x00"))
    assert h.send(stream, mode) == stream
    assert [k for k, _, _ in h.logged] == ["QUERY", "PARSE"]
    assert h.gate.ready_requested == 2 and h.gate.is_at_boundary


@pytest.mark.parametrize("mode", MODES)
def test_denied_query_becomes_a_raising_do_block(mode: str) -> None:
    h = Harness()
    sent = messages(h.send(m.encode_query("INSERT INTO t VALUES (1)") + m.encode_query("SELECT 2"), mode))
    assert [t for t, _ in sent] == [m.QUERY, m.QUERY]
    stand_in = sent[0][1].decode()
    assert stand_in.startswith("DO $pgw$") and "ERRCODE = '42501'" in stand_in and "INSERT INTO t" not in stand_in
    assert 'denied by policy "stand-in", rule "no-insert"' in stand_in
    assert sent[1][1] == b"SELECT 2\x00"
    assert [(k, allowed) for k, _, allowed in h.logged] == [("QUERY", False), ("QUERY", True)]


@pytest.mark.parametrize("mode", MODES)
def test_denied_parse_is_replaced_and_the_rest_until_sync_dropped(mode: str) -> None:
    h = Harness()
    stream = (parse("ok", "SELECT 1") + bind("ok") + EXECUTE
              + parse("bad", "INSERT INTO t VALUES ($1)") + bind("bad") + EXECUTE
              + m.encode_query("SELECT 'skipped'") + m.encode_message(m.COPY_DATA, b"y" * 100) + SYNC
              + parse("after", "SELECT 3") + SYNC)
    sent = messages(h.send(stream, mode))
    types = [chr(t) for t, _ in sent]
    assert types == ["P", "B", "E", "P", "B", "E", "S", "P", "S"]
    assert sent[3][1].startswith(b"\x00DO $pgw$")  # the stand-in Parse is of the unnamed statement
    assert ("query", "SELECT 'skipped'") not in h.policy.asked  # the upstream would have skipped it
    assert h.gate.ready_requested == 2


def test_bind_after_a_reload_is_decided_again() -> None:
    h = Harness()
    h.send(parse("s", "SELECT 1") + parse("w", "INSERT INTO t DEFAULT VALUES") + SYNC, "whole")
    assert h.send(bind("s") + EXECUTE + SYNC, "whole") == bind("s") + EXECUTE + SYNC  # same generation
    h.policy.generation = 2
    h.policy.asked.clear()
    assert h.send(bind("s") + EXECUTE + SYNC, "whole") == bind("s") + EXECUTE + SYNC
    assert h.policy.asked == [("parse", "SELECT 1")]
    h.send(bind("s") + SYNC, "whole")
    assert h.policy.asked == [("parse", "SELECT 1")]  # decided once per generation
    assert ("BIND", True) in [(k, a) for k, _, a in h.logged]


def test_close_forgets_a_statement() -> None:
    h = Harness()
    h.send(parse("s", "SELECT 1") + m.encode_message(m.CLOSE, b"Ss\x00") + SYNC, "whole")
    h.policy.generation = 2
    h.send(bind("s") + SYNC, "whole")
    assert ("parse", "SELECT 1") not in h.policy.asked[1:]


def test_function_call_denied_becomes_a_query() -> None:
    h = Harness()
    call = m.encode_message(m.FUNCTION_CALL, (764).to_bytes(4, "big") + b"\x00\x00\x00\x00\x00\x00")
    sent = messages(h.send(call, "whole"))
    assert sent[0][0] == m.QUERY and b"function call denied" in sent[0][1]
    ok = m.encode_message(m.FUNCTION_CALL, (957).to_bytes(4, "big") + b"\x00\x00\x00\x00\x00\x00")
    assert h.send(ok, "whole") == ok


def test_policy_that_raises_denies() -> None:
    class Broken(NoInsert):
        def decide_query(self, sql: str) -> Verdict:
            raise RuntimeError("boom")

    h = Harness(Broken())
    sent = messages(h.send(m.encode_query("SELECT 1"), "whole"))
    assert b"DO $pgw$" in sent[0][1] and h.logged[0][2] is False


def test_oversized_held_message_is_a_protocol_violation() -> None:
    gate = RequestGate(policy=lambda: NoInsert(), codec=lambda: "utf-8", responses=ResponseFilter(frozenset()),
                       on_decision=lambda *a: None, max_message_bytes=100)
    with pytest.raises(ProtocolViolation, match="exceeds the limit"):
        gate.feed(m.encode_query("SELECT '" + "x" * 200 + "'"))


# --- the reply filter -------------------------------------------------------------------------------


def error(code: str, message: str, marker: str | None = None) -> bytes:
    body = f"SERROR\x00VERROR\x00C{code}\x00M{message}\x00WPL/pgSQL function inline_code_block line 1 at RAISE\x00"
    if marker:
        body += f"s{marker}\x00"
    return m.encode_message(m.ERROR_RESPONSE, body.encode() + b"Fpl_exec.c\x00L3911\x00\x00")


PC = m.encode_message(PARSE_COMPLETE)
BC = m.encode_message(BIND_COMPLETE)
ROW = m.encode_message(ord("D"), b"\x00\x01\x00\x00\x00\x011")
DONE = m.encode_message(m.COMMAND_COMPLETE, b"SELECT 1\x00")


@pytest.mark.parametrize("mode", MODES)
def test_filter_drops_the_stand_ins_parse_and_bind_complete_only(mode: str) -> None:
    h = Harness()
    h.send(parse("ok", "SELECT 1") + bind("ok") + EXECUTE + parse("bad", "INSERT") + bind("bad") + SYNC, "whole")
    marker = "pgwarden.denial.1"
    upstream = PC + BC + ROW + DONE + PC + BC + error("42501", "denied", marker) + m.encode_ready_for_query(b"I")
    seen = messages(h.reply(upstream, mode))
    assert [chr(t) for t, _ in seen] == ["1", "2", "D", "C", "E", "Z"]
    assert m.parse_error_fields(seen[4][1]).code == "42501"
    assert b"PL/pgSQL" not in seen[4][1] and b"pgwarden.denial" not in seen[4][1]
    assert not h.responses.is_waiting and h.responses.is_at_boundary


@pytest.mark.parametrize("mode", MODES)
def test_filter_leaves_a_clients_own_failing_trio_alone(mode: str) -> None:
    h = Harness()
    h.send(parse("x", "SELECT 1/0") + bind("x") + EXECUTE + SYNC + parse("bad", "INSERT") + SYNC, "whole")
    own = PC + BC + error("22012", "division by zero") + m.encode_ready_for_query(b"I")
    assert h.reply(own, mode) == own
    assert h.responses.is_waiting  # the stand-in's reply is still to come
    ours = PC + BC + error("42501", "denied", "pgwarden.denial.1") + m.encode_ready_for_query(b"I")
    assert [chr(t) for t, _ in messages(h.reply(ours, mode))] == ["E", "Z"]


def test_filter_forgets_a_stand_in_the_upstream_skipped() -> None:
    h = Harness()
    h.send(parse("x", "SELECT 1/0") + bind("x") + parse("bad", "INSERT") + SYNC, "whole")
    skipped = error("22012", "division by zero") + m.encode_ready_for_query(b"I")
    assert h.reply(skipped, "whole") == skipped
    assert not h.responses.is_waiting
    later = PC + BC + m.encode_ready_for_query(b"I")
    assert h.reply(later, "whole") == later  # nothing is held or dropped any more


def test_filter_passes_chunks_untouched_when_nothing_is_pending() -> None:
    f = ResponseFilter(frozenset({m.READY_FOR_QUERY}))
    data = PC + BC + ROW * 3 + DONE + m.encode_ready_for_query(b"T")
    out, found = f.scan(data)
    assert out is None and found == [(m.READY_FOR_QUERY, b"T")]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.lists(st.integers(min_value=1, max_value=50), max_size=5))
def test_any_bytes_split_or_raise_protocol_violation(data: bytes, cuts: list[int]) -> None:
    splitter = RequestSplitter(frozenset({m.QUERY, m.PARSE}), max_message_bytes=1000)
    f = ResponseFilter(frozenset({m.READY_FOR_QUERY}), max_message_bytes=1000)
    f.expect(Expected("pgwarden.denial.1", True, 0))
    try:
        pos = 0
        for cut in [*cuts, len(data)]:
            splitter.split(data[pos : pos + cut])
            f.scan(data[pos : pos + cut])
            pos += cut
    except ProtocolViolation:
        pass


def test_decoders() -> None:
    assert parse_parse(b"s1\x00SELECT 1\x00\x00\x00").query == b"SELECT 1"
    assert parse_bind(b"p\x00s\x00\x00\x00").statement == b"s"
    assert parse_close(b"Sname\x00").is_statement
    assert parse_function_call((4294967295).to_bytes(4, "big")) == 4294967295
    with pytest.raises(ProtocolViolation):
        parse_parse(b"no terminator")
    with pytest.raises(ProtocolViolation):
        parse_close(b"Xname\x00")


def test_raise_sql_quotes_any_text() -> None:
    sql = raise_sql("a $m$ b $pgw$ c", marker="pgwarden.denial.7", detail="ends with $d", hint="'")
    assert sql.startswith("DO $pgw_")  # the text holds "$pgw$", so the outer tag changed
    body = error("42501", "x", "pgwarden.denial.7")[5:]
    assert error_marker(body) == "pgwarden.denial.7"
    assert error_marker(strip_error(body)) is None


def test_response_summaries_pair_decisions_with_their_cycle() -> None:
    written: list[tuple[str, dict[str, object] | None]] = []
    summaries = ResponseSummaries(lambda kind, request, decision, response: written.append((kind, response)))
    summaries.ready_requested()  # a Sync with nothing decided in it
    summaries.decided("PARSE", {"query": "SELECT 1"}, Verdict(True))
    summaries.ready_requested()
    summaries.decided("QUERY", {"query": "INSERT"}, Verdict(False))
    summaries.ready_requested()
    summaries.decided("QUERY", {"query": "never answered"}, Verdict(True))
    summaries.on_replies([(m.COMMAND_COMPLETE, b"SELECT 5\x00"), (m.READY_FOR_QUERY, b"I")])
    assert written == []  # the first cycle had no decisions
    summaries.on_replies([(m.COMMAND_COMPLETE, b"SELECT 2\x00"), (m.COMMAND_COMPLETE, b"INSERT 0 3\x00"),
                          (m.READY_FOR_QUERY, b"I")])
    assert written[0][0] == "PARSE" and written[0][1] is not None
    assert {k: v for k, v in written[0][1].items() if k != "durationMs"} == {"commandTag": "INSERT 0 3", "rows": 5}
    summaries.on_replies([(m.ERROR_RESPONSE, b"SERROR\x00C42501\x00Mdenied\x00\x00"), (m.READY_FOR_QUERY, b"E")])
    assert written[1][1] is not None and written[1][1]["sqlstate"] == "42501"
    summaries.flush()
    assert written[2] == ("QUERY", None)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_gate_forwards_or_raises_protocol_violation_for_any_bytes(data: bytes) -> None:
    h = Harness()
    try:
        for piece in chunks(data, "whole"):
            h.gate.feed(piece)
    except ProtocolViolation:
        pass


class AllowAll(NoInsert):
    def decide_query(self, sql: str) -> Verdict:
        return Verdict(True)

    def decide_parse(self, name: str, sql: str) -> Verdict:
        return Verdict(True)

    def decide_function_call(self, oid: int) -> Verdict:
        return Verdict(True)


_text = st.binary(max_size=40).map(lambda b: b.replace(b"\x00", b"x"))
# Lexing-neutral text (ASCII, no backslash) is decided at once whatever came before it.
_neutral = st.text(st.characters(min_codepoint=1, max_codepoint=127, blacklist_characters="\\"), max_size=40).map(
    str.encode)
_frames = st.one_of(
    st.tuples(st.sampled_from(b"DEHSdcf"), st.binary(max_size=60)),
    st.tuples(st.just(m.QUERY), _neutral.map(lambda t: t + b"\x00")),
    st.tuples(st.just(m.PARSE), st.tuples(_text, _neutral).map(lambda p: p[0] + b"\x00" + p[1] + b"\x00\x00\x00")),
    st.tuples(st.just(m.FUNCTION_CALL), st.binary(min_size=4, max_size=20)),
    st.tuples(st.just(m.CLOSE), _text.map(lambda t: b"S" + t + b"\x00")),
)
# Simple-protocol requests with any text: held until the upstream has answered what came before.
_simple_frames = st.one_of(
    st.tuples(st.just(m.QUERY), _text.map(lambda t: t + b"\x00")),
    st.tuples(st.just(m.FUNCTION_CALL), st.binary(min_size=4, max_size=20)),
    st.tuples(st.just(m.SYNC), st.just(b"")),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_frames, max_size=12), st.lists(st.integers(min_value=1, max_value=40), max_size=8))
def test_gate_is_transparent_when_everything_is_allowed(frames: list[tuple[int, bytes]], cuts: list[int]) -> None:
    stream = b"".join(m.encode_message(t, body) for t, body in frames)
    h = Harness(AllowAll())
    out, pos = b"", 0
    for cut in [*cuts, len(stream)]:
        out += b"".join(bytes(p) for p in h.gate.feed(stream[pos : pos + cut]))
        pos += cut
    assert out == stream and h.gate.is_at_boundary


@settings(max_examples=300, deadline=None)
@given(st.lists(_simple_frames, max_size=12), st.lists(st.integers(min_value=1, max_value=40), max_size=8))
def test_held_requests_go_on_in_order_once_answered(frames: list[tuple[int, bytes]], cuts: list[int]) -> None:
    stream = b"".join(m.encode_message(t, body) for t, body in frames)
    h = Harness(AllowAll())
    out, pos = b"", 0
    for cut in [*cuts, len(stream)]:
        out += b"".join(bytes(p) for p in h.gate.feed(stream[pos : pos + cut]))
        pos += cut
        while h.gate.is_holding:  # the upstream answers what went before
            out += b"".join(bytes(p) for p in h.gate.on_ready_for_query())
    assert out == stream and h.gate.is_at_boundary


_replies = st.one_of(
    st.tuples(st.sampled_from(b"12DCnTs3"), st.binary(max_size=60)),
    st.tuples(st.just(m.ERROR_RESPONSE), st.just(b"SERROR\x00C22012\x00Mdivision by zero\x00\x00")),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_replies, max_size=10), st.lists(_replies, max_size=10),
       st.lists(st.integers(min_value=1, max_value=40), max_size=8))
def test_filter_drops_exactly_the_stand_ins_replies(before: list[tuple[int, bytes]], after: list[tuple[int, bytes]],
                                                     cuts: list[int]) -> None:
    ours = PC + BC + error("42501", "denied", "pgwarden.denial.1")
    head = b"".join(m.encode_message(t, b) for t, b in before)
    tail = b"".join(m.encode_message(t, b) for t, b in after) + m.encode_ready_for_query(b"I")
    f = ResponseFilter(frozenset({m.READY_FOR_QUERY}))
    f.expect(Expected("pgwarden.denial.1", True, 0))
    stream, out, pos = head + ours + tail, b"", 0
    for cut in [*cuts, len(stream)]:
        chunk = stream[pos : pos + cut]
        pieces, _ = f.scan(chunk)
        out += chunk if pieces is None else b"".join(bytes(p) for p in pieces)
        pos += cut
    stripped = m.encode_message(m.ERROR_RESPONSE, strip_error(error("42501", "denied", "pgwarden.denial.1")[5:]))
    assert out == head + stripped + tail
    assert not f.is_waiting and f.is_at_boundary


# --- lexing settings: text that is not lexing-neutral waits for confirmed settings ---------------------------


def test_non_neutral_text_waits_for_the_answers_before_it_and_then_uses_their_settings() -> None:
    h = Harness()
    attack = b"SELECT E'\xfa\x5c'; INSERT INTO t VALUES (1); --'"  # FA 5C: one SJIS character
    out = h.send(m.encode_query("SET client_encoding TO 'SJIS'") + m.encode_message(m.QUERY, attack + b"\x00")
                 + m.encode_query("SELECT 2"), "whole")
    assert messages(out) == [(m.QUERY, b"SET client_encoding TO 'SJIS'\x00")]  # the rest waits, in order
    assert h.gate.is_holding and h.gate.feed(m.encode_query("SELECT 3")) == []
    h.gate.on_parameter_status(b"client_encoding\x00SJIS\x00")
    released = messages(b"".join(bytes(p) for p in h.gate.on_ready_for_query()))
    assert b"client_encoding SJIS" in released[0][1] and b"DO $pgw$" in released[0][1]  # refused by the gate
    assert released[1:] == [(m.QUERY, b"SELECT 2\x00"), (m.QUERY, b"SELECT 3\x00")]
    assert h.logged[-3][2] is False and "query" in h.logged[-3][1]


def test_backslash_text_is_refused_while_standard_conforming_strings_is_off() -> None:
    h = Harness()
    h.gate.on_parameter_status(b"standard_conforming_strings\x00off\x00")
    h.send(m.encode_query("SELECT 1"), "whole")
    h.gate.on_ready_for_query()
    sent = messages(h.send(m.encode_query("SELECT 'a\\', ' ; INSERT INTO t VALUES (1); -- '"), "whole"))
    assert b"standard_conforming_strings is off" in sent[0][1]
    h.gate.on_ready_for_query()  # the stand-in's answer
    assert messages(h.send(m.encode_query("SELECT 'caf\u00e9'"), "whole")) == [
        (m.QUERY, "SELECT 'caf\u00e9'\x00".encode())]  # no backslash: the setting does not matter


@pytest.mark.parametrize("mode", MODES)
def test_non_neutral_parse_after_an_execute_before_sync_is_refused(mode: str) -> None:
    h = Harness()
    stream = (parse("", "SET standard_conforming_strings TO off") + bind("") + EXECUTE
              + parse("", "SELECT 'a\\'") + bind("") + EXECUTE + SYNC)
    sent = messages(h.send(stream, mode))
    assert [t for t, _ in sent[:3]] == [m.PARSE, m.BIND, m.EXECUTE]
    assert b"send Sync before it" in sent[3][1] and sent[-1][0] == m.SYNC
    assert not h.gate.is_holding


def test_text_that_does_not_decode_is_decided_as_unknown() -> None:
    h = Harness()
    h.send(m.encode_message(m.QUERY, b"SELECT '\xff'\x00"), "whole")
    assert h.policy.asked[-1] == ("query", "SELECT '\ufffd'\x00")  # the NUL makes classify() say UNKNOWN


def test_a_full_backlog_asks_the_session_to_stop_reading() -> None:
    h = Harness()
    h.send(m.encode_query("SELECT 1") + m.encode_query("SELECT '\u00e9'"), "whole")
    assert h.gate.is_holding and not h.gate.is_backlog_full
    h.gate.feed(m.encode_message(m.COPY_DATA, b"x" * (1 << 20)))
    assert h.gate.is_backlog_full


# --- names across a reload ---------------------------------------------------------------------------------


@dataclass
class Classifying(NoInsert):
    """NoInsert that also classifies, as the engine does, so the gate can read the names a text touches."""

    classified: object = None
    denied_word: str = "INSERT"

    def decide_query(self, sql: str) -> Verdict:
        self.classified = classify(sql)
        self.asked.append(("query", sql))
        return Verdict(self.denied_word not in sql.upper())

    def decide_parse(self, name: str, sql: str) -> Verdict:
        self.classified = classify(sql)
        self.asked.append(("parse", sql))
        return Verdict(self.denied_word not in sql.upper())


def test_sql_execute_of_a_statement_prepared_before_a_reload_is_decided_again() -> None:
    policy = Classifying(denied_word="DROP")
    h = Harness(policy)
    h.send(m.encode_query("PREPARE p AS INSERT INTO t VALUES (1)") + m.encode_query("PREPARE q AS SELECT 1"),
           "whole")
    policy.asked.clear()
    assert messages(h.send(m.encode_query("EXECUTE q"), "whole")) == [(m.QUERY, b"EXECUTE q\x00")]
    assert policy.asked == [("query", "EXECUTE q")]  # same generation: nothing to decide again
    policy.generation, policy.denied_word = 2, "INSERT"  # a reload: inserts are denied now
    sent = messages(h.send(m.encode_query("EXECUTE p") + m.encode_query("EXECUTE q"), "whole"))
    assert b"DO $pgw$" in sent[0][1] and sent[1] == (m.QUERY, b"EXECUTE q\x00")
    assert ("query", "PREPARE p AS INSERT INTO t VALUES (1)") in policy.asked
    assert h.logged[-3][0] == "EXECUTE" and h.logged[-3][2] is False


def test_names_dropped_by_sql_are_unknown_after_a_reload() -> None:
    h = Harness(Classifying())
    h.send(m.encode_query("PREPARE q AS SELECT 1") + m.encode_query("DEALLOCATE ALL")
           + m.encode_query("DECLARE c CURSOR WITH HOLD FOR SELECT 1") + m.encode_query("CLOSE c"), "whole")
    h.policy.generation = 2
    sent = messages(h.send(m.encode_query("EXECUTE q") + m.encode_query("FETCH c"), "whole"))
    assert all(b"DO $pgw$" in body for _, body in sent)
    assert [(k, allowed) for k, _, allowed in h.logged[-4:]] == [("QUERY", True), ("EXECUTE", False),
                                                                  ("QUERY", True), ("EXECUTE", False)]


def test_protocol_statement_that_executes_another_decides_both_again() -> None:
    policy = Classifying(denied_word="DROP")
    h = Harness(policy)
    h.send(m.encode_query("PREPARE p AS INSERT INTO t VALUES (1)") + parse("s", "EXECUTE p") + SYNC, "whole")
    policy.generation, policy.denied_word = 2, "INSERT"
    sent = messages(h.send(bind("s") + EXECUTE + SYNC, "whole"))
    assert sent[0][0] == m.PARSE and b"DO $pgw$" in sent[0][1]  # the stand-in for the Bind
    assert [k for k, _, _ in h.logged[-2:]] == ["BIND", "EXECUTE"]


def test_a_query_inside_an_unsynced_batch_makes_the_answer_count_unsure_until_all_come() -> None:
    h = Harness()
    h.send(parse("", "SELECT 1") + m.encode_query("SELECT 2") + SYNC, "whole")  # the upstream may skip the Query
    sent = messages(h.send(m.encode_query("SELECT 'é'"), "whole"))
    assert b"cannot tell which settings" in sent[0][1]  # denied, not held: its answer may never come
    for _ in range(3):  # the Query's, the Sync's and the stand-in's ReadyForQuery: none was skipped
        h.gate.on_ready_for_query()
    assert messages(h.send(m.encode_query("SELECT 'é'"), "whole")) == [(m.QUERY, "SELECT 'é'\x00".encode())]


@pytest.mark.parametrize("mode", MODES)
def test_begin_before_sync_does_not_stop_text_after_it_but_a_function_does(mode: str) -> None:
    h = Harness(Classifying())
    text = "SELECT 'caf\u00e9'"
    begin = parse("S_1", "BEGIN") + bind("S_1") + EXECUTE
    sent = messages(h.send(begin + parse("", text) + bind("") + EXECUTE + SYNC, mode))
    assert (m.PARSE, b"\x00" + text.encode() + b"\x00\x00\x00") in sent  # pgjdbc's BEGIN cannot change settings
    h.gate.on_ready_for_query()
    sent = messages(h.send(bind("S_1") + EXECUTE + parse("", text) + bind("") + EXECUTE + SYNC, mode))
    assert (m.PARSE, b"\x00" + text.encode() + b"\x00\x00\x00") in sent  # the named BEGIN, bound again
    h.gate.on_ready_for_query()
    sent = messages(h.send(parse("", "SELECT set_config('standard_conforming_strings', 'off', false)") + bind("")
                           + EXECUTE + parse("", text) + bind("") + EXECUTE + SYNC, mode))
    assert any(b"send Sync before it" in body for _, body in sent)

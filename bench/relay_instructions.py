"""Drive one session's relay in-process, for callgrind: N Query chunks in, N replies out, no sockets.

Wall clock on a shared machine is noise; instruction counts are not. Run it twice under callgrind, with N and
with 0, and divide the difference by N: that is the CPU work of the relay per round trip (one client chunk to
the upstream, one reply chunk to the client). By default the access log is off and the relay plain, so the
relay's own work shows; `--log` writes the access log (to /dev/null), `--policy` gates every query through
bench.policy_decisions' policies (authorization mode ALL), with a fresh literal in each query as pgbench sends.
Use the interpreter itself, not a shim script (valgrind follows no children here):

    PY=$(python -c 'import sys; print(sys.executable)')
    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/tmp/r.N $PY -m bench.relay_instructions 40000
    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/tmp/r.0 $PY -m bench.relay_instructions 0
    grep ^totals /tmp/r.N /tmp/r.0
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from proxy.audit.accesslog import AccessLog, AccessLogWriter
from proxy.pgwire import messages as m
from proxy.policy.enforce import RequestGate
from proxy.policy.response_summaries import ResponseSummaries
from proxy.relay import GatedRelay, PlainRelay
from proxy.server import ProxyServer
from proxy.session import ClientSession
from proxy.upstream_side import UpstreamSide

QUERY = "SELECT abalance FROM pgbench_accounts WHERE aid = {};"


class NullTransport(asyncio.Transport):
    """Counts what is written and forgets it: only the relay's work is measured."""

    def __init__(self) -> None:
        super().__init__()
        self.written_bytes = 0

    def write(self, data: Any) -> None:
        self.written_bytes += len(data)

    def writelines(self, list_of_data: Any) -> None:
        self.written_bytes += sum(len(data) for data in list_of_data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def is_closing(self) -> bool:
        return False


def reply() -> bytes:
    """RowDescription, one DataRow, CommandComplete, ReadyForQuery: a pgbench select-only answer's shape."""
    return (b"T" + (10).to_bytes(4, "big") + b"\x00\x00" + b"\x00" * 4
            + b"D" + (14).to_bytes(4, "big") + b"\x00\x01" + (4).to_bytes(4, "big") + b"1234"
            + b"C" + (13).to_bytes(4, "big") + b"SELECT 1\x00"
            + b"Z" + (5).to_bytes(4, "big") + b"I")


def extended(aid: int) -> bytes:
    """What pgbench -M extended sends per select-only transaction: Parse, Bind, Describe, Execute, Sync."""
    def msg(type_byte: bytes, body: bytes) -> bytes:
        return type_byte + (len(body) + 4).to_bytes(4, "big") + body

    value = str(aid).encode()
    return (msg(b"P", b"\x00SELECT abalance FROM pgbench_accounts WHERE aid = $1;\x00\x00\x00")
            + msg(b"B", b"\x00\x00\x00\x00\x00\x01" + len(value).to_bytes(4, "big") + value + b"\x00\x00")
            + msg(b"D", b"P\x00") + msg(b"E", b"\x00\x00\x00\x00\x00") + msg(b"S", b""))


def extended_reply() -> bytes:
    """ParseComplete, BindComplete, then the select-only answer."""
    return b"1\x00\x00\x00\x04" + b"2\x00\x00\x00\x04" + reply()


def relay_round_trips(count: int, *, is_logged: bool = False, is_policy: bool = False,
                      is_extended: bool = False) -> None:
    """Relay `count` queries and their replies through one session."""
    log = AccessLog(AccessLogWriter("/dev/null")) if is_logged else None
    server = ProxyServer(tls_context=None, identity=None, access_log=log, fingerprint_key=b"k")  # type: ignore[arg-type]
    client = ClientSession(server.collaborators)
    client.transport = to_client_socket = NullTransport()
    upstream = UpstreamSide()
    upstream.transport = to_upstream_socket = NullTransport()
    upstream.session = client
    client.upstream = upstream
    if log is not None:
        client.log = log.session("bench", {"sessionId": "bench", "user": "u", "service": "db"})
    relay: PlainRelay | GatedRelay
    if is_policy:
        from bench.policy_decisions import session as policy_session  # the policies of the decision bench

        policy = policy_session(("juniors",))
        summaries = client._summaries = ResponseSummaries(client._write_decision)
        gate = RequestGate(policy=lambda: policy, codec=lambda: "utf-8", responses=upstream.filter_denials(),
                           on_decision=client._log_decision, on_ready_requested=summaries.ready_requested,
                           parameters={"client_encoding": "UTF8", "standard_conforming_strings": "on"})
        relay = client._gate = GatedRelay(client, upstream, gate, is_read_only=False)
    else:
        relay = PlainRelay(client, upstream.transport)
    upstream.start_relay(client)
    client.start_relay(upstream, relay)
    queries = [extended(1 + n % 100_000) if is_extended else m.encode_query(QUERY.format(1 + n % 100_000))
               for n in range(count)]
    answer = extended_reply() if is_extended else reply()
    to_upstream, to_client = client.data_received, upstream.data_received
    for query in queries:
        to_upstream(query)
        to_client(answer)
    if client.pending_termination is not None or (to_upstream_socket.written_bytes, to_client_socket.written_bytes) \
            != (sum(map(len, queries)), count * len(answer)):
        raise SystemExit("the relay did not pass every message")
    if log is not None:
        log.writer.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("count", type=int, help="round trips to relay (0: the baseline to subtract)")
    parser.add_argument("--log", action="store_true", help="write the access log (to /dev/null)")
    parser.add_argument("--policy", action="store_true", help="decide every query (authorization mode ALL)")
    parser.add_argument("--extended", action="store_true", help="the extended protocol, as pgbench -M extended")
    args = parser.parse_args()

    async def in_a_loop() -> None:  # as in the server: the access log flushes on the loop's timer
        relay_round_trips(args.count, is_logged=args.log or args.policy, is_policy=args.policy,
                          is_extended=args.extended)

    asyncio.run(in_a_loop())


if __name__ == "__main__":
    main()

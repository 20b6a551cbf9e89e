"""Drive one session's plain relay in-process, for callgrind: N Query chunks in, N replies out, no sockets.

Wall clock on a shared machine is noise; instruction counts are not. Run it twice under callgrind, with N and
with 0, and divide the difference by N: that is the CPU work of the relay per round trip (one client chunk to
the upstream, one reply chunk to the client), with the access log off so the relay's own work shows.

    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/tmp/r.N python -m bench.relay_instructions 40000
    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/tmp/r.0 python -m bench.relay_instructions 0
    grep ^totals /tmp/r.N /tmp/r.0
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from proxy.pgwire import messages as m
from proxy.relay import PlainRelay
from proxy.server import ProxyServer
from proxy.session import ClientSession
from proxy.upstream_side import UpstreamSide

QUERY = b"SELECT abalance FROM pgbench_accounts WHERE aid = 12345;"


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


def relay_round_trips(count: int) -> None:
    """Relay `count` queries and their replies through one plain session."""
    server = ProxyServer(tls_context=None, identity=None, access_log=None, fingerprint_key=b"k")  # type: ignore[arg-type]
    client = ClientSession(server.collaborators)
    client.transport = to_client_socket = NullTransport()
    upstream = UpstreamSide()
    upstream.transport = to_upstream_socket = NullTransport()
    upstream.session = client
    client.upstream = upstream
    upstream.start_relay(client)
    client.start_relay(upstream, PlainRelay(client, upstream.transport))
    query, answer = m.encode_query(QUERY.decode()), reply()
    to_upstream, to_client = client.data_received, upstream.data_received
    for _ in range(count):
        to_upstream(query)
        to_client(answer)
    if client.pending_termination is not None or (to_upstream_socket.written_bytes, to_client_socket.written_bytes) \
            != (count * len(query), count * len(answer)):
        raise SystemExit("the relay did not pass every message")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("count", type=int, help="round trips to relay (0: the baseline to subtract)")
    relay_round_trips(parser.parse_args().count)


if __name__ == "__main__":
    main()

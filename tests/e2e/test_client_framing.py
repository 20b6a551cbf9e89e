"""What real clients expect of PostgreSQL's framing habits, beyond the protocol itself.

PostgreSQL never sends a TLS record with more than 8 KiB of payload (its send buffer is 8192 bytes).
libpq reads TLS into its own buffer; when a record is bigger than the room left there, the rest stays
inside OpenSSL while the socket is no longer readable, and a client that waits on the socket (psycopg's
`Copy.read()`) can hang for ever. So pgwarden cuts what it writes to a client over TLS into records of at
most 8 KiB too (proxy/connection.py). The first test reads the raw TLS records off the wire; the others
run psycopg's COPY through the proxy in a loop and fail on any hang (a timeout, not a sleep).
"""

from __future__ import annotations

import concurrent.futures
import socket
import ssl
import struct

import psycopg

from proxy.pgwire import messages as m
from tests.support.proxy_harness import ProxyHarness

TLS_HEADER = struct.Struct("!BHH")  # content type, legacy version, length
MAX_PAYLOAD = 8192
TLS13_OVERHEAD = 1 + 16  # inner content type + AEAD tag (TLS 1.3; no padding is added)
COLUMNS = ", ".join(f"md5((i * {c})::text) AS c{c}" for c in range(20))
COPY_OUT = f"COPY (SELECT {COLUMNS} FROM generate_series(1, 20) AS i) TO STDOUT"
ITERATIONS = 50
HANG_S = 10.0


class RawTLSClient:
    """A TLS client over a plain socket that keeps every TLS record's header it receives."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(m.encode_ssl_request())
        assert self.sock.recv(1) == b"S"
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing)
        self.raw = bytearray()  # ciphertext not yet split into records
        self.record_lengths: list[int] = []
        self.handshaken = False
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._receive()
        self._flush()
        self.handshaken = True

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def _receive(self) -> None:
        data = self.sock.recv(65536)
        assert data, "proxy closed the connection"
        self.raw += data
        while len(self.raw) >= TLS_HEADER.size:
            content_type, _, length = TLS_HEADER.unpack_from(self.raw)
            if len(self.raw) < TLS_HEADER.size + length:
                break
            if self.handshaken and content_type == 23:  # application data
                self.record_lengths.append(length)
            del self.raw[:TLS_HEADER.size + length]
        self.incoming.write(data)

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self._flush()

    def read_some(self) -> bytes:
        while True:
            try:
                return self.tls.read(1 << 20)
            except ssl.SSLWantReadError:
                self._receive()

    def read_until_ready(self) -> bytes:
        out = bytearray()
        while not (len(out) >= 6 and out[-6:-1] == b"Z\x00\x00\x00\x05"):
            try:
                out += self.tls.read(1 << 20)
            except ssl.SSLWantReadError:
                self._receive()
        return bytes(out)


def test_tls_records_to_the_client_carry_at_most_8_kib(proxy: ProxyHarness) -> None:
    client = RawTLSClient(proxy.port)
    client.send(m.encode_startup_message({"user": "alice", "database": "my-db"}))
    assert client.read_some()[:1] == b"R"  # AuthenticationCleartextPassword: the token goes next
    client.send(m.encode_password_message(proxy.token("alice").encode() + b"\x00"))
    client.read_until_ready()
    client.record_lengths.clear()
    # ~1.3 MB of rows in one answer: the upstream hands the proxy far more than 8 KiB per read.
    client.send(m.encode_query("SELECT repeat(md5(i::text), 40) FROM generate_series(1, 1000) AS i"))
    reply = client.read_until_ready()
    client.sock.close()
    assert reply.count(b"D") >= 1000 and len(reply) > 1_000_000
    assert len(client.record_lengths) > 100
    assert max(client.record_lengths) <= MAX_PAYLOAD + TLS13_OVERHEAD, max(client.record_lengths)


def _copy_out(dsn: str, binary: bool) -> list[bytes]:
    statement = COPY_OUT + (" WITH (FORMAT binary)" if binary else "")
    with psycopg.connect(dsn) as conn, conn.cursor() as cur, cur.copy(statement) as copy:
        return [bytes(data) for data in copy]


def _copy_in(dsn: str, rows: list[tuple[str, ...]], binary: bool) -> int:
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE wide (" + ", ".join(f"c{c} text" for c in range(20)) + ")")
        with cur.copy("COPY wide FROM STDIN" + (" WITH (FORMAT binary)" if binary else "")) as copy:
            if binary:
                copy.set_types(["text"] * 20)
            for row in rows:
                copy.write_row(row)
        (count,), = cur.execute("SELECT count(*) FROM wide").fetchall()
        return int(count)


def test_psycopg_copy_to_and_from_over_tls_never_hangs(proxy: ProxyHarness) -> None:
    token = proxy.token("alice")
    dsn = proxy.dsn("alice", token=token)
    rows = [tuple(f"r{r}c{c}-" + "x" * 30 for c in range(20)) for r in range(200)]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        for n in range(ITERATIONS):
            binary = n % 2 == 1
            chunks = pool.submit(_copy_out, dsn, binary).result(HANG_S)  # TimeoutError: a hang
            data = b"".join(chunks)
            if binary:
                assert data.startswith(b"PGCOPY\n\xff\r\n\x00")
            else:
                assert data.count(b"\n") == 20 and data.split(b"\n")[0].count(b"\t") == 19
            assert pool.submit(_copy_in, dsn, rows, binary).result(HANG_S) == len(rows)

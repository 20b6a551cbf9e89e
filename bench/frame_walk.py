"""CPU per relayed transaction of the frame walker: pgbench select-only byte streams through pgwire's scanners.

    python -m bench.frame_walk [--path plain|gated] [--mode simple|extended] [--transactions N]
    python -m bench.frame_walk --callgrind [--tree DIR ...]

The streams are the bytes `pgbench -S` and PostgreSQL 15 exchange per transaction (one client chunk, one
server chunk), built here message by message: `-M simple` sends a Query and gets RowDescription, DataRow,
CommandComplete, ReadyForQuery; `-M extended` sends Parse, Bind, Describe, Execute, Sync and also gets
ParseComplete and BindComplete. `plain` runs what the relay does without per-query checks (a FrameScanner
each way); `gated` runs the gate's RequestSplitter on the client chunk and the ResponseFilter on the reply.

Wall-clock on a shared machine is noise, so `--callgrind` counts instructions instead: for each source tree
it runs this script under `valgrind --tool=callgrind` with N and 2N transactions and prints
(Ir(2N) - Ir(N)) / N, which cancels start-up. The loop that feeds the chunks is counted too; its
own cost is printed first (`--path none`). `--tree` defaults to this checkout; a tree is any directory
with a `proxy/` package (e.g. an unpacked `git archive`), compiled or not.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_I32 = struct.Struct("!i")


def _message(type_char: str, body: bytes = b"") -> bytes:
    return type_char.encode() + _I32.pack(len(body) + 4) + body


def _cstr(text: str) -> bytes:
    return text.encode() + b"\x00"


def _select(aid: int) -> str:
    return f"SELECT abalance FROM pgbench_accounts WHERE aid = {aid};"


# RowDescription of `abalance` (int4, column 3 of pgbench_accounts): name, table oid, attnum, type oid 23,
# typlen 4, typmod -1, text format.
_ROW_DESCRIPTION = _message("T", b"\x00\x01" + _cstr("abalance") + struct.pack("!ihihih", 16390, 3, 23, 4, -1, 0))
_REPLY_TAIL = _message("C", _cstr("SELECT 1")) + _message("Z", b"I")


def client_chunk(mode: str, aid: int) -> bytes:
    """What pgbench writes for one select-only transaction, in one chunk."""
    if mode == "simple":
        return _message("Q", _cstr(_select(aid)))
    parse = _message("P", _cstr("") + _cstr(_select(aid).replace(str(aid), "$1")) + b"\x00\x00")
    value = str(aid).encode()
    parameters = b"\x00\x01" + _I32.pack(len(value)) + value
    bind = _message("B", _cstr("") + _cstr("") + b"\x00\x00" + parameters + b"\x00\x00")
    return parse + bind + _message("D", b"P\x00") + _message("E", _cstr("") + b"\x00\x00\x00\x00") + _message("S")


def server_chunk(mode: str, balance: int) -> bytes:
    """PostgreSQL's reply to it, in one chunk."""
    value = str(balance).encode()
    row = _message("D", b"\x00\x01" + _I32.pack(len(value)) + value)
    head = _message("1") + _message("2") if mode == "extended" else b""
    return head + _ROW_DESCRIPTION + row + _REPLY_TAIL


def run(path: str, mode: str, transactions: int) -> float:
    """Feed `transactions` exchanges through the scanners; returns the seconds it took (process time)."""
    from proxy.pgwire.denials import ResponseFilter
    from proxy.pgwire.framing import FrameScanner
    from proxy.pgwire.requests import RequestSplitter

    rng = random.Random(7)
    exchanges = [(client_chunk(mode, rng.randint(1, 100_000)), server_chunk(mode, rng.randint(-5000, 5000)))
                 for _ in range(64)]
    # The inspected and held types as proxy/session.py and proxy/policy/enforce.py set them.
    q, p, s, z, c, e, f = (ord(x) for x in "QPSZCEF")
    if path == "none":  # the loop alone: subtract it to get the scanners' own cost
        client_side = server_side = len
    elif path == "plain":
        client_side = FrameScanner(frozenset({q, p}), whose="client").scan
        server_side = FrameScanner(frozenset({z, s}), whose="upstream").scan
    else:
        client_side = RequestSplitter(frozenset({q, p, f, c})).split
        server_side = ResponseFilter(frozenset({z, s, c, e}) | frozenset(b"GW")).scan
    start = time.process_time()
    for i in range(transactions):
        request, reply = exchanges[i & 63]
        client_side(request)
        server_side(reply)
    return time.process_time() - start


def _instructions(tree: Path, path: str, mode: str, transactions: int) -> int:
    with tempfile.TemporaryDirectory() as out:
        out_file = Path(out) / "callgrind.out"
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}", sys.executable, __file__,
             "--path", path, "--mode", mode, "--transactions", str(transactions)],
            env={**os.environ, "PYTHONPATH": str(tree)}, check=True, capture_output=True,
        )
        summary = re.search(r"^summary:\s+(\d+)", out_file.read_text(), re.MULTILINE)
        assert summary is not None, f"no summary line in {out_file}"
        return int(summary.group(1))


def _compiled(tree: Path) -> str:
    found = list((tree / "proxy" / "pgwire").glob("walker.*.so"))
    return "compiled" if found else "python"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", choices=["plain", "gated", "none"], default="plain")
    parser.add_argument("--mode", choices=["simple", "extended"], default="simple")
    parser.add_argument("--transactions", type=int, default=200_000)
    parser.add_argument("--callgrind", action="store_true", help="count instructions per transaction instead")
    parser.add_argument("--tree", action="append", type=Path, help="a source tree to measure (repeatable)")
    args = parser.parse_args()
    if not args.callgrind:
        seconds = run(args.path, args.mode, args.transactions)
        if args.transactions >= 10_000:
            print(f"{args.path} {args.mode}: {seconds / args.transactions * 1e6:.3f} µs CPU per transaction")
        return
    trees = args.tree or [Path(__file__).resolve().parent.parent]
    n = min(args.transactions, 20_000)
    print(f"instructions per transaction (callgrind, (Ir(2N) - Ir(N)) / N, N = {n})")
    tree = trees[0]
    loop = (_instructions(tree, "none", "simple", 2 * n) - _instructions(tree, "none", "simple", n)) / n
    print(f"{'the loop alone (included below)':49} none   simple   {loop:10,.0f}", flush=True)
    for tree in trees:
        for path in ("plain", "gated"):
            for mode in ("simple", "extended"):
                per_txn = (_instructions(tree, path, mode, 2 * n) - _instructions(tree, path, mode, n)) / n
                print(f"{str(tree):40} {_compiled(tree):8} {path:6} {mode:8} {per_txn:10,.0f}", flush=True)


if __name__ == "__main__":
    main()

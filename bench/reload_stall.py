"""How long a SIGHUP reload of a large manifest directory holds the relay's event loop, before and now.

    python -m bench.reload_stall [--services 1000] [--users 10000] [--rounds 3]

Generates the repository of `python -m bench.reconcile` (plaintext Secrets, as `pgwarden proxy --manifests`
allows), starts a real ProxyServer on uvloop with a 1 ms ticker task, and reloads the directory in rounds,
interleaved: the old way (read, parse, validate, build and compile on the loop, then swap) and the SIGHUP
handler of `pgwarden proxy` (pgwarden/commands/proxy.py ManifestReloads: read and compile in threads, swap on
the loop). For each it prints the reload's wall time, the worst gap between ticks, the worst "busy" gap
(min of wall time and the process's CPU time per gap: a busy shared machine also deschedules the whole
process, which costs wall time but no CPU) and the 99th percentile gap.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import uvloop

from bench.loop_gaps import LoopGaps, with_ticker
from bench.reconcile import generate
from identity.sessions import SessionAuthority
from identity.store.sqlite import SqliteStore
from identity.tokens import TokenAuthority
from pgwarden.commands.proxy import ManifestReloads
from proxy.audit.accesslog import AccessLog, AccessLogWriter
from proxy.server import ProxyServer
from reconciler.directory import load_snapshot


async def measure(root: Path, rounds: int) -> list[tuple[str, LoopGaps]]:
    store = await SqliteStore(root / "state.db", encryption_key=b"k" * 32).open()
    server = ProxyServer(tls_context=None, identity=SessionAuthority(TokenAuthority.load_or_create(root / "data"),
                                                                     store),
                         access_log=AccessLog(AccessLogWriter(None)), fingerprint_key=b"k" * 32)
    reloads = ManifestReloads(server, root / "repo", None)

    async def on_the_loop() -> None:  # what the SIGHUP handler did before issue 11
        server.apply(load_snapshot(root / "repo"))

    async def sighup_now() -> None:
        reloads.request()
        assert reloads.running is not None
        await reloads.running

    results: list[tuple[str, LoopGaps]] = []
    try:
        await on_the_loop()  # warm the parse cache and the CEL cache for both ways alike
        for _ in range(rounds):
            results.append(("read + compile on the loop (before)", await with_ticker(on_the_loop)))
            results.append(("SIGHUP now (threads, swap on loop)", await with_ticker(sighup_now)))
    finally:
        await store.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.reload_stall", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--users", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved (before, now) pairs (default 3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pgwarden-bench-reload-") as tmp:
        root = Path(tmp)
        generate(root / "repo", args.services, args.users)
        print(f"{args.services} Services, {args.users} Users, {2 * args.services} plaintext Secrets; "
              f"{args.rounds} interleaved rounds; 1 ms ticker on the relay's loop")
        for label, gaps in uvloop.run(measure(root, args.rounds)):
            print(f"  {label:<36} reload {gaps.action_s * 1000:7.0f} ms  worst gap {gaps.worst_gap_ms:7.1f} ms  "
                  f"worst busy gap {gaps.worst_busy_gap_ms:7.1f} ms  p99 gap {gaps.p99_gap_ms:5.1f} ms")


if __name__ == "__main__":
    main()

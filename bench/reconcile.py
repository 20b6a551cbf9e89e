"""Time a reconcile of a large repository: 1,000 Services and 10,000 Users by default.

    python -m bench.reconcile [--services 1000] [--users 10000]

Prints the time of each stage (read, parse, validate, build, compile + swap in a real proxy server)
and how long the swap itself holds the event loop (the relay's stall), measured by a ticker task.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from proxy.audit.accesslog import AccessLog, AccessLogWriter
from proxy.identity.sessions import SessionAuthority
from proxy.identity.store_sqlite import SqliteStore
from proxy.identity.tokens import TokenAuthority
from proxy.server import ProxyServer
from reconciler import build, load, validate

SERVICE = """\
kind: Service
metadata: {{name: svc-{i}}}
spec:
  mode: POSTGRES
  dynamicConfig:
    configs:
      - name: read-only
        upstream: {{url: "postgres://db-{i}.internal:5432"}}
        postgres: {{user: read_only, database: app, auth: {{password: {{fromSecret: ro-{i}}}}}, sslMode: REQUIRE}}
      - name: full-access
        parent: read-only
        postgres: {{user: full_access, auth: {{password: {{fromSecret: rw-{i}}}}}}}
    rules:
      - condition: {{match: 'ctx.user.spec.groups.hasAny(["team-{team}", "admins"])'}}
        configName: full-access
      - condition: {{matchAny: true}}
        configName: read-only
---
kind: Secret
metadata: {{name: ro-{i}}}
data: {{value: "ro-password-{i}"}}
---
kind: Secret
metadata: {{name: rw-{i}}}
data: {{value: "rw-password-{i}"}}
"""


def generate(root: Path, services: int, users: int) -> None:
    (root / "services").mkdir(parents=True)
    (root / "users").mkdir()
    for i in range(services):
        (root / "services" / f"svc-{i}.yaml").write_text(SERVICE.format(i=i, team=i % 50))
    groups = ["admins", *(f"team-{t}" for t in range(50))]
    (root / "groups.yaml").write_text("\n---\n".join(f"kind: Group\nmetadata: {{name: {g}}}" for g in groups))
    per_file = 500
    for start in range(0, users, per_file):
        docs = [f"kind: User\nmetadata: {{name: user-{u}}}\nspec: {{type: HUMAN, groups: [team-{u % 50}]}}"
                for u in range(start, min(users, start + per_file))]
        (root / "users" / f"users-{start}.yaml").write_text("\n---\n".join(docs))


async def swap_with_ticker(server: ProxyServer, snapshot: object) -> tuple[float, float, float]:
    """(swap seconds, worst loop stall ms, p99 tick gap ms) while a 1 ms ticker runs."""
    gaps: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append((now - last) * 1000)
            last = now

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    server.apply(snapshot)  # type: ignore[arg-type]
    swap_s = time.perf_counter() - started
    await asyncio.sleep(0.2)  # the revocation pass runs here, in batches
    stop.set()
    await task
    gaps.sort()
    return swap_s, gaps[-1], gaps[int(len(gaps) * 0.99) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.reconcile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--users", type=int, default=10000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pgwarden-bench-repo-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        generate(root, args.services, args.users)
        print(f"generated {args.services} Services, {args.users} Users, {2 * args.services} Secrets "
              f"in {time.perf_counter() - t0:.1f} s")
        timings: dict[str, float] = {}
        t = time.perf_counter()
        files, problems = load.read_directory(root)
        timings["read"] = time.perf_counter() - t
        t = time.perf_counter()
        documents = load.parse_files(files, problems)
        timings["parse (YAML 1.2)"] = time.perf_counter() - t
        t = time.perf_counter()
        validate.validate_all(documents)
        timings["validate (schemas, references, CEL)"] = time.perf_counter() - t
        t = time.perf_counter()
        snapshot = build.build_snapshot(documents, revision="bench", source=str(root))
        timings["build snapshot"] = time.perf_counter() - t

        async def apply() -> tuple[float, float, float]:
            store = await SqliteStore(root / "state.db", encryption_key=b"k" * 32).open()
            identity = SessionAuthority(TokenAuthority.load_or_create(root / "data"), store)
            server = ProxyServer(tls_context=None, identity=identity,
                                 access_log=AccessLog(AccessLogWriter(None)), fingerprint_key=b"k")
            try:
                return await swap_with_ticker(server, snapshot)
            finally:
                await store.close()

        swap_s, worst_ms, p99_ms = asyncio.run(apply())
        # A second cycle after a commit that touches one Service: unchanged files come from the parse cache.
        (root / "services" / "svc-0.yaml").write_text(SERVICE.format(i=0, team=1))
        t = time.perf_counter()
        files, problems = load.read_directory(root)
        documents = load.parse_files(files, problems)
        validate.validate_all(documents)
        build.build_snapshot(documents, revision="bench-2", source=str(root))
        incremental_s = time.perf_counter() - t
        timings["compile + swap (proxy.apply)"] = swap_s
        total = sum(timings.values())
        print(f"{'stage':<40} {'seconds':>8}")
        for stage, seconds in timings.items():
            print(f"{stage:<40} {seconds:8.2f}")
        print(f"{'whole cycle (without git fetch/decrypt)':<40} {total:8.2f}")
        print(f"{'next cycle, one file changed (parse cache)':<40} {incremental_s:8.2f}")
        print(f"event loop during the swap: worst stall {worst_ms:.0f} ms, p99 tick gap {p99_ms:.1f} ms "
              f"")


if __name__ == "__main__":
    main()

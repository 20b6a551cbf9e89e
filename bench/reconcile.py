"""Time a reconcile of a large repository: 1,000 Services, 10,000 Users and 2,000 Secrets by default.

    python -m bench.reconcile [--services 1000] [--users 10000] [--plaintext-secrets]

Secrets are what a real repository holds: one file each, sops-encrypted for an age key (as
`pgwarden secret create NAME -o FILE` writes them), decrypted with that key in the cycle.
Prints the wall and CPU time of each stage (read, parse, decrypt, validate, build, compile + swap in
a real proxy server), how long compile + swap holds the event loop (the relay's stall, measured by a
ticker task) on the loop (`ProxyServer.apply`) and off it (`ProxyServer.reload`, what SIGHUP, the
reconciler and the admin API use), and the next cycle after a commit that changes one Service.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pyrage
import uvloop

from bench.loop_gaps import LoopGaps, with_ticker
from identity.sessions import SessionAuthority
from identity.store.sqlite import SqliteStore
from identity.tokens import TokenAuthority
from proxy.audit.accesslog import AccessLog, AccessLogWriter
from proxy.server import ProxyServer
from reconciler import build, decrypt, json_schema, load, validate
from reconciler.sops import KeyRing, encrypt_secret_manifest

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
"""
SECRET = """\
kind: Secret
metadata: {{name: {name}}}
data: {{value: "{value}"}}
"""


def generate(root: Path, services: int, users: int, *, age_recipient: str | None = None) -> None:
    """The repository; Secrets sops-encrypted for `age_recipient`, or in plaintext without one."""
    (root / "services").mkdir(parents=True)
    (root / "users").mkdir()
    (root / "secrets").mkdir()
    for i in range(services):
        (root / "services" / f"svc-{i}.yaml").write_text(SERVICE.format(i=i, team=i % 50))
        for name in (f"ro-{i}", f"rw-{i}"):
            value = f"{name[:2]}-password-{i}"
            text = (encrypt_secret_manifest(name, value, age_recipients=[age_recipient]) if age_recipient
                    else SECRET.format(name=name, value=value))
            (root / "secrets" / f"{name}.yaml").write_text(text)
    groups = ["admins", *(f"team-{t}" for t in range(50))]
    (root / "groups.yaml").write_text("\n---\n".join(f"kind: Group\nmetadata: {{name: {g}}}" for g in groups))
    per_file = 500
    for start in range(0, users, per_file):
        docs = [f"kind: User\nmetadata: {{name: user-{u}}}\nspec: {{type: HUMAN, groups: [team-{u % 50}]}}"
                for u in range(start, min(users, start + per_file))]
        (root / "users" / f"users-{start}.yaml").write_text("\n---\n".join(docs))


async def swap_with_ticker(server: ProxyServer, snapshot: object, *, is_off_loop: bool) -> LoopGaps:
    """Apply `snapshot` (on the loop: ProxyServer.apply; off it: ProxyServer.reload) while a ticker measures gaps;
    the revocation pass after the swap runs in batches within the 0.2 s tail."""

    async def swap() -> None:
        if is_off_loop:
            await server.reload(snapshot)  # type: ignore[arg-type]
        else:
            server.apply(snapshot)  # type: ignore[arg-type]

    return await with_ticker(swap, tail_s=0.2)


T = TypeVar("T")


class Stages:
    """Wall and CPU seconds per stage (the CPU column is what a quiet machine would show as wall)."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def run(self, stage: str, work: Callable[[], T]) -> T:
        wall, cpu = time.perf_counter(), time.process_time()
        result = work()
        self.wall[stage] = self.wall.get(stage, 0.0) + time.perf_counter() - wall
        self.cpu[stage] = self.cpu.get(stage, 0.0) + time.process_time() - cpu
        return result


class Memory:
    """What a Reconciler keeps between cycles (reconciler/loop.py): each pure stage's reuse cache."""

    def __init__(self) -> None:
        self.parser = load.Parser()
        self.decryptor = decrypt.Decryptor()
        self.verdicts = json_schema.SchemaVerdicts()
        self.builder = build.Builder()


def cycle(root: Path, keys: KeyRing | None, stages: Stages, revision: str, memory: Memory) -> object:
    """The reconcile loop's pure stages (Reconciler._desired), each timed."""
    files, problems = stages.run("read", lambda: load.read_directory(root))
    documents = stages.run("parse (YAML 1.2)", lambda: memory.parser.parse_files(files, problems))
    documents = stages.run("decrypt (sops, age)",
                           lambda: memory.decryptor.secrets(documents, keys, allow_plaintext=keys is None))
    stages.run("validate (schemas, references, CEL)",
               lambda: validate.validate_all(documents, verdicts=memory.verdicts))
    return stages.run("build snapshot", lambda: build.build_snapshot(documents, revision=revision, source=str(root),
                                                                     builder=memory.builder))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.reconcile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--users", type=int, default=10000)
    parser.add_argument("--swaps", type=int, default=3, help="warm (apply, reload) pairs to time (default 3)")
    parser.add_argument("--plaintext-secrets", action="store_true",
                        help="write Secrets unencrypted (no decrypt stage), as a local development directory")
    args = parser.parse_args()
    identity = pyrage.x25519.Identity.generate()
    keys = None if args.plaintext_secrets else KeyRing(age_identities=[identity])
    with tempfile.TemporaryDirectory(prefix="pgwarden-bench-repo-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        generate(root, args.services, args.users, age_recipient=None if keys is None else str(identity.to_public()))
        secrets = "plaintext" if keys is None else "sops-encrypted"
        print(f"generated {args.services} Services, {args.users} Users, {2 * args.services} {secrets} Secrets "
              f"in {time.perf_counter() - t0:.1f} s")
        stages = Stages()
        memory = Memory()
        snapshot = cycle(root, keys, stages, "bench", memory)

        async def apply() -> list[tuple[str, LoopGaps]]:
            store = await SqliteStore(root / "state.db", encryption_key=b"k" * 32).open()
            identity = SessionAuthority(TokenAuthority.load_or_create(root / "data"), store)
            server = ProxyServer(tls_context=None, identity=identity,
                                 access_log=AccessLog(AccessLogWriter(None)), fingerprint_key=b"k")
            try:
                first = await swap_with_ticker(server, snapshot, is_off_loop=True)  # cold: compiles every CEL text
                stalls = [("cold, off the loop (reload)", first)]
                for _ in range(args.swaps):  # warm (CEL cached), interleaved so drift hits both alike
                    for is_off_loop in (False, True):
                        label = "off the loop (reload)" if is_off_loop else "on the loop (apply)"
                        stalls.append((label, await swap_with_ticker(server, snapshot, is_off_loop=is_off_loop)))
                return stalls
            finally:
                await store.close()

        stalls = uvloop.run(apply())
        cold = stalls[0][1]
        stages.wall["compile + swap (proxy.reload)"] = cold.action_s
        stages.cpu["compile + swap (proxy.reload)"] = cold.cpu_s
        # A second cycle after a commit that touches one Service: unchanged files come from the caches.
        (root / "services" / "svc-0.yaml").write_text(SERVICE.format(i=0, team=1))
        incremental = Stages()
        cycle(root, keys, incremental, "bench-2", memory)
        print(f"{'stage':<40} {'wall s':>8} {'cpu s':>8}")
        for stage, seconds in stages.wall.items():
            print(f"{stage:<40} {seconds:8.2f} {stages.cpu[stage]:8.2f}")
        whole = "whole cycle (without git fetch)"
        print(f"{whole:<40} {sum(stages.wall.values()):8.2f} {sum(stages.cpu.values()):8.2f}")
        print(f"{'next cycle, one file changed (caches)':<40} {sum(incremental.wall.values()):8.2f} "
              f"{sum(incremental.cpu.values()):8.2f}")
        print("  next cycle by stage (wall s): " + ", ".join(
            f"{stage.split(' ')[0]} {seconds:.2f}" for stage, seconds in incremental.wall.items()))
        print("event loop during compile + swap (1 ms ticker; busy = the process's own CPU time within a gap):")
        for label, stall in stalls:
            print(f"  {label:<28} {stall.action_s * 1000:7.0f} ms  worst gap {stall.worst_gap_ms:6.1f} ms  "
                  f"worst busy gap {stall.worst_busy_gap_ms:6.1f} ms  p99 gap {stall.p99_gap_ms:5.1f} ms")


if __name__ == "__main__":
    main()

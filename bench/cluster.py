"""The bench's PostgreSQL: a `pgwarden.pgcluster.Cluster` tuned for throughput, with role and database `bench`
seeded by `pgbench -i`, ssl=on and SCRAM over TCP."""

from __future__ import annotations

import contextlib
import secrets
import subprocess
from pathlib import Path

from bench.certificate import write_self_signed
from bench.system import BenchSetupError, Binaries
from pgwarden.pgcluster import STEADY_SETTINGS, Cluster, ClusterError, ServerTls, clean_libpq_env

_SETTINGS = {
    "max_connections": "200",
    "shared_buffers": "256MB",  # scale 10 is ~160 MB: every target reads from memory alike
    # A vacuum or JIT compile that lands in one target's run would be charged to that target alone.
    **STEADY_SETTINGS,
}


class BenchCluster:
    """PostgreSQL on a free 127.0.0.1 port under `base`, with role and database `bench` holding pgbench's tables.

    Mutable: it tracks a running server. `stop()` stops it; the caller removes `base`.
    """

    host = Cluster.host
    user = "bench"
    database = "bench"

    def __init__(self, binaries: Binaries, base: Path) -> None:
        self.binaries = binaries
        self.base = base
        self.password = secrets.token_urlsafe(24)
        self.cert_path, self.key_path = base / "tls" / "server.pem", base / "tls" / "server.key"
        # Detached: Ctrl-C reaches the bench, which then stops the server itself.
        self.cluster = Cluster(base, bindir=binaries.pg_bindir, settings=_SETTINGS, is_detached=True,
                               tls=ServerTls(cert_path=self.cert_path, key_path=self.key_path))

    @property
    def port(self) -> int:
        return self.cluster.port

    def start(self, *, scale: int) -> None:
        """initdb, configure, start, create `bench`, and run `pgbench -i -s scale`."""
        write_self_signed(self.cert_path.parent)
        try:
            self.cluster.init()
            self.cluster.start()
        except ClusterError as exc:
            raise BenchSetupError(str(exc)) from exc
        # The password goes through psql's stdin, never argv, so it does not show in `ps`.
        self.psql(f"CREATE ROLE {self.user} LOGIN PASSWORD '{self.password}';\n"
                  f"CREATE DATABASE {self.database} OWNER {self.user};\n", database="postgres")
        argv = [self.binaries.pg("pgbench"), "-i", "-q", "-s", str(scale), *self.tcp_args(), self.database]
        done = subprocess.run(argv, capture_output=True, text=True, env=self.tcp_env(sslmode="disable"), cwd=self.base)
        if done.returncode != 0:
            raise BenchSetupError(f"pgbench -i exited {done.returncode}: {done.stderr.strip() or done.stdout.strip()}")

    def stop(self) -> None:
        """Stop the server immediately (the data is thrown away). Idempotent; a cleanup step, so it never raises."""
        with contextlib.suppress(ClusterError):
            self.cluster.stop(mode="immediate")

    def tcp_args(self) -> list[str]:
        return ["-h", self.host, "-p", str(self.port), "-U", self.user]

    def tcp_env(self, *, sslmode: str) -> dict[str, str]:
        return {**clean_libpq_env(), "PGPASSWORD": self.password, "PGSSLMODE": sslmode}

    def psql(self, sql: str, *, database: str | None = None) -> str:
        """Run `sql` as the superuser over the unix socket; return unaligned stdout."""
        try:
            return self.cluster.psql(sql, database=database or self.database)
        except ClusterError as exc:
            raise BenchSetupError(str(exc)) from exc

    def reset_for_writes(self) -> None:
        """What pgbench does before a TPC-B-like run, done directly so every target starts from the same state."""
        self.psql("TRUNCATE pgbench_history; VACUUM pgbench_branches, pgbench_tellers;")

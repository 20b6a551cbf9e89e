"""A throwaway PostgreSQL for the bench: initdb, ssl=on, SCRAM over TCP, role and database `bench`, pgbench -i.

Modelled on tests/support/pgcluster.py, but tuned for throughput and seeded with pgbench's tables.
"""

from __future__ import annotations

import re
import secrets
import subprocess
from pathlib import Path

from bench.certificate import write_self_signed
from bench.system import BenchSetupError, Binaries, as_postgres_user, clean_libpq_env, free_port, give_to_postgres

_START_ATTEMPTS = 5
_BIND_FAILURE = re.compile(r"could not (bind|create any TCP/IP sockets|create listen socket)")

_HBA = """\
# Written by bench/cluster.py. First match wins.
local all postgres trust
host  all all 127.0.0.1/32 scram-sha-256
"""


def _settings(socket_dir: Path, cert: Path, key: Path) -> dict[str, str]:
    return {
        "listen_addresses": "'127.0.0.1'",
        "unix_socket_directories": f"'{socket_dir}'",
        "max_connections": "200",
        "password_encryption": "'scram-sha-256'",
        "ssl": "on",
        "ssl_cert_file": f"'{cert}'",
        "ssl_key_file": f"'{key}'",
        "shared_buffers": "256MB",  # scale 10 is ~160 MB: every target reads from memory alike
        # The data is thrown away: durability buys nothing and disk waits would only add noise.
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        # A vacuum or JIT compile that lands in one target's run would be charged to that target alone.
        "autovacuum": "off",
        "jit": "off",
        "lc_messages": "'C'",
        "log_min_messages": "warning",
    }


class BenchCluster:
    """PostgreSQL on a free 127.0.0.1 port under `base`, with role and database `bench` holding pgbench's tables.

    Mutable: it tracks a running server. `stop()` stops it; the caller removes `base`.
    """

    host = "127.0.0.1"
    user = "bench"
    database = "bench"

    def __init__(self, binaries: Binaries, base: Path) -> None:
        self.binaries = binaries
        self.base = base
        self.datadir = base / "data"
        self.socket_dir = base / "sock"
        self.log_path = base / "postgres.log"
        self.port = 0
        self.password = secrets.token_urlsafe(24)
        self.cert_path, self.key_path = base / "tls" / "server.pem", base / "tls" / "server.key"

    def start(self, *, scale: int) -> None:
        """initdb, configure, start, create `bench`, and run `pgbench -i -s scale`."""
        self._create()
        self._launch()
        # The password goes through psql's stdin, never argv, so it does not show in `ps`.
        self.psql(f"CREATE ROLE {self.user} LOGIN PASSWORD '{self.password}';\n"
                  f"CREATE DATABASE {self.database} OWNER {self.user};\n", database="postgres")
        self._run([self.binaries.pg("pgbench"), "-i", "-q", "-s", str(scale), *self.tcp_args(), self.database],
                  env=self.tcp_env(sslmode="disable"), what="pgbench -i")

    def stop(self) -> None:
        """Stop the server immediately (the data is thrown away). Idempotent."""
        if (self.datadir / "postmaster.pid").exists():
            subprocess.run([self.binaries.pg("pg_ctl"), "stop", "-D", str(self.datadir), "-m", "immediate", "-w"],
                           capture_output=True, env=clean_libpq_env(), cwd=self.base, **as_postgres_user())

    def tcp_args(self) -> list[str]:
        return ["-h", self.host, "-p", str(self.port), "-U", self.user]

    def tcp_env(self, *, sslmode: str) -> dict[str, str]:
        return {**clean_libpq_env(), "PGPASSWORD": self.password, "PGSSLMODE": sslmode}

    def psql(self, sql: str, *, database: str | None = None) -> str:
        """Run `sql` as the superuser over the unix socket; return unaligned stdout."""
        argv = [self.binaries.pg("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", str(self.socket_dir),
                "-p", str(self.port), "-U", "postgres", "-d", database or self.database]
        return self._run(argv, env=clean_libpq_env(), what="psql", stdin=sql)

    def reset_for_writes(self) -> None:
        """What pgbench does before a TPC-B-like run, done directly so every target starts from the same state."""
        self.psql("TRUNCATE pgbench_history; VACUUM pgbench_branches, pgbench_tellers;")

    # --- internals ---

    def _run(self, argv: list[str], *, env: dict[str, str], what: str, stdin: str | None = None,
             as_owner: bool = False) -> str:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, env=env, cwd=self.base,
                              **(as_postgres_user() if as_owner else {}))
        if done.returncode != 0:
            raise BenchSetupError(f"{what} exited {done.returncode}: {done.stderr.strip() or done.stdout.strip()}")
        return done.stdout

    def _create(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        write_self_signed(self.cert_path.parent)
        self.socket_dir.mkdir()
        give_to_postgres(self.base, self.socket_dir, self.cert_path.parent, self.cert_path, self.key_path)
        self._run([self.binaries.pg("initdb"), "-D", str(self.datadir), "-U", "postgres", "-E", "UTF8",
                   "--locale=C", "-A", "reject", "--no-sync", "--no-instructions"],
                  env=clean_libpq_env(), what="initdb", as_owner=True)
        (self.datadir / "pg_hba.conf").write_text(_HBA)
        settings = _settings(self.socket_dir, self.cert_path, self.key_path)
        with (self.datadir / "postgresql.conf").open("a") as conf:
            conf.write("\n# bench/cluster.py\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def _launch(self) -> None:
        # A free port can be taken by another process before postgres binds it: retry with another.
        for _ in range(_START_ATTEMPTS):
            self.port = free_port(self.host)
            done = subprocess.run(
                [self.binaries.pg("pg_ctl"), "start", "-D", str(self.datadir), "-l", str(self.log_path), "-w",
                 "-t", "60", "-o", f"-p {self.port}"],
                capture_output=True, text=True, env=clean_libpq_env(), cwd=self.base,
                start_new_session=True,  # Ctrl-C reaches the bench, which then stops the server itself
                **as_postgres_user(),
            )
            if done.returncode == 0:
                return
            log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
            if not _BIND_FAILURE.search(log):
                raise BenchSetupError(f"pg_ctl start exited {done.returncode}: {done.stderr.strip()}\n{log}")
            self.log_path.unlink(missing_ok=True)
        raise BenchSetupError(f"PostgreSQL found no free port after {_START_ATTEMPTS} attempts")

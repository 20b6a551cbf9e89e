"""A throwaway PostgreSQL cluster (initdb, pg_ctl, psql) on a fixed or a free 127.0.0.1 port.

The one way the demo (`pgwarden up --demo`), the bench and the tests start PostgreSQL. Modelled on asyncpg's
`cluster.py`: a `Cluster` with init/start/stop/destroy and `pg_config --bindir` discovery. Callers differ only by
the options they pass (port, pg_hba rules, settings, TLS files, IPv6, own session); each seeds its own data.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INSTALL_HINT = "apt-get install postgresql"
_START_ATTEMPTS = 5
_BIND_FAILURE = re.compile(r"could not (bind|create any TCP/IP sockets|create listen socket)")

# The data is thrown away, so durability buys nothing: every cluster skips the disk waits it would cost.
_DISPOSABLE_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "lc_messages": "'C'",  # errors that tests and the bench match on, in one language
    "log_min_messages": "warning",
}
# A vacuum or a JIT compile that lands mid-run makes timings noisy and timing-sensitive tests flaky (asyncpg's
# _testbase turns JIT off for the same reason). The bench and the tests ask for these; the demo does not.
STEADY_SETTINGS = {"autovacuum": "off", "jit": "off"}


class ClusterError(RuntimeError):
    """A PostgreSQL tool (initdb, pg_ctl, psql) failed or is not installed; the message says which and why."""


class PortInUse(ClusterError):
    """The fixed port the cluster was given is taken by another process."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerTls:
    """The server's certificate and key (`ssl = on`) and, if client certificates are checked, their CA."""

    cert_path: Path
    key_path: Path
    ca_path: Path | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HostRule:
    """One `host` line of pg_hba.conf; the cluster writes it once for each loopback address it listens on."""

    user: str
    method: str  # scram-sha-256, md5 or password


SCRAM_FOR_ALL = (HostRule(user="all", method="scram-sha-256"),)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now (another process may still take it first: retry on bind errors)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def is_port_free(host: str, port: int) -> bool:
    """Whether a server could listen on host:port now. Bound with SO_REUSEADDR, as PostgreSQL (and most servers)
    bind: connections of an earlier run left in TIME_WAIT do not count; listeners and live connections do."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def has_ipv6_loopback() -> bool:
    try:
        return is_port_free("::1", 0)
    except OSError:
        return False


def clean_libpq_env() -> dict[str, str]:
    """os.environ without PG* variables, so an outer PGHOST, PGPORT or PGSSLMODE cannot steer our tools."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def as_postgres_user() -> dict[str, Any]:
    """subprocess kwargs that run a program as the `postgres` OS user when we are root (the servers refuse root)."""
    if os.geteuid() != 0:
        return {}
    return {"user": "postgres", "group": "postgres", "extra_groups": []}


def give_to_postgres(*paths: Path) -> None:
    """chown `paths` to the `postgres` OS user when we are root, so the servers we start can use them."""
    if os.geteuid() == 0:
        for path in paths:
            shutil.chown(path, "postgres", "postgres")


def find_bindir() -> Path:
    """PostgreSQL's server binaries: $PGBIN, else `pg_config --bindir`, else initdb's directory on PATH, else
    Debian's newest /usr/lib/postgresql."""
    if env := os.environ.get("PGBIN"):
        if not (Path(env) / "initdb").is_file():
            raise ClusterError(f"PGBIN={env} has no initdb: point it at PostgreSQL's bin directory")
        return Path(env)
    candidates: list[Path] = []
    if shutil.which("pg_config"):
        done = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        if done.returncode == 0 and done.stdout.strip():
            candidates.append(Path(done.stdout.strip()))
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).resolve().parent)
    # Debian keeps the server binaries off PATH, one directory per major version.
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True)
    for bindir in candidates:
        if (bindir / "initdb").is_file():
            return bindir
    raise ClusterError(f"PostgreSQL's server binaries (initdb, pg_ctl) are not installed (no pg_config or initdb "
                       f"on PATH): {INSTALL_HINT} (or set PGBIN to PostgreSQL's bin directory)")


class Cluster:
    """PostgreSQL in `base` (data/, sock/, postgres.log) on 127.0.0.1, and on ::1 too if `is_dual_stack`.

    `port=None` picks a free port at the first start (retrying if another process takes it first) and keeps it
    for later starts. pg_hba.conf lets `postgres` in over the unix socket without a password and everyone else
    over TCP by `host_rules`. With `is_detached`, the server runs in its own session: a Ctrl-C reaches only the
    caller, which then stops the server itself. Mutable: it tracks a running server.
    """

    host = "127.0.0.1"

    def __init__(self, base: Path, *, bindir: Path | None = None, port: int | None = None,
                 host_rules: Sequence[HostRule] = SCRAM_FOR_ALL, settings: Mapping[str, str] | None = None,
                 tls: ServerTls | None = None, is_dual_stack: bool = False, is_detached: bool = False) -> None:
        self.base = base
        self.bindir = bindir or find_bindir()
        self.port = port or 0
        self.datadir = base / "data"
        self.socket_dir = base / "sock"
        self.log_path = base / "postgres.log"
        self.host_rules = tuple(host_rules)
        self.settings = dict(settings or {})
        self.tls = tls
        self.is_detached = is_detached
        self._wants_ipv6 = is_dual_stack
        self._is_ipv6 = False

    def init(self) -> None:
        """initdb, then write pg_hba.conf and postgresql.conf from the options."""
        self.base.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        owned = [self.base, self.socket_dir]
        if self.tls is not None:
            owned += [self.tls.cert_path.parent, self.tls.cert_path, self.tls.key_path]
        give_to_postgres(*owned)
        self.run_tool(["initdb", "-D", str(self.datadir), "-U", "postgres", "-E", "UTF8", "--locale=C",
                       "-A", "reject", "--no-sync", "--no-instructions"])
        self._is_ipv6 = self._wants_ipv6 and has_ipv6_loopback()
        addresses = ["127.0.0.1", "::1"] if self._is_ipv6 else ["127.0.0.1"]
        nets = [f"{a}/{128 if ':' in a else 32}" for a in addresses]
        hba = ["# Written by pgwarden/pgcluster.py. First match wins.", "local all postgres trust"]
        hba += [f"host all {rule.user} {net} {rule.method}" for net in nets for rule in self.host_rules]
        (self.datadir / "pg_hba.conf").write_text("\n".join(hba) + "\n")
        settings = {
            "listen_addresses": f"'{', '.join(addresses)}'",
            "unix_socket_directories": f"'{self.socket_dir}'",
            "password_encryption": "'scram-sha-256'",
            **_DISPOSABLE_SETTINGS,
            **self._tls_settings(),
            **self.settings,
        }
        with (self.datadir / "postgresql.conf").open("a") as conf:
            conf.write("\n# pgwarden/pgcluster.py\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def start(self) -> None:
        """pg_ctl start and wait until it accepts connections; raise PortInUse if a fixed port is taken."""
        if self.port:
            self._start_on(self.port)
            return
        # A free port can be taken by a parallel run before postgres binds it: retry with another.
        for _ in range(_START_ATTEMPTS):
            port = free_port(self.host)
            if self._is_ipv6 and not is_port_free("::1", port):
                continue
            try:
                self._start_on(port)
            except PortInUse:
                continue
            self.port = port
            return
        raise ClusterError(f"PostgreSQL found no free port after {_START_ATTEMPTS} attempts")

    def stop(self, *, mode: str = "fast") -> None:
        """pg_ctl stop, keeping the data. `fast`: sessions get FATAL 57P01, as in an outage; `immediate`: a crash."""
        if (self.datadir / "postmaster.pid").exists():
            self.run_tool(["pg_ctl", "stop", "-D", str(self.datadir), "-m", mode, "-w"])

    def destroy(self) -> None:
        """Stop the server at once (its data is thrown away) and remove `base`. Idempotent."""
        if (self.datadir / "postmaster.pid").exists():
            self.run_tool(["pg_ctl", "stop", "-D", str(self.datadir), "-m", "immediate", "-w"], check=False)
        shutil.rmtree(self.base, ignore_errors=True)

    def psql(self, sql: str, *, database: str = "postgres", user: str = "postgres",
             password: str | None = None) -> str:
        """Run `sql` with psql (ON_ERROR_STOP) and return its unaligned stdout: over TCP if a password is given,
        else over the unix socket (as `postgres`, which needs none)."""
        env = clean_libpq_env()
        where = ["-h", str(self.socket_dir)]
        if password is not None:
            where, env["PGPASSWORD"] = ["-h", self.host], password
        # VERBOSITY=terse: an error names its position, never quotes the line (which may hold a password).
        cmd = [str(self.bindir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=terse",
               *where, "-p", str(self.port), "-U", user, "-d", database]
        # The SQL goes through stdin so that passwords in it never show in `ps`.
        done = subprocess.run(cmd, input=sql, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise ClusterError(f"psql as {user} on {database} exited {done.returncode}: {done.stderr.strip()}")
        return done.stdout

    def run_tool(self, argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run PostgreSQL's `argv[0]` from bindir as the cluster's owner; raise ClusterError if it fails."""
        cmd = [str(self.bindir / argv[0]), *argv[1:]]
        done = subprocess.run(cmd, capture_output=True, text=True, env=clean_libpq_env(), cwd=self.base,
                              start_new_session=self.is_detached, **as_postgres_user())
        if check and done.returncode != 0:
            raise ClusterError(f"{argv[0]} exited {done.returncode}: {done.stderr.strip() or done.stdout.strip()}")
        return done

    # --- internals ---

    def _tls_settings(self) -> dict[str, str]:
        if self.tls is None:
            return {}
        settings = {"ssl": "on", "ssl_cert_file": f"'{self.tls.cert_path}'", "ssl_key_file": f"'{self.tls.key_path}'"}
        if self.tls.ca_path is not None:
            settings["ssl_ca_file"] = f"'{self.tls.ca_path}'"
        return settings

    def _start_on(self, port: int) -> None:
        done = self.run_tool(["pg_ctl", "start", "-D", str(self.datadir), "-l", str(self.log_path), "-w",
                              "-t", "60", "-o", f"-p {port}"], check=False)
        if done.returncode == 0:
            return
        log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        if _BIND_FAILURE.search(log):
            self.log_path.unlink(missing_ok=True)
            raise PortInUse(f"PostgreSQL could not listen on port {port}: another process uses it")
        raise ClusterError(f"pg_ctl start exited {done.returncode}: {done.stderr.strip()}\n{log}")

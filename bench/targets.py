"""The things pgbench talks to, and starting the two proxies: pgbouncer (plain, TLS) and pgwarden.

Every proxy logs in to PostgreSQL without TLS, so the targets differ only in what sits in front.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from bench.certificate import write_self_signed
from bench.cluster import BenchCluster
from bench.system import BenchSetupError, Binaries, as_postgres_user, clean_libpq_env, free_port, give_to_postgres

REPO_ROOT = Path(__file__).resolve().parent.parent
_START_TIMEOUT_S = 30.0
_READY = re.compile(r"pgwarden proxy ready: listening on (\S+):(\d+),")
_WORKER_PIDS = re.compile(r"\d+ workers \(pids ([\d, ]+)\)")


class TargetName(StrEnum):
    """The targets in run order; a round of repeats visits them in this order (interleaved runs)."""

    DIRECT = "direct"
    DIRECT_TLS = "direct+tls"
    PGBOUNCER = "pgbouncer"
    PGBOUNCER_TLS = "pgbouncer+tls"
    PGWARDEN = "pgwarden"
    PGWARDEN_WORKERS = "pgwarden-workers"  # `pgwarden proxy --workers N` (Matrix.scaling_workers), beside one process
    PGWARDEN_POLICY = "pgwarden+policy"


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """How pgbench reaches one target, and which process (if any) to charge CPU time to."""

    name: TargetName
    host: str
    port: int
    user: str
    password: str = field(repr=False)
    dbname: str
    sslmode: str  # libpq PGSSLMODE: disable or require
    proxy_pid: int | None = None  # signalled (SIGHUP) by the reload scenario
    cpu_pids: tuple[int, ...] = ()  # charged with CPU time; default (proxy_pid,); pgwarden --workers: the workers
    access_log: Path | None = None  # truncated between runs so the work dir stays small

    def connect_args(self) -> list[str]:
        return ["-h", self.host, "-p", str(self.port), "-U", self.user]

    def libpq_env(self) -> dict[str, str]:
        return {**clean_libpq_env(), "PGPASSWORD": self.password, "PGSSLMODE": self.sslmode}


class ServerProcess:
    """A server we started in the foreground; `stop()` terminates it (then kills). Mutable: it owns a process."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log_path: Path, *, port: int = 0) -> None:
        self.name = name
        self.popen = popen
        self.log_path = log_path
        self.port = port  # pgwarden picks its own free port and tells us when it is ready
        self.worker_pids: tuple[int, ...] = ()  # pgwarden --workers: the processes doing the work

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def fail(self, why: str) -> BenchSetupError:
        """Stop the process and return an error quoting the end of its log."""
        self.stop()
        return BenchSetupError(f"{self.name} {why}; its log ({self.log_path}) ends with:\n{self.log_tail()}")

    def stop(self) -> None:
        """Terminate, wait up to 10 s, then kill. Idempotent."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def _wait_until(process: ServerProcess, is_ready: Callable[[], bool], *, timeout_s: float = _START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not is_ready():
        if process.popen.poll() is not None:
            raise process.fail(f"exited with {process.popen.returncode} while starting")
        if time.monotonic() > deadline:
            raise process.fail(f"was not ready after {timeout_s:.0f} s")
        time.sleep(0.05)


def _accepts_tcp(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def direct_targets(cluster: BenchCluster) -> list[Target]:
    """PostgreSQL itself, without and with TLS."""
    return [Target(name=name, host=cluster.host, port=cluster.port, user=cluster.user, password=cluster.password,
                   dbname=cluster.database, sslmode=sslmode)
            for name, sslmode in ((TargetName.DIRECT, "disable"), (TargetName.DIRECT_TLS, "require"))]


_PGBOUNCER_INI = """\
[databases]
{database} = host={host} port={port} dbname={database}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen_port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {auth_file}
; session pooling: like pgwarden, one server connection per client for the client's whole session
pool_mode = session
max_client_conn = 500
default_pool_size = 100
server_tls_sslmode = disable
client_tls_sslmode = {client_tls}
{tls_files}
logfile = {log}
log_connections = 0
log_disconnections = 0
stats_period = 3600
"""


def start_pgbouncer(binaries: Binaries, cluster: BenchCluster, base: Path, *, is_tls: bool,
                    wrapper: tuple[str, ...] = (), start_timeout_s: float = _START_TIMEOUT_S) -> ServerProcess:
    """pgbouncer in the foreground as the `postgres` OS user (it refuses root), SCRAM auth, session pooling.

    `wrapper` goes in front of the command (bench/process_instructions.py runs it under callgrind)."""
    base.mkdir(parents=True)
    auth_file, ini, log = base / "userlist.txt", base / "pgbouncer.ini", base / "pgbouncer.log"
    # A plain-text password in auth_file lets pgbouncer do SCRAM with clients and with PostgreSQL.
    fd = os.open(auth_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(f'"{cluster.user}" "{cluster.password}"\n')
    tls_files, owned = "", [base, auth_file, ini]
    if is_tls:
        cert, key = write_self_signed(base)
        tls_files = f"client_tls_cert_file = {cert}\nclient_tls_key_file = {key}"
        owned += [cert, key]
    port = free_port()
    ini.write_text(_PGBOUNCER_INI.format(
        database=cluster.database, host=cluster.host, port=cluster.port, listen_port=port, auth_file=auth_file,
        client_tls="require" if is_tls else "disable", tls_files=tls_files, log=log,
    ))
    give_to_postgres(*owned)
    popen = subprocess.Popen([*wrapper, str(binaries.pgbouncer), str(ini)], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=base,
                             start_new_session=True,  # Ctrl-C reaches the bench, which then stops us
                             **as_postgres_user())
    process = ServerProcess(TargetName.PGBOUNCER_TLS if is_tls else TargetName.PGBOUNCER, popen, log, port=port)
    _wait_until(process, lambda: _accepts_tcp("127.0.0.1", port), timeout_s=start_timeout_s)
    return process


def pgbouncer_target(process: ServerProcess, cluster: BenchCluster, *, is_tls: bool) -> Target:
    return Target(name=TargetName.PGBOUNCER_TLS if is_tls else TargetName.PGBOUNCER, host="127.0.0.1",
                  port=process.port, user=cluster.user, password=cluster.password, dbname=cluster.database,
                  sslmode="require" if is_tls else "disable", proxy_pid=process.pid)


SERVICE = "bench"
USER = "alice"

_MANIFESTS = """\
kind: Service
metadata: {{name: {service}}}
spec:
  mode: POSTGRES
  config:
    upstream: {{url: "postgres://{host}:{port}"}}
    postgres: {{user: {user}, database: {database}, auth: {{password: {{fromSecret: bench-password}}}},
               sslMode: DISABLE}}
---
kind: User
metadata: {{name: {client}}}
spec: {{type: HUMAN, groups: [admins]}}
---
kind: Group
metadata: {{name: admins}}
---
kind: Secret
metadata: {{name: bench-password}}
data: {{value: "{password}"}}
"""


# pgwarden+policy: the same Service with every query authorized (authorization.mode ALL) against a realistic
# read-only Policy: no DDL or privilege changes for anyone, writes only for the `writers` group (so TPC-B-like
# cells run too), no function calls outside a short allow-list. Shaped as in issue 5 and tests/e2e.
_POLICY_MANIFESTS = """\
kind: Service
metadata: {{name: {service}}}
spec:
  mode: POSTGRES
  authorization: {{policies: [read-only-for-readers]}}
  config:
    upstream: {{url: "postgres://{host}:{port}"}}
    postgres: {{user: {user}, database: {database}, auth: {{password: {{fromSecret: bench-password}}}},
               sslMode: DISABLE, authorization: {{mode: ALL}}}}
---
kind: Policy
metadata: {{name: read-only-for-readers}}
spec:
  rules:
    - name: no-ddl
      effect: DENY
      priority: -2
      condition:
        match: >-
          ctx.request.postgres.statement.kinds.exists(k, k.startsWith("CREATE") || k.startsWith("DROP")
          || k.startsWith("ALTER") || k.startsWith("GRANT") || k.startsWith("REVOKE") || k == "TRUNCATE")
    - name: writes-for-writers-only
      effect: DENY
      priority: -1
      condition:
        match: 'ctx.request.postgres.statement.readOnly == false && !("writers" in ctx.user.spec.groups)'
    - name: no-function-calls
      effect: DENY
      condition: {{match: 'ctx.request.postgres.functionCall.oid >= 0'}}
    - name: team-members
      effect: ALLOW
      priority: 4
      condition: {{match: 'ctx.user.spec.groups.exists(g, g in ["readers", "writers"])'}}
---
kind: User
metadata: {{name: {client}}}
spec: {{type: HUMAN, groups: [readers, writers]}}
---
kind: Group
metadata: {{name: readers}}
---
kind: Group
metadata: {{name: writers}}
---
kind: Secret
metadata: {{name: bench-password}}
data: {{value: "{password}"}}
"""


class PolicyUnavailable(RuntimeError):
    """pgwarden refused the Policy manifests (the policy engine is not in this build); the target is skipped."""


def _pgwarden(*args: str) -> list[str]:
    return [sys.executable, "-m", "pgwarden", *args]


def start_pgwarden(cluster: BenchCluster, base: Path, *, is_policy: bool = False, workers: int = 1,
                   name: TargetName | None = None, wrapper: tuple[str, ...] = (),
                   start_timeout_s: float = _START_TIMEOUT_S) -> ServerProcess:
    """`python -m pgwarden proxy` on a free port with an access log file, as a user would run it.

    With `is_policy`, the Service authorizes every query against the Policy in _POLICY_MANIFESTS; raises
    PolicyUnavailable when pgwarden refuses those manifests.
    """
    manifests, data_dir = base / "manifests", base / "data"
    manifests.mkdir(parents=True, mode=0o700)
    (manifests / "bench.yaml").write_text((_POLICY_MANIFESTS if is_policy else _MANIFESTS).format(
        service=SERVICE, host=cluster.host, port=cluster.port, user=cluster.user, database=cluster.database,
        client=USER, password=cluster.password,
    ))
    ready_path, log = base / "pgwarden.out", base / "pgwarden.log"
    argv = [*wrapper, *_pgwarden("proxy", "--manifests", str(manifests), "--listen", "127.0.0.1:0",
                                 "--data-dir", str(data_dir), "--access-log", str(base / "access.log"),
                                 *(["--workers", str(workers)] if workers > 1 else []))]
    with ready_path.open("wb") as out, log.open("wb") as err:
        popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=REPO_ROOT,
                                 env=clean_libpq_env(), start_new_session=True)
    process = ServerProcess(name or (TargetName.PGWARDEN_POLICY if is_policy else TargetName.PGWARDEN), popen, log)

    def is_ready() -> bool:
        text = ready_path.read_text(errors="replace")
        match = _READY.search(text)
        if match:
            process.port = int(match.group(2))
            if pids := _WORKER_PIDS.search(text):
                process.worker_pids = tuple(int(p) for p in pids.group(1).split(", "))
        return match is not None

    try:
        _wait_until(process, is_ready, timeout_s=start_timeout_s)
    except BenchSetupError as exc:
        if is_policy and process.popen.returncode is not None:  # it refused the manifests and exited
            raise PolicyUnavailable(f"policy engine not available: {_first_error(process)}") from exc
        raise
    return process


def _first_error(process: ServerProcess) -> str:
    """pgwarden's first complaint about its manifests, from its log, on one line."""
    lines = [line.strip() for line in process.log_tail(40).splitlines() if line.strip()]
    return " / ".join(lines[:3]) or f"pgwarden exited {process.popen.returncode}"


def pgwarden_target(process: ServerProcess, base: Path, *, token_ttl: str = "24h",
                    name: TargetName = TargetName.PGWARDEN) -> Target:
    """Issue an access token for the bench user; pgbench presents it as the password over TLS."""
    done = subprocess.run(_pgwarden("token", "issue", "--user", USER, "--ttl", token_ttl, "--data-dir",
                                    str(base / "data")),
                          capture_output=True, text=True, cwd=REPO_ROOT, env=clean_libpq_env())
    if done.returncode != 0:
        raise process.fail(f"token issue exited {done.returncode}: {done.stderr.strip()}")
    return Target(name=name, host="127.0.0.1", port=process.port, user=USER,
                  password=done.stdout.strip(), dbname=SERVICE, sslmode="require", proxy_pid=process.pid,
                  cpu_pids=process.worker_pids,
                  access_log=base / "access.log")


def check_target(binaries: Binaries, target: Target) -> None:
    """One `SELECT 1` through the target, so a refusal shows up at setup with the server's own words."""
    done = subprocess.run([binaries.pg("psql"), "-X", "-A", "-t", "-c", "SELECT 1", *target.connect_args(),
                           target.dbname], capture_output=True, text=True, env=target.libpq_env(), timeout=30)
    if done.returncode != 0 or done.stdout.strip() != "1":
        raise BenchSetupError(f"{target.name} on port {target.port} refused SELECT 1: {done.stderr.strip()}")

"""Issue 6: many idle client sessions on one pgwarden process — memory per session, and does it stay responsive?

pgwarden relays each client session to its own upstream session (session mode). 10,000 PostgreSQL backends do
not fit a small machine, so pgbouncer in transaction mode sits between pgwarden and PostgreSQL: pgwarden still
holds N client TLS sessions and N upstream TCP sessions (to pgbouncer) — exactly pgwarden's own cost — while
PostgreSQL sees only a handful of backends.

The client is a minimal raw-protocol one (SSLRequest, TLS, startup, the access token as the password, then idle):
asyncpg would cost more memory per session in this process than the thing being measured.

    python -m bench.idle_sessions [--sessions 10000] [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import resource
import shutil
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import cast

from bench.cluster import BenchCluster
from bench.system import (
    BenchSetupError,
    Binaries,
    as_postgres_user,
    describe_machine,
    find_binaries,
    free_port,
    give_to_postgres,
)
from bench.targets import ServerProcess, Target, pgwarden_target, start_pgwarden

# Room for N client sockets and N upstream sockets in pgwarden, N in pgbouncer, N in this client, plus files.
WANTED_NOFILE = 65536
_START_TIMEOUT_S = 30.0
_OPEN_CONCURRENCY = 64  # logins in flight at once: a crowd of clients, not a thundering herd on 2 cores
_PROGRESS_EVERY = 1000
_IO_TIMEOUT_S = 60.0
TEMP_PREFIX = "pgwarden-idle-"  # the run's directory under the system temp dir; removed on exit


# --- limits ------------------------------------------------------------------------------------------------------

def raise_nofile(wanted: int = WANTED_NOFILE) -> int:
    """Raise this process's RLIMIT_NOFILE (children inherit it); return the soft limit now in force.

    As root the hard limit can go up too (to fs.nr_open); otherwise the soft limit goes up to the hard one.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted and os.geteuid() == 0:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
    ceiling = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if ceiling > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def session_limit(nofile: int) -> int:
    """Sessions the fd limit allows in pgwarden: two fds per session (client + upstream) plus its own ~25 fds
    (listeners, logs, state store) and the two latency-probe sessions."""
    return max(0, (nofile - 64) // 2)


# --- pgbouncer in transaction mode -------------------------------------------------------------------------------

_PGBOUNCER_INI = """\
[databases]
{database} = host={host} port={port} dbname={database}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen_port}
unix_socket_dir =
; pgwarden logs in with SCRAM; a plain-text password in auth_file lets pgbouncer check it and log in upstream
auth_type = scram-sha-256
auth_file = {auth_file}
; transaction pooling: N idle pgwarden upstream sessions share a few PostgreSQL backends
pool_mode = transaction
max_client_conn = {max_client_conn}
default_pool_size = 4
max_db_connections = 8
; pgwarden forwards the client's startup parameters; clients such as psql/JDBC send these
ignore_startup_parameters = extra_float_digits,options
server_tls_sslmode = disable
client_tls_sslmode = disable
logfile = {log}
log_connections = 0
log_disconnections = 0
stats_period = 3600
"""


def start_pooler(binaries: Binaries, cluster: BenchCluster, base: Path, *, max_client_conn: int) -> ServerProcess:
    """pgbouncer (transaction pooling) in the foreground as the `postgres` OS user; it inherits our fd limit."""
    base.mkdir(parents=True)
    auth_file, ini, log = base / "userlist.txt", base / "pgbouncer.ini", base / "pgbouncer.log"
    fd = os.open(auth_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(f'"{cluster.user}" "{cluster.password}"\n')
    port = free_port()
    ini.write_text(_PGBOUNCER_INI.format(database=cluster.database, host=cluster.host, port=cluster.port,
                                         listen_port=port, auth_file=auth_file, max_client_conn=max_client_conn,
                                         log=log))
    give_to_postgres(base, auth_file, ini)
    popen = subprocess.Popen([str(binaries.pgbouncer), str(ini)], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=base,
                             start_new_session=True, **as_postgres_user())
    process = ServerProcess("pgbouncer", popen, log, port=port)
    deadline = time.monotonic() + _START_TIMEOUT_S
    while not _accepts_tcp("127.0.0.1", port):
        if popen.poll() is not None:
            raise process.fail(f"exited with {popen.returncode} while starting")
        if time.monotonic() > deadline:
            raise process.fail(f"was not ready after {_START_TIMEOUT_S:.0f} s")
        time.sleep(0.05)
    return process


def _accepts_tcp(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


@dataclass(frozen=True, slots=True)
class _PoolerAsUpstream:
    """What start_pgwarden reads from a BenchCluster, pointing at pgbouncer instead of PostgreSQL."""

    host: str
    port: int
    user: str
    database: str
    password: str = field(repr=False)


# --- a minimal PostgreSQL client ---------------------------------------------------------------------------------

class LoginRefused(RuntimeError):
    """The server answered the login with an ErrorResponse (its message, never the token)."""


def _error_text(body: bytes) -> str:
    fields = {part[:1]: part[1:].decode("utf-8", "replace") for part in body.split(b"\x00") if part}
    return f"{fields.get(b'S', 'ERROR')}: {fields.get(b'M', '?')}"


class RawSession:
    """One client session: TLS, startup, token as cleartext password, ready for query. Mutable: it owns a socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, target: Target, tls: ssl.SSLContext) -> RawSession:
        reader, writer = await asyncio.open_connection(target.host, target.port)
        try:
            writer.write(struct.pack("!ii", 8, 80877103))  # SSLRequest
            await writer.drain()
            if await reader.readexactly(1) != b"S":
                raise LoginRefused("the server refused TLS")
            await writer.start_tls(tls)
            session = cls(reader, writer)
            await session._login(target)
            return session
        except BaseException:
            writer.transport.abort()
            raise

    async def _login(self, target: Target) -> None:
        params = b"".join(k.encode() + b"\x00" + v.encode() + b"\x00" for k, v in
                          (("user", target.user), ("database", target.dbname), ("application_name", "idle-bench")))
        body = struct.pack("!i", 196608) + params + b"\x00"
        self.writer.write(struct.pack("!i", len(body) + 4) + body)
        while True:
            kind, payload = await self._message()
            if kind == b"R":
                code = struct.unpack("!i", payload[:4])[0]
                if code == 3:  # cleartext: the access token, over TLS only
                    secret = target.password.encode() + b"\x00"
                    self.writer.write(b"p" + struct.pack("!i", len(secret) + 4) + secret)
                elif code != 0:
                    raise LoginRefused(f"unsupported authentication request {code}")
            elif kind == b"E":
                raise LoginRefused(_error_text(payload))
            elif kind == b"Z":
                return

    async def _message(self) -> tuple[bytes, bytes]:
        header = await self.reader.readexactly(5)
        length = struct.unpack("!i", header[1:])[0]
        return header[:1], await self.reader.readexactly(length - 4)

    async def select_1(self) -> None:
        self.writer.write(b"Q" + struct.pack("!i", 13) + b"SELECT 1\x00")
        while True:
            kind, payload = await self._message()
            if kind == b"E":
                raise LoginRefused(_error_text(payload))
            if kind == b"Z":
                return

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.write(b"X\x00\x00\x00\x04")
        self.writer.transport.abort()  # no TLS close_notify dance for thousands of sessions


def client_tls() -> ssl.SSLContext:
    """sslmode=require, as pgbench and psql use it in the bench: encrypted, the self-signed proxy cert unchecked."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


# --- measurements ------------------------------------------------------------------------------------------------

def rss_kib(pid: int) -> int:
    """Resident set size of `pid` in KiB, from /proc/PID/status VmRSS."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchSetupError(f"process {pid} has no VmRSS")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass(frozen=True, slots=True)
class Latency:
    """Milliseconds over `tries` sequential tries."""

    tries: int
    p50_ms: float
    p99_ms: float
    errors: int


def _latency(samples: list[float], errors: int) -> Latency:
    if not samples:
        return Latency(tries=errors, p50_ms=float("nan"), p99_ms=float("nan"), errors=errors)
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return Latency(tries=len(samples) + errors, p50_ms=statistics.median(ordered) * 1e3, p99_ms=p99 * 1e3,
                   errors=errors)


async def fresh_connect_latency(target: Target, tls: ssl.SSLContext, tries: int) -> Latency:
    """A new session (TCP, TLS, token, upstream login) + SELECT 1 + close, one at a time."""
    samples: list[float] = []
    errors = 0
    for _ in range(tries):
        start = time.perf_counter()
        try:
            session = await asyncio.wait_for(RawSession.open(target, tls), _IO_TIMEOUT_S)
            await asyncio.wait_for(session.select_1(), _IO_TIMEOUT_S)
            session.close()
        except (OSError, LoginRefused, TimeoutError, asyncio.IncompleteReadError):
            errors += 1
            continue
        samples.append(time.perf_counter() - start)
    return _latency(samples, errors)


async def open_session_latency(session: RawSession, tries: int) -> Latency:
    """SELECT 1 on a session that is already open."""
    samples: list[float] = []
    for _ in range(tries):
        start = time.perf_counter()
        await asyncio.wait_for(session.select_1(), _IO_TIMEOUT_S)
        samples.append(time.perf_counter() - start)
    return _latency(samples, 0)


@dataclass(frozen=True, slots=True)
class Responsiveness:
    idle_sessions: int
    fresh_connect: Latency
    open_session: Latency


@dataclass(slots=True)
class IdleReport:
    """Everything one run measured; `to_markdown()` is what the bench prints."""

    requested: int
    opened: int = 0
    open_errors: int = 0
    first_open_error: str = ""
    limit_note: str = ""
    open_seconds: float = 0.0
    nofile_limit: int = 0
    pgwarden_rss_before_kib: int = 0
    pgwarden_rss_after_kib: int = 0
    pgwarden_fds_after: int = 0
    pgbouncer_rss_after_kib: int = 0
    client_rss_before_kib: int = 0
    client_rss_after_kib: int = 0
    idle_checked: int = 0
    idle_answered: int = 0
    postgres_backends: int = 0
    baseline: Responsiveness | None = None
    loaded: Responsiveness | None = None
    pgwarden_alive: bool = True
    machine: str = ""
    date: str = ""

    @property
    def pgwarden_kib_per_session(self) -> float:
        return (self.pgwarden_rss_after_kib - self.pgwarden_rss_before_kib) / self.opened if self.opened else 0.0

    @property
    def client_kib_per_session(self) -> float:
        return (self.client_rss_after_kib - self.client_rss_before_kib) / self.opened if self.opened else 0.0

    @property
    def sessions_per_s(self) -> float:
        return self.opened / self.open_seconds if self.open_seconds else 0.0

    def to_markdown(self) -> str:
        lines = [f"Idle sessions: {self.opened:,} of {self.requested:,} opened in {self.open_seconds:.1f} s "
                 f"({self.sessions_per_s:,.0f} sessions/s, {_OPEN_CONCURRENCY} logins in flight)", ""]
        if self.first_open_error:
            lines += [f"Open errors: {self.open_errors} (first: {self.first_open_error})", ""]
        if self.limit_note:
            lines += [f"Limit: {self.limit_note}", ""]
        lines += [
            "| memory | before | after | per session |",
            "|---|---:|---:|---:|",
            f"| pgwarden RSS (KiB) | {self.pgwarden_rss_before_kib:,} | {self.pgwarden_rss_after_kib:,} | "
            f"{self.pgwarden_kib_per_session:.1f} KiB |",
            f"| bench client RSS (KiB) | {self.client_rss_before_kib:,} | {self.client_rss_after_kib:,} | "
            f"{self.client_kib_per_session:.1f} KiB |",
            "",
            f"pgwarden open fds with all sessions idle: {self.pgwarden_fds_after:,}; pgbouncer RSS "
            f"{self.pgbouncer_rss_after_kib:,} KiB; PostgreSQL client backends: {self.postgres_backends}; "
            f"idle sessions that answered SELECT 1 afterwards: {self.idle_answered}/{self.idle_checked}",
            "",
        ]
        if self.baseline and self.loaded:
            b, loaded = self.baseline, self.loaded
            fresh, warm = loaded.fresh_connect, loaded.open_session
            lines += [
                f"| latency (ms) | 0 idle p50 | 0 idle p99 | {loaded.idle_sessions:,} idle p50 | "
                f"{loaded.idle_sessions:,} idle p99 |",
                "|---|---:|---:|---:|---:|",
                f"| new session + SELECT 1 ({b.fresh_connect.tries} tries) | {b.fresh_connect.p50_ms:.2f} | "
                f"{b.fresh_connect.p99_ms:.2f} | {fresh.p50_ms:.2f} | {fresh.p99_ms:.2f} |",
                f"| SELECT 1 on an open session ({b.open_session.tries} tries) | {b.open_session.p50_ms:.3f} | "
                f"{b.open_session.p99_ms:.3f} | {warm.p50_ms:.3f} | {warm.p99_ms:.3f} |",
            ]
            errors = b.fresh_connect.errors + loaded.fresh_connect.errors
            if errors:
                lines.append(f"\nnew-session errors during latency tries: {errors}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data.update(pgwarden_kib_per_session=self.pgwarden_kib_per_session,
                    client_kib_per_session=self.client_kib_per_session, sessions_per_s=self.sessions_per_s)
        return data


# --- the run -----------------------------------------------------------------------------------------------------

async def _open_many(target: Target, tls: ssl.SSLContext, count: int, report: IdleReport,
                     progress: Callable[[str], None]) -> list[RawSession]:
    """Open `count` sessions, `_OPEN_CONCURRENCY` at a time; stop opening at the first failure and note it."""
    sessions: list[RawSession] = []
    failed = asyncio.Event()
    next_index = 0
    start = time.perf_counter()

    async def worker() -> None:
        nonlocal next_index
        while next_index < count and not failed.is_set():
            next_index += 1
            try:
                sessions.append(await asyncio.wait_for(RawSession.open(target, tls), _IO_TIMEOUT_S))
            except (OSError, LoginRefused, TimeoutError, asyncio.IncompleteReadError) as exc:
                report.open_errors += 1
                if not report.first_open_error:
                    report.first_open_error = f"{type(exc).__name__}: {exc}"[:300]
                failed.set()
                return
            if len(sessions) % _PROGRESS_EVERY == 0:
                elapsed = time.perf_counter() - start
                progress(f"  {len(sessions):>6,} sessions open ({len(sessions) / elapsed:,.0f}/s)")

    await asyncio.gather(*(worker() for _ in range(min(_OPEN_CONCURRENCY, max(count, 1)))))
    report.open_seconds = time.perf_counter() - start
    report.opened = len(sessions)
    return sessions


async def _responsiveness(target: Target, tls: ssl.SSLContext, probe: RawSession, idle: int,
                          tries: int) -> Responsiveness:
    return Responsiveness(idle_sessions=idle, fresh_connect=await fresh_connect_latency(target, tls, tries),
                          open_session=await open_session_latency(probe, tries))


async def _check_idle(sessions: list[RawSession], sample: int) -> tuple[int, int]:
    """SELECT 1 on `sample` of the idle sessions, spread over the whole set: did they all survive the wait?"""
    if not sessions:
        return 0, 0
    step = max(1, len(sessions) // sample)
    chosen = sessions[::step][:sample]
    answered = 0
    for session in chosen:
        with contextlib.suppress(OSError, LoginRefused, TimeoutError, asyncio.IncompleteReadError):
            await asyncio.wait_for(session.select_1(), _IO_TIMEOUT_S)
            answered += 1
    return len(chosen), answered


def _settle() -> None:
    gc.collect()
    time.sleep(1.0)  # let pgwarden finish logging and freeing per-login garbage before reading its RSS


async def measure(target: Target, pgwarden_pid: int, pgbouncer_pid: int, cluster: BenchCluster, report: IdleReport,
                  *, tries: int, progress: Callable[[str], None]) -> None:
    tls = client_tls()
    probe = await RawSession.open(target, tls)
    try:
        progress(f"responsiveness with 0 idle sessions ({tries} tries each)")
        report.baseline = await _responsiveness(target, tls, probe, 0, tries)
        _settle()
        report.pgwarden_rss_before_kib = rss_kib(pgwarden_pid)
        report.client_rss_before_kib = rss_kib(os.getpid())
        progress(f"opening {report.requested:,} idle sessions")
        sessions = await _open_many(target, tls, report.requested, report, progress)
        try:
            await asyncio.sleep(1.0)
            _settle()
            report.pgwarden_rss_after_kib = rss_kib(pgwarden_pid)
            report.client_rss_after_kib = rss_kib(os.getpid())
            report.pgwarden_fds_after = open_fds(pgwarden_pid)
            report.pgbouncer_rss_after_kib = rss_kib(pgbouncer_pid)
            report.postgres_backends = int(cluster.psql(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'", database="postgres"
            ).strip() or 0)
            progress(f"responsiveness with {len(sessions):,} idle sessions ({tries} tries each)")
            report.loaded = await _responsiveness(target, tls, probe, len(sessions), tries)
            report.idle_checked, report.idle_answered = await _check_idle(sessions, min(200, len(sessions)))
        finally:
            for session in sessions:
                session.close()
    finally:
        probe.close()


def run_idle_sessions(sessions: int, *, tries: int, binaries: Binaries | None = None,
                      progress: Callable[[str], None] = print) -> IdleReport:
    """Start PostgreSQL, pgbouncer (transaction mode) and `pgwarden proxy`; measure; stop everything and clean up."""
    binaries = binaries or find_binaries()
    report = IdleReport(requested=sessions, machine=describe_machine(binaries).describe(),
                        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    report.nofile_limit = raise_nofile()
    allowed = session_limit(report.nofile_limit)
    if sessions > allowed:
        report.limit_note = (f"RLIMIT_NOFILE is {report.nofile_limit} and could not be raised to {WANTED_NOFILE} "
                             "(raising the hard limit needs CAP_SYS_RESOURCE); pgwarden needs 2 fds per session, "
                             f"so at most {allowed:,} sessions are tried")
        report.requested = sessions = allowed
    base = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
    os.chmod(base, 0o755)  # the postgres OS user must reach its directories below
    cluster = BenchCluster(binaries, base / "postgres")
    servers: list[ServerProcess] = []
    try:
        progress("starting PostgreSQL")
        cluster.start(scale=1)
        progress("starting pgbouncer (transaction pooling)")
        pooler = start_pooler(binaries, cluster, base / "pgbouncer", max_client_conn=sessions + 200)
        servers.append(pooler)
        progress("starting pgwarden proxy")
        upstream = _PoolerAsUpstream(host="127.0.0.1", port=pooler.port, user=cluster.user,
                                     database=cluster.database, password=cluster.password)
        pgwarden = start_pgwarden(cast(BenchCluster, upstream), base / "pgwarden")
        servers.append(pgwarden)
        target = pgwarden_target(pgwarden, base / "pgwarden")
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(measure(target, pgwarden.pid, pooler.pid, cluster, report, tries=tries, progress=progress))
        report.pgwarden_alive = pgwarden.popen.poll() is None
    finally:
        for server in reversed(servers):
            server.stop()
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
    return report


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed, as pgwarden itself runs: the stdlib TLS transport zero-fills a 256 KiB read buffer
    per connection, which would make this client hold about 0.4 MiB per idle session."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return None
    return uvloop.new_event_loop


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.idle_sessions",
        description="Open many idle client sessions on one pgwarden process (upstream: pgbouncer in transaction "
                    "mode in front of PostgreSQL); report pgwarden's memory per session and its latency with 0 "
                    "and N idle sessions.",
        epilog="example: python -m bench.idle_sessions --sessions 10000 --json idle.json",
    )
    parser.add_argument("--sessions", type=int, default=10_000, help="idle sessions to open (default 10000)")
    parser.add_argument("--tries", type=int, default=200, help="latency samples per measurement (default 200)")
    parser.add_argument("--quick", action="store_true", help="1,000 sessions and 50 tries (about a minute)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the numbers as JSON to PATH")
    args = parser.parse_args(argv)
    if args.quick:
        args.sessions, args.tries = min(args.sessions, 1_000), min(args.tries, 50)
    if args.sessions < 1 or args.tries < 1:
        parser.error("--sessions and --tries must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        report = run_idle_sessions(args.sessions, tries=args.tries,
                                   progress=lambda line: print(line, file=sys.stderr, flush=True))
    except BenchSetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (LoginRefused, OSError, asyncio.IncompleteReadError) as exc:
        print(f"error: the first session through pgwarden failed: {exc}", file=sys.stderr)
        print("hint: the words above are the server's; the bench stopped everything it had started",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    print(f"{report.date} — {report.machine}\n")
    print(report.to_markdown())
    if args.json:
        args.json.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    return 0 if report.pgwarden_alive and report.opened == report.requested else 1


if __name__ == "__main__":
    sys.exit(main())

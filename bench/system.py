"""What the bench needs from this machine: binaries, the `postgres` OS user, free ports, CPU time, a description."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from pgwarden.pgcluster import (  # noqa: F401  (re-exported: the bench's other modules import them from here)
    ClusterError,
    as_postgres_user,
    clean_libpq_env,
    find_bindir,
    free_port,
    give_to_postgres,
)

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
INSTALL_HINT = "apt-get install postgresql pgbouncer"


class BenchSetupError(RuntimeError):
    """The bench could not set itself up (a missing binary, a server that would not start): exit 2."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Binaries:
    """Absolute paths of the programs the bench runs."""

    pg_bindir: Path
    pgbouncer: Path

    def pg(self, name: str) -> str:
        return str(self.pg_bindir / name)


def find_binaries() -> Binaries:
    """Locate PostgreSQL's tools and pgbouncer; raise BenchSetupError naming the Debian packages if missing."""
    missing: list[str] = []
    try:
        bindir: Path | None = find_bindir()
    except ClusterError:
        bindir = None
    for tool in ("initdb", "pg_ctl", "postgres", "psql", "pgbench"):
        if bindir is None or not (bindir / tool).is_file():
            missing.append(tool)
    pgbouncer = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(pgbouncer).is_file():
        missing.append("pgbouncer")
    if missing or bindir is None:
        raise BenchSetupError(f"missing {', '.join(missing)}; install them with: {INSTALL_HINT}"
                              " (or set PGBIN to PostgreSQL's bin directory)")
    return Binaries(pg_bindir=bindir, pgbouncer=Path(pgbouncer))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` (all its threads), from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may contain spaces; fields after its closing ")" start at field 3.
    fields = stat.rpartition(")")[2].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / CLOCK_TICKS_PER_S


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _version_line(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True)
    return (done.stdout or done.stderr).splitlines()[0].strip() if done.returncode == 0 else "unknown"


@dataclass(frozen=True, slots=True, kw_only=True)
class Machine:
    """Where the numbers came from; printed with every table and stored in the JSON."""

    cpus: int
    arch: str
    cpu_model: str
    memory_gib: float
    kernel: str
    python: str
    postgres: str
    pgbouncer: str

    def describe(self) -> str:
        return (f"{self.cpus} CPUs ({self.cpu_model}), {self.memory_gib:.1f} GiB RAM, {self.arch}, "
                f"Linux {self.kernel}, Python {self.python}, {self.postgres}, {self.pgbouncer}")


def describe_machine(binaries: Binaries) -> Machine:
    """nproc, uname -m, CPU model, memory, kernel, Python, PostgreSQL and pgbouncer versions."""
    return Machine(
        cpus=len(os.sched_getaffinity(0)),
        arch=platform.machine(),
        cpu_model=_cpu_model(),
        memory_gib=os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
        kernel=platform.release(),
        python=sys.version.split()[0],
        postgres=_version_line([binaries.pg("postgres"), "--version"]),
        pgbouncer=_version_line([str(binaries.pgbouncer), "--version"]),
    )


def git_commit() -> str:
    """`git describe --always --dirty` of the repository the bench runs from, or "unknown" outside a checkout."""
    try:
        done = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent.parent, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "unknown"

